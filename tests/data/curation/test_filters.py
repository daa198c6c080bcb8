"""Curation filters: percentile and absolute cuts, presets, missing values, funnel, key lists, subset shards."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data.curation.filters import (
    FilterConfig,
    FilterSpec,
    apply_filters,
    freeze_thresholds,
    high_quality_filters,
    pretraining_filters,
    value_of,
    write_subset_shards,
)
from data.sources import iter_shard_records, read_key_list, write_key_list
from data.stream import ShardStream, StreamConfig
from tests.data.stream_fixtures import CountingDecode, keys, write_shards, write_tar


def _records(n: int, seed: int = 0, **fields: str) -> list[dict[str, Any]]:
    """n records ``k00000...`` with each named field drawn uniform in [0, 1) (distinct values, almost surely)."""
    rng = np.random.default_rng(seed)
    cols = {name: rng.random(n) for name in fields}
    return [{"key": f"k{i:05d}", **{name: float(cols[name][i]) for name in fields}} for i in range(n)]


def test_drop_lowest_and_highest_quarter_keep_exactly_750_of_1000() -> None:
    recs = _records(1000, x="")
    values = np.array([r["x"] for r in recs])
    low = apply_filters(recs, FilterConfig((FilterSpec("x", drop_below_percentile=25),)))
    high = apply_filters(recs, FilterConfig((FilterSpec("x", drop_above_percentile=75),)))
    assert len(low.kept) == len(high.kept) == 750
    assert low.thresholds["x"] == (pytest.approx(np.percentile(values, 25)), None)
    assert high.thresholds["x"] == (None, pytest.approx(np.percentile(values, 75)))
    assert all(r["x"] >= low.thresholds["x"][0] for r in recs if r["key"] in set(low.kept))
    assert sorted(low.kept + low.dropped_by["x"]) == [r["key"] for r in recs]
    assert low.kept == [r["key"] for r in recs if r["key"] in set(low.kept)]  # input order
    assert low.counts == {"input": 1000, "x": 750}


def test_paper_preset_on_independent_scores_keeps_the_product_of_fractions() -> None:
    n = 20000
    recs = _records(n, seed=3, motion_score="", aesthetic="", clip_similarity="", text_area="")
    cfg = pretraining_filters()
    res = apply_filters(recs, cfg)
    assert [f.field for f in cfg.filters] == ["motion_score", "aesthetic", "clip_similarity", "text_area"]
    drops = {k: len(v) for k, v in res.dropped_by.items()}
    assert drops == {"motion_score": 5000, "aesthetic": 5000, "clip_similarity": 10000, "text_area": 5000}
    assert len(res.kept) / n == pytest.approx(0.75 * 0.75 * 0.5 * 0.75, abs=0.015)
    assert list(res.counts) == ["input", "motion_score", "aesthetic", "clip_similarity", "text_area"]
    assert res.counts["motion_score"] == 15000 and res.counts["text_area"] == len(res.kept)
    funnel = list(res.counts.values())
    steps = [funnel[i] - funnel[i + 1] for i in range(len(funnel) - 1)]
    assert steps == [len(v) for v in res.first_dropped_by.values()]
    # all thresholds on the full set: the text cut is the 75th percentile of every record's text area
    assert res.thresholds["text_area"][1] == pytest.approx(np.percentile([r["text_area"] for r in recs], 75))
    assert pretraining_filters(text_area_max=0.07).filters[3] == FilterSpec("text_area", max=0.07)


def test_absolute_bounds_are_inclusive_and_the_stricter_bound_wins() -> None:
    recs = [{"key": f"k{i}", "x": float(i)} for i in range(10)]
    res = apply_filters(recs, FilterConfig((FilterSpec("x", min=3, max=6),)))
    assert res.kept == ["k3", "k4", "k5", "k6"] and res.thresholds["x"] == (3.0, 6.0)
    both = FilterConfig((FilterSpec("x", drop_below_percentile=50, min=2, max=8, name="mid"),))
    res = apply_filters(recs, both)  # p50 of 0..9 is 4.5 > min 2
    assert res.thresholds == {"mid": (4.5, 8.0)} and res.kept == ["k5", "k6", "k7", "k8"]


def test_ties_at_the_cut_are_kept() -> None:
    recs = [{"key": f"k{i}", "x": 1.0 if i < 80 else 2.0} for i in range(100)]
    res = apply_filters(recs, FilterConfig((FilterSpec("x", drop_below_percentile=25),)))
    assert len(res.kept) == 100  # the 25th percentile is 1.0, and a value at the cut is kept


def test_missing_values_are_counted_and_dropped_or_kept_by_policy() -> None:
    recs: list[dict[str, Any]] = [{"key": f"k{i}", "x": float(i), "y": 1.0} for i in range(8)]
    recs[0]["x"] = None
    del recs[1]["x"]
    recs[2]["x"] = float("nan")
    recs[3]["x"] = "fast"
    recs[4]["x"] = True
    cfg = FilterConfig((FilterSpec("x", min=0), FilterSpec("y", max=5)))
    res = apply_filters(recs, cfg)
    assert res.missing == {"missing_x": 5, "missing_y": 0}
    assert res.kept == ["k5", "k6", "k7"] and res.dropped_by["x"] == ["k0", "k1", "k2", "k3", "k4"]
    assert res.counts == {"input": 8, "x": 3, "y": 3}
    keep = apply_filters(recs, FilterConfig((FilterSpec("x", min=6, on_missing="keep"),)))
    assert keep.kept == ["k0", "k1", "k2", "k3", "k4", "k6", "k7"] and keep.missing == {"missing_x": 5}
    # missing values never enter the percentiles
    pct = apply_filters(recs, FilterConfig((FilterSpec("x", drop_below_percentile=50, on_missing="keep"),)))
    assert pct.thresholds["x"] == (6.0, None)
    none = apply_filters([{"key": "a"}], FilterConfig((FilterSpec("x", drop_below_percentile=50),)))
    assert none.kept == [] and none.thresholds["x"] == (None, None) and none.missing == {"missing_x": 1}


def test_nested_and_derived_fields() -> None:
    rec = {"key": "a", "start_s": 1.0, "end_s": 5.5, "flow": {"mean": 2.0}}
    assert value_of(rec, "flow.mean") == 2.0 and value_of(rec, "duration_s") == 4.5
    assert value_of({"duration_s": 3}, "duration_s") == 3.0 and value_of({"start_s": 1}, "duration_s") is None
    recs = [
        {"key": "long", "start_s": 0.0, "end_s": 6.0, "motion_score": 1, "aesthetic": 1, "clip_similarity": 1,
         "text_area": 0.0},
        {"key": "short", "start_s": 0.0, "end_s": 2.0, "motion_score": 1, "aesthetic": 1, "clip_similarity": 1,
         "text_area": 0.0},
    ]  # fmt: skip
    res = apply_filters(recs, high_quality_filters())
    assert res.kept == ["long"] and res.dropped_by["duration_s"] == ["short"]


def test_sequential_thresholds_use_the_survivors() -> None:
    recs = [{"key": f"k{i}", "a": float(i), "b": float(i)} for i in range(100)]
    specs = (FilterSpec("a", drop_below_percentile=50), FilterSpec("b", drop_below_percentile=50))
    full = apply_filters(recs, FilterConfig(specs))
    seq = apply_filters(recs, FilterConfig(specs, sequential=True))
    assert len(full.kept) == 50 and len(full.dropped_by["b"]) == 50 and full.first_dropped_by["b"] == []
    assert len(seq.kept) == 25 and seq.thresholds["b"][0] == pytest.approx(74.5)
    assert seq.dropped_by == seq.first_dropped_by


def test_deterministic_and_independent_of_input_order() -> None:
    recs = _records(500, seed=1, motion_score="", aesthetic="", clip_similarity="", text_area="")
    a, b = apply_filters(recs, pretraining_filters()), apply_filters(recs, pretraining_filters())
    assert a == b
    rev = apply_filters(recs[::-1], pretraining_filters())
    assert rev.thresholds == a.thresholds and rev.kept == a.kept[::-1]
    frozen = freeze_thresholds(pretraining_filters(), a)
    assert all(f.drop_below_percentile is None and f.drop_above_percentile is None for f in frozen.filters)
    assert apply_filters(recs, frozen).kept == a.kept
    assert json.loads(json.dumps(a.as_dict()))["kept"] == len(a.kept)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="does nothing"):
        FilterSpec("x")
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        FilterSpec("x", drop_below_percentile=120)
    with pytest.raises(ValueError, match="drops everything"):
        FilterSpec("x", drop_below_percentile=80, drop_above_percentile=20)
    with pytest.raises(ValueError, match="swap"):
        FilterSpec("x", min=2, max=1)
    with pytest.raises(ValueError, match="distinct name"):
        FilterConfig((FilterSpec("x", min=0), FilterSpec("x", max=1)))
    with pytest.raises(ValueError, match="duplicate clip keys"):
        apply_filters([{"key": "a"}, {"key": "a"}], FilterConfig(()))
    with pytest.raises(ValueError, match="no 'key'"):
        apply_filters([{"x": 1}], FilterConfig(()))


def test_key_list_round_trip(tmp_path: Path) -> None:
    path = write_key_list(tmp_path / "sub" / "kept.txt", ["b_1", "a_2", "c/3"])
    assert path.read_text() == "b_1\na_2\nc/3\n" and read_key_list(path) == {"a_2", "b_1", "c/3"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["kept.txt"]  # no temp file left behind
    write_key_list(path, [])
    assert read_key_list(path) == set()
    with pytest.raises(ValueError, match="cannot go in a key list"):
        write_key_list(path, ["ok", "bad\nkey"])
    with pytest.raises(ValueError, match="does not exist"):
        read_key_list(tmp_path / "nope.txt")


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]  # type: ignore[union-attr]


def test_subset_shards_hold_exactly_the_kept_records_with_identical_bytes(tmp_path: Path) -> None:
    src = write_shards(tmp_path / "src", num_shards=3, per_shard=5)
    extra = write_tar(tmp_path / "src" / "x.tar", [("z_0001.JSON", b'{"a": 1}'), ("z_0001.seg.npy", b"\x00\x01")])
    urls = [str(p) for p in src] + [str(extra)]
    originals = {str(r["__key__"]): r for u in urls for r in iter_shard_records(u)}
    wanted = {"s000_0001", "s000_0004", "s001_0000", "s002_0003", "z_0001", "not_there"}
    out = write_subset_shards(urls, wanted, tmp_path / "out", samples_per_shard=2)
    assert [Path(p).name for p in out] == ["000000.tar", "000001.tar", "000002.tar"]
    got = [r for p in out for r in iter_shard_records(p)]
    assert [r["__key__"] for r in got] == ["s000_0001", "s000_0004", "s001_0000", "s002_0003", "z_0001"]
    for r in got:
        src_rec = originals[str(r["__key__"])]
        assert {k: v for k, v in r.items() if k != "__url__"} == {k: v for k, v in src_rec.items() if k != "__url__"}
    assert ("z_0001.seg.npy", b"\x00\x01") in _members(Path(out[2]))
    again = write_subset_shards(urls, wanted, tmp_path / "out2", samples_per_shard=2)
    assert [_members(Path(p)) for p in again] == [_members(Path(p)) for p in out]  # deterministic bytes
    with pytest.raises(ValueError, match="already holds shards"):
        write_subset_shards(urls, wanted, tmp_path / "out")
    fewer = write_subset_shards(urls, {"s000_0001"}, tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == ["000000.tar"] and len(fewer) == 1
    assert write_subset_shards(urls, set(), tmp_path / "empty") == []


def test_stream_key_list_keeps_only_listed_records(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "s", num_shards=2, per_shard=6)
    listed = ["s000_0002", "s001_0000", "s001_0005"]
    path = write_key_list(tmp_path / "keys.txt", listed)
    cfg = StreamConfig(passes=1, shuffle_buffer=0, key_list=str(path))
    stream = ShardStream([str(p) for p in shards], decode=CountingDecode(), config=cfg, rank=0, world_size=1)
    decode = stream.decode
    samples = list(stream.iter_worker(0, num_workers=1))
    assert sorted(keys(samples)) == listed and sorted(decode.calls) == listed  # type: ignore[attr-defined]
    assert samples[-1]["_stream"]["stats"]["filtered"] == 9  # type: ignore[typeddict-item]
