"""The curation report: one static HTML page with PNG plots, to see what the filters did and why inputs were lost.

``write_report`` writes ``out_dir/report.html`` and ``out_dir/plots/*.png``: the stage counts (raw videos ... kept
clips) and the filter funnel as bar charts, a histogram of every numeric score the records carry (the filters' fields
first, then the registered annotators' ``fields`` (``annotators.py``) and ``duration_s``, then any other top-level
number) with each filter's cut values drawn as vertical lines and the kept clips overlaid, contact sheets of kept clips
and of each filter's dropped clips (up to ``max_thumbnails`` each, a seeded choice), the filter table (rule, resolved
cuts, drops, missing values) and the skip and note tables. No JavaScript, no external resources: the page references
only its own ``plots/`` by relative path, and all text is escaped. Every file is written atomically (temp name, then
``os.replace``); matplotlib is used through ``Figure`` objects (Agg canvas), so no global pyplot state is touched.
"""

from __future__ import annotations

import html
import io
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from data.curation.annotators import score_fields as annotator_fields
from data.curation.filters import FilterConfig, FilterResult, value_of
from data.shard_writer import atomic_write_bytes

DERIVED_FIELDS = ("duration_s",)  # record fields of the pipeline itself plotted after the annotators' ones
# Positions in the source video and bookkeeping, not properties worth a histogram (unless a filter uses them).
_NOT_SCORES = frozenset({"start_s", "end_s", "start_frame", "end_frame", "clip_index"})
_CELL = (160, 96)  # contact sheet thumbnail box (width, height); the key label goes below
_LABEL_H = 26
_COLUMNS = 6
_CSS = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}td.n{text-align:right}img{max-width:100%}
figure{display:inline-block;margin:0.5em;vertical-align:top}"""


def _save_figure(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80] or "_"


def score_fields(records: Sequence[Mapping[str, Any]], cfg: FilterConfig) -> list[str]:
    """The numeric fields to plot: filter fields, the annotators' scores, other top-level numbers; only those some
    record has."""
    filtered = {f.field for f in cfg.filters}
    names = [f.field for f in cfg.filters] + annotator_fields() + list(DERIVED_FIELDS)
    for r in records:
        names += [k for k, v in r.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)]
    out: list[str] = []
    for name in names:
        if name in out or (name in _NOT_SCORES and name not in filtered):
            continue
        if any(value_of(r, name) is not None for r in records):
            out.append(name)
    return out


def _histogram(field: str, values: np.ndarray, kept: np.ndarray, cuts: list[tuple[str, float]], path: Path) -> None:
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    lo, hi = float(values.min()), float(values.max())
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 41)
    ax.hist(values, bins=bins, color="#999", label=f"all ({values.size})")
    if kept.size:
        ax.hist(kept, bins=bins, color="#2a7", alpha=0.8, label=f"kept ({kept.size})")
    for i, (label, x) in enumerate(cuts):
        ax.axvline(x, color=f"C{i % 10}", linestyle="--", label=f"{label} cut {x:.4g}")
    ax.set_xlabel(field)
    ax.set_ylabel("clips")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path)


def _bars(title: str, counts: Mapping[str, int], path: Path) -> None:
    names = list(counts)
    fig = Figure(figsize=(6, 0.5 + 0.35 * max(1, len(names))))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, [counts[n] for n in names], color="#47a")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    for yi, n in zip(y, names, strict=True):
        ax.text(counts[n], yi, f" {counts[n]}", va="center", fontsize=8)
    ax.set_title(title)
    ax.margins(x=0.15)
    fig.tight_layout()
    _save_figure(fig, path)


def _check_thumb(key: str, img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or 0 in img.shape:
        raise ValueError(f"thumbnail of {key!r} must be an (H, W, 3) uint8 array; got {img.dtype} {img.shape}")
    return img


def contact_sheet(items: Sequence[tuple[str, np.ndarray]], *, columns: int = _COLUMNS) -> Image.Image:
    """A grid of thumbnails (each fit into a fixed box, aspect kept) with its label below."""
    cols = max(1, min(columns, len(items)))
    rows = math.ceil(len(items) / cols)
    cw, ch = _CELL
    sheet = Image.new("RGB", (cols * cw, rows * (ch + _LABEL_H)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, img) in enumerate(items):
        thumb = Image.fromarray(_check_thumb(label, img))
        thumb.thumbnail((cw - 4, ch - 4))
        x, y = (i % cols) * cw, (i // cols) * (ch + _LABEL_H)
        sheet.paste(thumb, (x + (cw - thumb.width) // 2, y + (ch - thumb.height) // 2))
        for j, line in enumerate(label.split("\n")[:2]):
            draw.text((x + 3, y + ch + 1 + 12 * j), line[:26], fill="black")
    return sheet


def _pick(keys: Sequence[str], n: int, seed: int) -> list[str]:
    """Up to n keys, a seeded choice in input order (the same inputs give the same sheet)."""
    if len(keys) <= n:
        return list(keys)
    idx = np.random.default_rng(seed).choice(len(keys), size=n, replace=False)
    return [keys[i] for i in sorted(idx)]


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{_esc(c)}</td>' if isinstance(c, int) else f"<td>{_esc(c)}</td>" for c in r)
        + "</tr>"
        for r in rows
    )  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(rel: str, caption: str) -> str:
    return f'<figure><img src="{_esc(rel)}" alt="{_esc(caption)}"><figcaption>{_esc(caption)}</figcaption></figure>'


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def _count_table(title: str, counts: Mapping[str, int]) -> str:
    if not counts:
        return f"<h2>{_esc(title)}</h2><p>none</p>"
    rows: list[list[Any]] = [[k, int(v)] for k, v in counts.items()]
    rows.append(["total", sum(int(v) for v in counts.values())])
    return f"<h2>{_esc(title)}</h2>" + _table(["reason", "count"], rows)


def _filter_section(records: Sequence[Mapping[str, Any]], result: FilterResult, cfg: FilterConfig) -> str:
    rows = []
    for spec in cfg.filters:
        low, high = result.thresholds.get(spec.label, (None, None))
        rows.append([spec.label, spec.field, spec.describe(), _fmt(low), _fmt(high),
                     len(result.dropped_by.get(spec.label, [])), len(result.first_dropped_by.get(spec.label, [])),
                     int(result.missing.get(f"missing_{spec.field}", 0))])  # fmt: skip
    mode = "sequential (each on the survivors of the ones before)" if cfg.sequential else "all on the full set"
    header = ["filter", "field", "rule", "low cut", "high cut", "drops", "first drops", "missing"]
    return f"<h2>Filters</h2><p>Percentiles computed {_esc(mode)}; values at a cut are kept.</p>" + _table(header, rows)


def _plots(
    out: Path, records: Sequence[Mapping[str, Any]], result: FilterResult, cfg: FilterConfig, stage_counts: Mapping
) -> str:
    parts = []
    if stage_counts:
        _bars("stages", {k: int(v) for k, v in stage_counts.items()}, out / "plots" / "stages.png")
        parts.append(_img("plots/stages.png", "stage counts"))
    if cfg.filters:
        _bars("filter funnel (left after each filter)", result.counts, out / "plots" / "funnel.png")
        parts.append(_img("plots/funnel.png", "filter funnel"))
    kept_set = set(result.kept)
    used: set[str] = set()
    for field in score_fields(records, cfg):
        vals = [(value_of(r, field), r.get("key") in kept_set) for r in records]
        values = np.array([v for v, _ in vals if v is not None])
        kept = np.array([v for v, k in vals if v is not None and k])
        cuts = [(s.label, x) for s in cfg.filters if s.field == field for x in result.thresholds.get(s.label, ())]
        name = _safe_name(field)
        while name in used:
            name += "_"
        used.add(name)
        _histogram(field, values, kept, [(s, x) for s, x in cuts if x is not None], out / "plots" / f"hist_{name}.png")
        parts.append(_img(f"plots/hist_{name}.png", f"{field} ({values.size} clips with a value)"))
    return "<h2>Counts and scores</h2>" + "".join(parts)


def _sheets(
    out: Path, result: FilterResult, cfg: FilterConfig, thumbs: Mapping[str, np.ndarray], records: Sequence[Mapping],
    n: int, seed: int,
) -> str:  # fmt: skip
    by_key = {r.get("key"): r for r in records}
    groups = [("kept", "kept clips", result.kept, None)]
    groups += [(f"dropped_{s.label}", f"dropped by {s.label}", result.dropped_by.get(s.label, []), s.field)
               for s in cfg.filters]  # fmt: skip
    parts = ["<h2>Contact sheets</h2>"]
    for i, (name, title, keys, field) in enumerate(groups):
        picked = _pick([k for k in keys if k in thumbs], n, seed + i)
        if not picked:
            parts.append(f"<p>{_esc(title)}: no thumbnails</p>")
            continue
        items = []
        for k in picked:
            v = value_of(by_key.get(k, {}), field) if field else None
            items.append((k if field is None else f"{k}\n{field}={_fmt(v)}", thumbs[k]))
        buf = io.BytesIO()
        contact_sheet(items).save(buf, format="PNG")
        rel = f"plots/sheet_{i:02d}_{_safe_name(name)}.png"
        atomic_write_bytes(out / rel, buf.getvalue())
        parts.append(f"<h3>{_esc(title)} ({len(picked)} of {len(keys)})</h3>" + _img(rel, title))
    return "".join(parts)


def write_report(
    out_dir: str | os.PathLike[str],
    records: Sequence[Mapping[str, Any]],
    result: FilterResult,
    cfg: FilterConfig,
    *,
    skips: Mapping[str, int],
    notes: Mapping[str, int],
    stage_counts: Mapping[str, int],
    thumbnails: Mapping[str, np.ndarray] | None = None,
    title: str = "Curation report",
    max_thumbnails: int = 24,
    seed: int = 0,
) -> Path:
    """Write ``out_dir/report.html`` (and ``out_dir/plots/``); returns the html path. See the module doc."""
    out = Path(out_dir)
    kept = len(result.kept)
    frac = f" ({100.0 * kept / len(records):.1f}%)" if records else ""
    body = [f"<h1>{_esc(title)}</h1>", f"<p>{len(records)} annotated clips, {kept} kept{_esc(frac)}.</p>"]
    body.append("<h2>Stages</h2>" + (_table(["stage", "count"], [[k, int(v)] for k, v in stage_counts.items()])
                                     if stage_counts else "<p>none</p>"))  # fmt: skip
    body.append(_count_table("Skipped inputs", skips))
    body.append(_count_table("Notes (inputs used after a correction)", notes))
    if records:
        body.append(_filter_section(records, result, cfg))
        body.append(_table(["step", "clips left"], [[k, int(v)] for k, v in result.counts.items()]))
        body.append(_plots(out, records, result, cfg, stage_counts))
        if thumbnails:
            body.append(_sheets(out, result, cfg, thumbnails, records, max_thumbnails, seed))
    else:
        body.append("<h2>Filters</h2><p>No annotated clips: nothing was filtered and there is nothing to plot.</p>")
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{_esc(title)}</title><style>{_CSS}</style>'
            f"</head><body>\n" + "\n".join(body) + "\n</body></html>\n")  # fmt: skip
    path = out / "report.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
