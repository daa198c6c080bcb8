"""Score filters over the annotated clips (RECIPE section 6): percentile or absolute cuts, the funnel and subset
shards (the kept keys are written with ``data.sources.write_key_list``).

A filter (``FilterSpec``) reads one number per clip record at a dotted path (``data.micro_cond.lookup``; the derived
field ``duration_s`` = ``end_s - start_s`` is computed when a record does not carry it) and keeps the clip when the
value lies in ``[low, high]``, both ends inclusive:

- ``drop_below_percentile=p`` puts ``low`` at the p-th percentile of the values, so ``p=25`` drops the lowest 25%;
- ``drop_above_percentile=q`` puts ``high`` at the q-th percentile, so ``q=75`` drops the top 25%;
- ``min`` / ``max`` are absolute bounds; given together with a percentile, the stricter of the two applies;
- ``values`` is a categorical selection instead (e.g. ``camera_motion`` in ``[zoom_in]``): the value, compared as text
  (``data.stream.category_text``), must be one of them; it takes no percentile or bound.

Percentiles use ``np.percentile(values, p, method="linear")``. A value exactly at a cut is kept; with many equal
values at a cut (ties), more than the nominal fraction is kept. By default every filter's percentiles are computed
on the full annotated set (the records carrying the field), as in the paper, where each cut is a percentile of LVD
and the filters are independent; ``FilterConfig(sequential=True)`` computes each filter's percentiles on the
records that survived the filters before it instead (then a record is only ever dropped by one filter).

Missing values: a record whose field is absent, null, not a number or not finite is *missing* for that filter; it is
counted as ``missing_<field>`` and dropped (``on_missing="drop"``, the default: an annotator that failed says nothing
good about a clip) or passed through (``on_missing="keep"``). Missing records never enter the percentiles.

``freeze_thresholds`` turns a result's resolved cuts into absolute bounds, so thresholds computed once on a large
sample can be applied to new data (or in the training stream, ``MetadataFilter``) without recomputing percentiles.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from data.micro_cond import lookup
from data.shard_writer import ShardWriter
from data.sources import expand_urls, iter_shard_records
from data.stream import category_text

log = logging.getLogger(__name__)

Bounds = tuple[float | None, float | None]


def _duration(record: Mapping[str, Any]) -> Any:
    start, end = record.get("start_s"), record.get("end_s")
    if _number(start) is None or _number(end) is None:
        return None
    return end - start


# Fields computed from others when a record does not carry them itself.
DERIVED_FIELDS: dict[str, Callable[[Mapping[str, Any]], Any]] = {"duration_s": _duration}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def value_of(record: Mapping[str, Any], field: str) -> float | None:
    """The finite number at ``field`` (dotted path, or a derived field such as ``duration_s``); None when missing."""
    value = lookup(record, field)
    if value is None and field in DERIVED_FIELDS:
        value = DERIVED_FIELDS[field](record)
    return _number(value)


@dataclass(frozen=True)
class FilterSpec:
    """Keep a clip when ``low <= value <= high`` (see the module doc for how percentiles and bounds combine)."""

    field: str
    drop_below_percentile: float | None = None
    drop_above_percentile: float | None = None
    min: float | None = None
    max: float | None = None
    on_missing: Literal["drop", "keep"] = "drop"
    name: str | None = None
    values: tuple[str, ...] | None = None  # categorical: keep a clip whose value is one of these

    def __post_init__(self) -> None:
        if not self.field:
            raise ValueError("FilterSpec.field is empty; give a dotted json path such as 'motion_score'")
        bounds = (self.drop_below_percentile, self.drop_above_percentile, self.min, self.max)
        if self.values is not None:
            object.__setattr__(self, "values", tuple(str(v) for v in self.values))
            if not self.values:
                raise ValueError(f"FilterSpec({self.field!r}) has an empty values list; name at least one value")
            if any(b is not None for b in bounds):
                raise ValueError(f"FilterSpec({self.field!r}) sets values {list(self.values)} and a percentile or "
                                 "bound: a categorical filter has neither; use two filters")  # fmt: skip
        elif all(b is None for b in bounds):
            raise ValueError(f"FilterSpec({self.field!r}) does nothing; set a percentile, min, max or values")
        for p in bounds[:2]:
            if p is not None and not 0 <= p <= 100:
                raise ValueError(f"FilterSpec({self.field!r}): percentiles must be in [0, 100]; got {p}")
        lo_p, hi_p = bounds[:2]
        if lo_p is not None and hi_p is not None and lo_p > hi_p:
            raise ValueError(f"FilterSpec({self.field!r}): drop_below_percentile {lo_p} > drop_above_percentile "
                             f"{hi_p} drops everything; drop_above_percentile=75 drops the top 25%")  # fmt: skip
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"FilterSpec({self.field!r}) has min {self.min} > max {self.max}; swap them")
        if self.on_missing not in ("drop", "keep"):
            raise ValueError(f'FilterSpec({self.field!r}).on_missing must be "drop" or "keep"; got {self.on_missing!r}')

    @property
    def label(self) -> str:
        """The filter's name in results and reports (``name``, else ``field``)."""
        return self.name or self.field

    def describe(self) -> str:
        """A short human-readable rule, e.g. ``drop < p25, keep >= 0.5``."""
        parts = [f"one of {', '.join(self.values)}"] if self.values is not None else []
        if self.drop_below_percentile is not None:
            parts.append(f"drop < p{self.drop_below_percentile:g}")
        if self.drop_above_percentile is not None:
            parts.append(f"drop > p{self.drop_above_percentile:g}")
        if self.min is not None:
            parts.append(f"min {self.min:g}")
        if self.max is not None:
            parts.append(f"max {self.max:g}")
        return ", ".join(parts) + f"; missing: {self.on_missing}"

    def resolve(self, values: np.ndarray) -> Bounds:
        """The absolute ``(low, high)`` cuts over the present ``values`` (None = unbounded on that side)."""
        low, high = self.min, self.max
        if values.size:
            if self.drop_below_percentile is not None:
                cut = float(np.percentile(values, self.drop_below_percentile, method="linear"))
                low = cut if low is None else max(low, cut)
            if self.drop_above_percentile is not None:
                cut = float(np.percentile(values, self.drop_above_percentile, method="linear"))
                high = cut if high is None else min(high, cut)
        return (None if low is None else float(low)), (None if high is None else float(high))


@dataclass(frozen=True)
class FilterConfig:
    filters: tuple[FilterSpec, ...]
    sequential: bool = False  # False: every filter's percentiles over the full annotated set (the paper)

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", tuple(self.filters))
        labels = [f.label for f in self.filters]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"filters {dupes} appear twice; give each FilterSpec a distinct name=")


def pretraining_filters(*, text_area_max: float | None = None) -> FilterConfig:
    """LVD -> LVD-F (App E.2.2): drop the lowest 25% motion, lowest 25% aesthetics, lowest 50% CLIP similarity and
    the top 25% text area. ``text_area_max=0.07`` uses App C's absolute text cut (boxes over 7% of the frame)."""
    text = FilterSpec("text_area", max=text_area_max) if text_area_max is not None else None
    return FilterConfig(
        (
            FilterSpec("motion_score", drop_below_percentile=25),
            FilterSpec("aesthetic", drop_below_percentile=25),
            FilterSpec("clip_similarity", drop_below_percentile=50),
            text or FilterSpec("text_area", drop_above_percentile=75),
        )
    )


def high_quality_filters(*, min_duration_s: float = 4.0, text_area_max: float = 0.01) -> FilterConfig:
    """A stricter Stage III selection (ours; the paper only says "lots of object motion, steady camera motion,
    well-aligned captions", RECIPE section 6). Motion between the 50th and 95th percentile (clearly moving, but
    not the chaotic top 5%, mostly shaky cameras and fast cuts the detectors missed), aesthetics and CLIP
    similarity in the top 30%, almost no text (boxes <= 1% of the frame) and at least 4 s (25 frames at the
    ~6 fps Stage III samples at). Steady camera motion is not measured by our annotations."""
    return FilterConfig(
        (
            FilterSpec("motion_score", drop_below_percentile=50, drop_above_percentile=95),
            FilterSpec("aesthetic", drop_below_percentile=70),
            FilterSpec("clip_similarity", drop_below_percentile=70),
            FilterSpec("text_area", max=text_area_max),
            FilterSpec("duration_s", min=min_duration_s),
        )
    )


@dataclass(frozen=True)
class FilterResult:
    """What ``apply_filters`` decided. ``counts`` is the funnel: ``input`` then the number left after each filter
    (in order, each record charged to the first filter that dropped it, ``first_dropped_by``); ``dropped_by`` lists
    every filter that rejects a record; ``missing`` counts the input records lacking each filtered field
    (``missing_<field>``), whether the filter drops or keeps them."""

    kept: list[str]
    thresholds: dict[str, Bounds]
    dropped_by: dict[str, list[str]]
    first_dropped_by: dict[str, list[str]]
    counts: dict[str, int]
    missing: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A json-ready summary (thresholds, funnel, drop and missing counts; no key lists)."""
        return {
            "kept": len(self.kept),
            "thresholds": {k: list(v) for k, v in self.thresholds.items()},
            "counts": dict(self.counts),
            "dropped_by": {k: len(v) for k, v in self.dropped_by.items()},
            "first_dropped_by": {k: len(v) for k, v in self.first_dropped_by.items()},
            "missing": dict(self.missing),
        }


def _record_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    keys = []
    for i, r in enumerate(records):
        key = r.get("key")
        if not isinstance(key, str) or not key:
            raise ValueError(f"record {i} has no 'key' (got {key!r}); every clip json needs its shard key")
        keys.append(key)
    if len(set(keys)) != len(keys):
        dupes = sorted(k for k, c in Counter(keys).items() if c > 1)[:5]
        raise ValueError(f"duplicate clip keys {dupes}; keys must be unique across the annotated set")
    return keys


def apply_filters(records: Sequence[Mapping[str, Any]], cfg: FilterConfig) -> FilterResult:
    """Filter the annotated clip records (deterministic; ``kept`` keeps the input order)."""
    keys = _record_keys(records)
    alive = np.ones(len(records), dtype=bool)
    thresholds: dict[str, Bounds] = {}
    dropped_by: dict[str, list[str]] = {}
    first: dict[str, list[str]] = {}
    counts = {"input": len(records)}
    missing: dict[str, int] = {}
    for spec in cfg.filters:
        reach = alive if cfg.sequential else np.ones_like(alive)
        if spec.values is not None:
            raw = [lookup(r, spec.field) for r in records]
            present = np.array([v is not None for v in raw], dtype=bool)
            inside = np.array([v is not None and category_text(v) in spec.values for v in raw], dtype=bool)
            thresholds[spec.label] = (None, None)
        else:
            values = np.array([np.nan if (v := value_of(r, spec.field)) is None else v for r in records], dtype=float)
            present = ~np.isnan(values)
            low, high = spec.resolve(values[present & reach])
            thresholds[spec.label] = (low, high)
            with np.errstate(invalid="ignore"):
                inside = (low is None or values >= low) & (high is None or values <= high)
        passes = np.where(present, inside, spec.on_missing == "keep")
        missing[f"missing_{spec.field}"] = int((~present).sum())
        drop = reach & ~passes
        dropped_by[spec.label] = [keys[i] for i in np.flatnonzero(drop)]
        first[spec.label] = [keys[i] for i in np.flatnonzero(drop & alive)]
        alive &= passes
        counts[spec.label] = int(alive.sum())
    return FilterResult([keys[i] for i in np.flatnonzero(alive)], thresholds, dropped_by, first, counts, missing)


def freeze_thresholds(cfg: FilterConfig, result: FilterResult) -> FilterConfig:
    """The same filters with each one's resolved cuts as absolute ``min``/``max`` (no percentiles left)."""
    specs = []
    for spec in cfg.filters:
        low, high = result.thresholds[spec.label]
        if spec.values is not None:  # categorical: nothing to freeze
            specs.append(spec)
            continue
        if low is None and high is None:
            raise ValueError(f"filter {spec.label!r} resolved no threshold (no record had {spec.field!r})")
        specs.append(replace(spec, drop_below_percentile=None, drop_above_percentile=None, min=low, max=high))
    return FilterConfig(tuple(specs), sequential=cfg.sequential)


_SHARD_NAME = re.compile(r"\d{6}\.tar")


@dataclass(frozen=True)
class SubsetShards:
    """One output of ``write_subsets``: the records whose key is in ``keys`` go to ``out_dir/000000.tar, ...``,
    ``samples_per_shard`` per shard."""

    keys: AbstractSet[str]
    out_dir: str | os.PathLike[str]
    samples_per_shard: int = 1000


def _records(urls: Sequence[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    for url in urls:
        for record in iter_shard_records(url):
            members = {ext: v for ext, v in record.items() if not ext.startswith("__")}
            yield str(record["__key__"]), members  # type: ignore[misc]


def write_subsets(
    src_shards: Sequence[str], subsets: Sequence[SubsetShards], *, overwrite: bool = False
) -> list[list[str]]:
    """``write_subset_shards`` for several subsets at once: the source shards are read once and each record is
    copied into every subset that keeps it. Returns the written paths of each subset, in the given order; every
    subset's shards are the ones ``write_subset_shards`` alone would write."""
    outs = [Path(s.out_dir) for s in subsets]
    if len({os.path.abspath(o) for o in outs}) < len(outs):
        raise ValueError(f"two subsets write to the same folder ({[os.fspath(o) for o in outs]}); give each its own")
    for subset, out in zip(subsets, outs, strict=True):
        if subset.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1; got {subset.samples_per_shard}")
        if not overwrite and out.is_dir() and any(out.glob("*.tar")):
            raise ValueError(f"{out} already holds shards; choose an empty folder or pass overwrite=True")
    routes: dict[str, list[int]] = {}
    for i, subset in enumerate(subsets):
        for key in subset.keys:
            routes.setdefault(key, []).append(i)
    written: list[list[str]] = [[] for _ in subsets]
    found: set[str] = set()
    open_: dict[int, ShardWriter] = {}  # subset -> its shard being filled; renamed into place once full or at the end

    def close(i: int) -> None:
        writer = open_.pop(i)
        writer.__exit__(None, None, None)
        written[i].append(os.fspath(writer.path))

    try:
        for key, members in _records(expand_urls(list(src_shards))):
            for i in routes.get(key, ()):
                found.add(key)
                if i not in open_:
                    open_[i] = ShardWriter(outs[i] / f"{len(written[i]):06d}.tar").__enter__()
                open_[i].write(key, members)
                if open_[i].count >= subsets[i].samples_per_shard:
                    close(i)
        for i in sorted(open_):
            close(i)
    except BaseException as e:  # a damaged source shard: shards already complete stay, the open ones are dropped
        for writer in open_.values():
            writer.__exit__(type(e), e, e.__traceback__)
        raise
    for subset, out, paths in zip(subsets, outs, written, strict=True):
        if overwrite:  # an earlier, larger subset's tail would be mixed in by a reader of out_dir/*.tar
            for stale in sorted(out.glob("*.tar")):
                if _SHARD_NAME.fullmatch(stale.name) and os.fspath(stale) not in paths:
                    stale.unlink()
        missing = len(subset.keys) - len(found & set(subset.keys))
        if missing:
            log.warning("%d of %d listed keys were not found in the source shards", missing, len(subset.keys))
    return written


def write_subset_shards(
    src_shards: Sequence[str],
    keys: set[str],
    out_dir: str | os.PathLike[str],
    *,
    samples_per_shard: int = 1000,
    overwrite: bool = False,
) -> list[str]:
    """Copy the records whose shard key (``__key__``, the tar member stem, which is the json ``key`` in a
    video2dataset layout) is in ``keys`` into new shards ``out_dir/000000.tar, ...`` with every member's bytes
    unchanged, in source order; returns the written paths. Source shards are shard specs (braces, globs, ``pipe:``)
    read in the given order; a damaged source shard raises ``data.errors.BadSample``. Each output shard is written
    atomically; ``overwrite=False`` refuses an ``out_dir`` that already holds ``.tar`` files."""
    return write_subsets(src_shards, [SubsetShards(keys, out_dir, samples_per_shard)], overwrite=overwrite)[0]
