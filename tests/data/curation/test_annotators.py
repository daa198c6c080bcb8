"""The annotator registry: a toy annotator added through the registry alone gets its config key, runs in the real
curation of generated raw videos (its scan tap in the single decode pass, its per-clip call), writes its field into
the annotations and has its histogram in the report, where the registry puts it; unregistered, it is gone."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from data.curation.annotators import (
    Annotator,
    ClipContext,
    Option,
    register_annotator,
    registered,
    round_score,
    unregister_annotator,
)
from data.curation.config import AnnotateConfig, CurateConfig, FilterConfig, FilterSpec, SubsetConfig, from_mapping
from data.curation.runner import run
from tests.data.curation.test_pipeline import curate_config, write_raw


@dataclass(frozen=True)
class ToyConfig:
    enabled: bool = True
    fps: float = 2.0
    scale: float = 1.0


class ToyTap:
    def __init__(self, fps: float) -> None:
        self.fps, self.short_side = fps, 16
        self.times: list[float] = []
        self.shapes: set[tuple[int, ...]] = set()

    def push(self, index: int, time_s: float, frame: np.ndarray) -> None:
        self.times.append(time_s)
        self.shapes.add(frame.shape)


class ToyAnnotator(Annotator):
    """``toy_samples``: scale x the tap's samples inside the clip; ``toy_mean``: the middle frame's mean value."""

    name = "toy"
    options = (Option("toy", ToyConfig, factory=ToyConfig),)
    needs = "scan"
    fields = ("toy_samples",)

    @classmethod
    def enabled(cls, cfg: AnnotateConfig) -> bool:
        return cfg.toy.enabled

    def tap(self) -> ToyTap:
        return ToyTap(self.cfg.toy.fps)

    def annotate(self, clip: ClipContext) -> None:
        tap = clip.taps[self.name]
        assert isinstance(tap, ToyTap) and all(min(s[:2]) == 16 for s in tap.shapes)
        inside = [t for t in tap.times if clip.record["start_s"] <= t < clip.record["end_s"]]
        clip.record["toy_samples"] = self.cfg.toy.scale * len(inside)
        clip.record["toy_mean"] = round_score(float(np.mean(clip.frames[1])))


@pytest.fixture
def toy():
    register_annotator(ToyAnnotator)
    try:
        yield ToyAnnotator
    finally:
        unregister_annotator(ToyAnnotator.name)


def test_a_registered_annotator_runs_in_the_curation_and_the_report(toy, tmp_path):
    raw = write_raw(tmp_path / "raw", 2)
    out = tmp_path / "out"
    cfg = curate_config(f"'{raw}/{{00000..00001}}.tar'", out, "annotate.toy.scale=2")
    assert cfg.annotate.toy == ToyConfig(scale=2.0)
    run(cfg, progress=False)
    records = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    assert len(records) >= 2
    for r in records:
        # 2 samples per second of the clip (the tap's fps), times the configured scale
        assert r["toy_samples"] == pytest.approx(2 * 2 * (r["end_s"] - r["start_s"]), abs=2 * 1.5), r
        assert 0 < r["toy_mean"] < 255 and isinstance(r["motion_score"], float)
    html = (out / "report" / "pretrain" / "report.html").read_text()
    assert (out / "report" / "pretrain" / "plots" / "hist_toy_samples.png").stat().st_size > 1000
    # the registry orders the histograms: the annotators' fields (the toy's after CLIP's), then duration_s
    order = [html.index(f"plots/hist_{f}.png") for f in ("motion_score", "clip_similarity", "toy_samples")]
    assert order == sorted(order) and order[-1] < html.index("plots/hist_duration_s.png")


def test_a_registered_annotator_can_be_off_and_filters_on_its_field_say_so(toy):
    assert [a.name for a in registered()][-1] == "toy"
    off = from_mapping(AnnotateConfig, {"toy": {"enabled": False}})
    assert off.toy == ToyConfig(enabled=False) and not ToyAnnotator.enabled(off)
    subset = SubsetConfig(filters=FilterConfig(filters=(FilterSpec(field="toy_samples", min=1.0),)))
    with pytest.raises(ValueError, match="filters on 'toy_samples', but the toy annotator is off"):
        CurateConfig(input=("x",), out="o", annotate=off, subsets={"s": subset})
    CurateConfig(input=("x",), out="o", annotate=AnnotateConfig(), subsets={"s": subset})  # on: fine


def test_registry_refuses_clashes_and_forgets_an_unregistered_annotator(toy):
    class Other(ToyAnnotator):
        name = "other"

    with pytest.raises(ValueError, match="option key.*toy.*taken"):
        register_annotator(Other)
    with pytest.raises(ValueError, match="named 'toy' is registered already"):
        register_annotator(type("Toy2", (ToyAnnotator,), {}))
    unregister_annotator("toy")
    try:
        assert "toy" not in [a.name for a in registered()]
        with pytest.raises(ValueError, match="unknown key.*annotate.toy"):
            from_mapping(CurateConfig, {"input": ["x"], "out": "o", "annotate": {"toy": {"scale": 2.0}}})
    finally:
        register_annotator(ToyAnnotator)  # for the fixture's teardown


def test_built_in_annotators_and_their_keys():
    assert [a.name for a in registered()][:4] == ["motion", "text_area", "captioner", "clip_scores"]
    cfg = AnnotateConfig(text_area=False)
    assert (cfg.text_area, cfg.clip_scores, cfg.captioner, cfg.motion.fps) == (False, True, "coca", 4.0)
    with pytest.raises(TypeError, match="unknown annotate key"):
        AnnotateConfig(text_araa=False)
