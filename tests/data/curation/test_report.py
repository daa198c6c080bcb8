"""Curation report: the html references only PNGs that exist and open, every score gets a histogram, counts and
reasons appear in the text, text is escaped, and empty input renders."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data.curation.filters import FilterConfig, FilterSpec, apply_filters, pretraining_filters
from data.curation.report import write_report


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs)["src"] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    recs: list[dict[str, Any]] = []
    for i in range(n):
        start = float(rng.uniform(0, 20))
        recs.append({
            "key": f"{i // 10:06d}_{i % 10:04d}", "source": "raw/00000.tar:vid_0001", "start_s": start,
            "end_s": start + float(rng.uniform(2, 8)), "num_frames": 108, "fps": 24.0, "width": 576, "height": 320,
            "motion_score": float(rng.gamma(2.0)), "text_area": float(rng.uniform(0, 0.1)),
            "aesthetic": float(rng.normal(5, 0.5)), "clip_similarity": float(rng.uniform(0.1, 0.4)),
            "caption": "a <b>cat</b>", "captions": {"coca": "a cat"},
        })  # fmt: skip
    recs[3]["aesthetic"] = None  # an annotator that failed
    return recs


def test_report_references_existing_pngs_and_shows_counts(tmp_path: Path) -> None:
    recs = _records(60)
    cfg = pretraining_filters()
    result = apply_filters(recs, cfg)
    rng = np.random.default_rng(1)
    thumbs = {r["key"]: rng.integers(0, 256, (36 + i % 3, 64, 3), dtype=np.uint8) for i, r in enumerate(recs)}
    skips = {"undecodable": 3, "too_short": 11}
    notes = {"rotated": 2, "variable_frame_rate": 5}
    stages = {"raw videos": 20, "videos skipped": 14, "clips cut": 61, "clips annotated": 60, "kept": len(result.kept)}
    path = write_report(tmp_path / "rep", recs, result, cfg, skips=skips, notes=notes, stage_counts=stages,
                        thumbnails=thumbs, title="LVD <demo> & co", max_thumbnails=8)  # fmt: skip
    assert path == tmp_path / "rep" / "report.html"
    page = _parse(path)
    assert "script" not in page.tags and "link" not in page.tags  # self-contained: no JS, no external css
    for src in page.imgs:
        assert not src.startswith(("/", "http")) and src.endswith(".png"), src
        with Image.open(path.parent / src) as im:
            im.verify()
            assert im.format == "PNG"
    names = {Path(s).name for s in page.imgs}
    for field in ("motion_score", "text_area", "aesthetic", "clip_similarity", "duration_s", "num_frames", "fps"):
        assert f"hist_{field}.png" in names
    assert "hist_start_s.png" not in names
    assert {"stages.png", "funnel.png"} <= names
    assert sum(n.startswith("sheet_") for n in names) == 1 + len(cfg.filters)  # kept + one per filter
    text = " ".join(page.text)
    assert "LVD <demo> & co" in text  # escaped in the html, restored by the parser
    assert "<demo>" not in path.read_text(encoding="utf-8")
    for reason, count in {**skips, **notes}.items():
        assert reason in text and str(count) in text
    assert "14" in text and str(len(result.kept)) in text and "missing" in text
    for name, count in result.counts.items():
        assert name in text and str(count) in text
    assert f"{result.thresholds['clip_similarity'][0]:.6g}" in text
    leftovers = [p.name for p in path.parent.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
    # the same inputs give the same contact sheets (a seeded choice)
    again = write_report(tmp_path / "rep2", recs, result, cfg, skips=skips, notes=notes, stage_counts=stages,
                         thumbnails=thumbs, title="LVD <demo> & co", max_thumbnails=8)  # fmt: skip
    sheets = sorted(p.name for p in (tmp_path / "rep" / "plots").glob("sheet_*.png"))
    for name in sheets:
        assert (tmp_path / "rep" / "plots" / name).read_bytes() == (again.parent / "plots" / name).read_bytes()


def test_report_without_thumbnails_or_filters(tmp_path: Path) -> None:
    recs = [{"key": f"k{i}", "flow": {"mean": float(i)}, "aesthetic": 4.0 + i} for i in range(5)]
    cfg = FilterConfig((FilterSpec("flow.mean", min=1.0, name="moving"),))
    path = write_report(tmp_path, recs, apply_filters(recs, cfg), cfg, skips={}, notes={}, stage_counts={})
    names = {Path(s).name for s in _parse(path).imgs}
    assert names == {"funnel.png", "hist_flow.mean.png", "hist_aesthetic.png"}
    none = FilterConfig(())
    path = write_report(tmp_path / "b", recs, apply_filters(recs, none), none, skips={}, notes={}, stage_counts={})
    assert "funnel.png" not in {Path(s).name for s in _parse(path).imgs}


def test_empty_input_renders_a_report_saying_so(tmp_path: Path) -> None:
    cfg = pretraining_filters()
    result = apply_filters([], cfg)
    path = write_report(tmp_path, [], result, cfg, skips={"unreadable": 4}, notes={},
                        stage_counts={"raw videos": 4, "videos skipped": 4, "clips cut": 0}, thumbnails={})  # fmt: skip
    page = _parse(path)
    text = " ".join(page.text)
    assert "No annotated clips" in text and "unreadable" in text and "raw videos" in text
    for src in page.imgs:
        assert (path.parent / src).is_file()
