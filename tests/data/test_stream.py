"""ShardStream: sharding without overlap or loss, determinism, mixing, filters, bad inputs, counters, resume."""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import DataLoader

from data.sources import SourceSpec, assign_shards
from data.stream import MetadataFilter, ShardStream, StreamConfig
from data.stream_state import StreamTracker, merge_stream_states
from tests.data.stream_fixtures import (
    CountingDecode,
    json_member,
    keys,
    sample_members,
    write_shards,
    write_tar,
)


def _one_pass(**kw: Any) -> StreamConfig:
    return StreamConfig(passes=1, **kw)


def _all_keys(num_shards: int, per_shard: int, prefix: str = "s") -> list[str]:
    return [f"{prefix}{i:03d}_{j:04d}" for i in range(num_shards) for j in range(per_shard)]


def _list_collate(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return samples


@pytest.mark.parametrize("num_shards", [1, 3, 4, 7])
def test_ranks_and_workers_split_without_overlap_or_loss(tmp_path: Path, num_shards: int) -> None:
    write_shards(tmp_path, num_shards=num_shards, per_shard=5)
    seen: list[str] = []
    per_worker = []
    for rank in range(2):
        cfg = _one_pass()
        stream = ShardStream([f"{tmp_path}/s*.tar"], decode=CountingDecode(), config=cfg, rank=rank, world_size=2)
        for worker in range(2):
            got = keys(list(stream.iter_worker(worker, num_workers=2)))
            per_worker.append(len(got))
            seen += got
    assert sorted(seen) == _all_keys(num_shards, 5)  # each sample exactly once
    assert min(per_worker) > 0


def test_assign_shards_is_a_partition_per_epoch() -> None:
    shards = [f"{i}.tar" for i in range(10)]
    for epoch in range(3):
        parts = [assign_shards(shards, seed=1, source_index=0, epoch=epoch, worker=g, num_workers=4) for g in range(4)]
        assert sorted(itertools.chain.from_iterable(p for p, _ in parts)) == sorted(shards)
    a = assign_shards(shards, seed=1, source_index=0, epoch=0, worker=0, num_workers=4)
    b = assign_shards(shards, seed=1, source_index=0, epoch=1, worker=0, num_workers=4)
    assert a != b


def test_real_dataloader_two_workers_no_overlap_and_counters(tmp_path: Path) -> None:
    write_shards(tmp_path, num_shards=3, per_shard=8)
    stream = ShardStream([f"{tmp_path}/s{{000..002}}.tar"], decode=CountingDecode(), config=_one_pass(shuffle_buffer=4))
    loader = DataLoader(stream, batch_size=4, num_workers=2)  # torch default_collate
    tracker = StreamTracker()
    seen = []
    for batch in loader:
        seen += batch["key"]
        tracker.update(batch["_stream"])
    assert sorted(seen) == _all_keys(3, 8)
    assert set(tracker.positions) == {0, 1}
    assert tracker.stats().samples_yielded == 24 and tracker.stats().records_read == 24


def test_same_seed_and_epoch_same_order_other_epoch_other_order(tmp_path: Path) -> None:
    write_shards(tmp_path, num_shards=4, per_shard=10)

    def order(seed: int, epoch: int) -> list[str]:
        cfg = _one_pass(seed=seed, shuffle_buffer=16)
        stream = ShardStream([f"{tmp_path}/s*.tar"], decode=CountingDecode(), config=cfg, epoch=epoch)
        return keys(list(stream.iter_worker(0, num_workers=1)))

    first = order(3, 0)
    assert first == order(3, 0)
    assert sorted(first) == _all_keys(4, 10) and first != _all_keys(4, 10)
    assert order(3, 1) != first and order(4, 0) != first


def test_weighted_mixing_follows_the_weights(tmp_path: Path) -> None:
    write_shards(tmp_path / "a", num_shards=2, per_shard=20, prefix="a")
    write_shards(tmp_path / "b", num_shards=2, per_shard=20, prefix="b")
    specs = [SourceSpec(f"{tmp_path}/a/*.tar", weight=3.0), SourceSpec(f"{tmp_path}/b/*.tar", weight=1.0)]
    stream = ShardStream(specs, decode=CountingDecode(), config=StreamConfig(seed=0, shuffle_buffer=8))  # cycles
    got = keys(list(itertools.islice(stream.iter_worker(0, num_workers=1), 2000)))
    share_a = sum(k.startswith("a") for k in got) / len(got)
    assert abs(share_a - 0.75) < 0.04
    again = ShardStream(specs, decode=CountingDecode(), config=StreamConfig(seed=0, shuffle_buffer=8))
    assert keys(list(itertools.islice(again.iter_worker(0, num_workers=1), 200))) == got[:200]


def test_finite_mixing_drains_every_source(tmp_path: Path) -> None:
    write_shards(tmp_path / "a", num_shards=1, per_shard=30, prefix="a")
    write_shards(tmp_path / "b", num_shards=1, per_shard=3, prefix="b")
    specs = [SourceSpec(f"{tmp_path}/a/*.tar", weight=1.0), SourceSpec(f"{tmp_path}/b/*.tar", weight=5.0)]
    got = keys(list(ShardStream(specs, decode=CountingDecode(), config=_one_pass()).iter_worker(0, num_workers=1)))
    assert sorted(got) == sorted(_all_keys(1, 30, "a") + _all_keys(1, 3, "b"))


def test_filters_run_before_decode(tmp_path: Path) -> None:
    write_shards(tmp_path, num_shards=1, per_shard=20)  # motion_score = j % 10
    decode = CountingDecode()
    filters = [MetadataFilter("motion_score", min=2.0, max=5.0), MetadataFilter("captions.coca", require=False, min=0)]
    stream = ShardStream([f"{tmp_path}/s000.tar"], decode=decode, config=_one_pass(filters=filters))
    samples = list(stream.iter_worker(0, num_workers=1))
    assert sorted(s["motion_bucket_id"] for s in samples) == [2, 2, 3, 3, 4, 4, 5, 5]
    assert sorted(decode.calls) == sorted(keys(samples))  # filtered samples were never decoded
    last = samples[-1]["_stream"]["stats"]  # skips after the last yield are only in the worker's end-of-pass log
    assert last["filtered"] + last["samples_yielded"] == last["records_read"] and last["filtered"] >= 10


def test_missing_json_goes_to_the_decoder_unless_required(tmp_path: Path) -> None:
    shard = write_tar(tmp_path / "x.tar", [("a.mp4", b"v"), *sample_members("b")])
    decode = CountingDecode()
    cfg = _one_pass(filters=[MetadataFilter("motion_score", require=True)], shuffle_buffer=0)
    assert keys(list(ShardStream([str(shard)], decode=decode, config=cfg).iter_worker(0, num_workers=1))) == ["b"]
    assert decode.calls == ["b"]  # "a" has no json, so the required field is absent: filtered before decode
    with pytest.raises(Exception, match="json"):  # no filter: the decoder sees it (the fixture needs json)
        list(ShardStream([str(shard)], decode=decode, config=_one_pass()).iter_worker(0, num_workers=1))


def test_metadata_filter_semantics() -> None:
    meta = {"captions": {"coca": "a cat", "blip": ""}, "motion_score": 3, "flag": True}
    assert MetadataFilter("captions.coca", require=True).passes(meta)
    assert not MetadataFilter("captions.blip", require=True).passes(meta)
    assert not MetadataFilter("captions.vlm", require=True).passes(meta)
    assert MetadataFilter("captions.vlm", max=1).passes(meta)  # absent and not required
    assert not MetadataFilter("captions.coca", min=1).passes(meta)  # bound on a string
    assert not MetadataFilter("motion_score", min=3.5).passes(meta)
    with pytest.raises(ValueError, match="does nothing"):
        MetadataFilter("x")
    with pytest.raises(ValueError, match="swap"):
        MetadataFilter("x", min=2, max=1)


def _bad_inputs_shards(root: Path) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    good = write_tar(root / "good.tar", sample_members("g1") + sample_members("g2"))
    mixed_members = [
        *sample_members("ok"),
        (*json_member("badvid", {"key": "badvid"}),),
        ("badvid.mp4", b"bad"),
        ("nojson.mp4", b"v"),
        ("badjson.json", b"{not json"),
        ("badjson.mp4", b"v"),
        ("listjson.json", b"[1, 2]"),
        ("listjson.mp4", b"v"),
        *sample_members("ok2"),
    ]
    mixed = write_tar(root / "mixed.tar", mixed_members)
    full = write_tar(root / "full.tar", sample_members("t1") + sample_members("t2") + sample_members("t3"))
    (root / "truncated.tar").write_bytes(full.read_bytes()[: 3 * 1024 + 700])  # t1 complete, t2 cut
    return [str(good), str(mixed), str(root / "truncated.tar"), str(root / "missing.tar")]


def test_bad_inputs_are_skipped_logged_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    urls = _bad_inputs_shards(tmp_path)
    decode = CountingDecode()
    stream = ShardStream(urls, decode=decode, config=_one_pass(shuffle_buffer=0, require_json=True))
    with caplog.at_level(logging.INFO, logger="data.stream"):
        samples = list(stream.iter_worker(0, num_workers=1))
    assert sorted(keys(samples)) == ["g1", "g2", "ok", "ok2", "t1"]  # t1 precedes the damage
    assert "nojson" not in decode.calls and "badjson" not in decode.calls  # json checked before decode
    expected = {"corrupt_video": 1, "missing_json": 1, "invalid_json": 2, "truncated_shard": 1, "missing_shard": 1}
    # the worker's last words hold every count; the samples carry those up to the last yield
    (final,) = [r.args[2] for r in caplog.records if r.getMessage().startswith("worker 0 of 1: stream ended")]
    assert {k: v for k, v in final.items() if k in expected and v} == expected
    assert final["samples_yielded"] == 5 and final["records_read"] == 9
    tracker = StreamTracker()
    tracker.update(samples)
    assert tracker.stats().samples_yielded == 5
    assert all(n <= expected[r] for r, n in tracker.stats().nonzero_skips().items())
    skip_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skip ")]
    assert len(skip_lines) == 6
    assert any("key=badvid reason=corrupt_video" in line and "mixed.tar" in line for line in skip_lines)


def test_skip_warnings_are_rate_limited(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    members = [m for i in range(10) for m in sample_members(f"b{i}", payload=b"bad")] + sample_members("ok")
    shard = write_tar(tmp_path / "bad.tar", members)
    stream = ShardStream([str(shard)], decode=CountingDecode(), config=_one_pass(warn_limit=3, shuffle_buffer=0))
    with caplog.at_level(logging.WARNING, logger="data.stream"):
        samples = list(stream.iter_worker(0, num_workers=1))
    assert len(samples) == 1 and samples[0]["_stream"]["stats"]["corrupt_video"] == 10
    assert sum(m.startswith("skip ") for m in caplog.messages) == 3
    assert any("further ones are counted" in m for m in caplog.messages)


@pytest.mark.parametrize("passes", [1, None])
def test_zero_valid_samples_is_an_error_naming_the_counts(tmp_path: Path, passes: int | None) -> None:
    members = [m for i in range(4) for m in sample_members(f"b{i}", payload=b"bad")]
    shard = write_tar(tmp_path / "bad.tar", members)
    stream = ShardStream([str(shard)], decode=CountingDecode(), config=StreamConfig(passes=passes, shuffle_buffer=8))
    with pytest.raises(RuntimeError, match=r"No valid samples.*'corrupt_video': \d+"):
        next(iter(stream))


def test_empty_source_list_is_an_error() -> None:
    with pytest.raises(ValueError, match="No data sources"):
        ShardStream([], decode=CountingDecode())


@pytest.mark.parametrize("bad", [{"seed": -1}, {"shuffle_buffer": -1}, {"passes": 0}])
def test_config_validation(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="StreamConfig"):
        StreamConfig(**bad)


def _shards_with_bad(root: Path, *, num_shards: int, per_shard: int) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(num_shards):
        members = []
        for j in range(per_shard):
            key = f"s{i:03d}_{j:04d}"
            members += sample_members(key, meta={"key": key}, payload=b"bad" if j % 4 == 3 else b"v")
        write_tar(root / f"s{i:03d}.tar", members)
    return f"{root}/s*.tar"


def _signature(samples: list[dict[str, Any]]) -> list[tuple[str, float]]:
    # the frames value comes from the decode rng, so this also checks the per-record rng after a resume
    return [(s["key"], float(s["frames"].flatten()[0])) for s in samples]


def test_resume_in_process_does_not_decode_skipped_records(tmp_path: Path) -> None:
    url = _shards_with_bad(tmp_path, num_shards=3, per_shard=9)
    cfg = StreamConfig(seed=2, shuffle_buffer=5)

    def stream(decode: CountingDecode) -> ShardStream:
        return ShardStream([url], decode=decode, config=cfg, epoch=1)

    full = list(itertools.islice(stream(CountingDecode()).iter_worker(0, num_workers=1), 60))
    tracker = StreamTracker()
    tracker.update(full[:25])
    decode = CountingDecode()
    resumed = stream(decode)
    resumed.load_state_dict(tracker.state_dict())
    rest = list(itertools.islice(resumed.iter_worker(0, num_workers=1), 35))
    assert _signature(rest) == _signature(full[25:])
    first_index = full[24]["_stream"]["index"] + 1
    assert len(decode.calls) == rest[-1]["_stream"]["index"] - first_index + 1  # nothing before was decoded
    # counters continue across the resume (the state carries them)
    assert rest[-1]["_stream"]["stats"] == full[-1]["_stream"]["stats"]


@pytest.mark.parametrize("consumed", [6, 7])
def test_exact_resume_through_a_dataloader_with_two_workers(tmp_path: Path, consumed: int) -> None:
    url = _shards_with_bad(tmp_path, num_shards=5, per_shard=6)
    cfg = StreamConfig(seed=9, shuffle_buffer=4)  # cycles through epochs

    def loader(state: dict[str, Any] | None = None) -> DataLoader:
        stream = ShardStream([url], decode=CountingDecode(), config=cfg, rank=0, world_size=1)
        if state is not None:
            stream.load_state_dict(state)
        return DataLoader(stream, batch_size=3, num_workers=2, collate_fn=_list_collate)

    full = [_signature(b) for b in itertools.islice(loader(), 16)]
    tracker = StreamTracker()
    for batch in itertools.islice(loader(), consumed):
        tracker.update(batch)
    state = merge_stream_states([tracker.state_dict(), StreamTracker().state_dict()])
    rest = [_signature(b) for b in itertools.islice(loader(state), 16 - consumed)]
    assert rest == full[consumed:]


def test_resume_rejects_another_worker_count(tmp_path: Path) -> None:
    url = _shards_with_bad(tmp_path, num_shards=2, per_shard=4)
    stream = ShardStream([url], decode=CountingDecode(), config=StreamConfig(), rank=0, world_size=1)
    stream.load_state_dict({"epoch": 0, "workers": 4, "positions": {"0": 3}})
    with pytest.raises(ValueError, match="same world size and num_workers"):
        stream.iter_worker(0, num_workers=2)
    with pytest.raises(ValueError, match="epoch=3"):
        stream.load_state_dict({"epoch": 3, "workers": 2, "positions": {}})


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_stays_flat_over_thousands_of_samples(tmp_path: Path) -> None:
    for i in range(4):
        members = [m for j in range(250) for m in sample_members(f"s{i}_{j:04d}", payload=bytes(8192))]
        write_tar(tmp_path / f"s{i}.tar", members)
    stream = ShardStream([f"{tmp_path}/s*.tar"], decode=CountingDecode(), config=StreamConfig(shuffle_buffer=64))
    decode_calls = stream.decode.calls  # type: ignore[attr-defined]
    it = stream.iter_worker(0, num_workers=1)
    for _ in itertools.islice(it, 500):
        pass
    decode_calls.clear()  # the test's own bookkeeping must not count as stream growth
    before = _rss_bytes()
    for i, _ in enumerate(itertools.islice(it, 4000)):
        if i % 500 == 0:
            decode_calls.clear()
    growth = _rss_bytes() - before
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 4000 samples"


def test_padded_samples_are_counted_logged_once_and_resumed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    members = [m for j in range(12) for m in sample_members(f"k{j:02d}", payload=b"short" if j % 3 else b"video")]
    url = str(write_tar(tmp_path / "s.tar", members))
    cfg = StreamConfig(seed=0, shuffle_buffer=4)  # cycles: the second epoch's samples carry the first's counts

    def stream() -> ShardStream:
        return ShardStream([url], decode=CountingDecode(), config=cfg, rank=0, world_size=1)

    with caplog.at_level(logging.WARNING, logger="data.stream"):
        full = list(itertools.islice(stream().iter_worker(0, num_workers=1), 24))
    assert [s["_stream"]["stats"]["padded_short"] for s in full] == list(
        itertools.accumulate(s["key"] not in {"k00", "k03", "k06", "k09"} for s in full)
    )
    assert sum("is padded (padded_short)" in m for m in caplog.messages) == 1
    tracker = StreamTracker()
    tracker.update(full[:10])
    assert tracker.stats().metrics() == {"data/padded_short": full[9]["_stream"]["stats"]["padded_short"]}
    resumed = stream()
    resumed.load_state_dict(tracker.state_dict())
    rest = list(itertools.islice(resumed.iter_worker(0, num_workers=1), 14))
    assert rest[-1]["_stream"]["stats"] == full[-1]["_stream"]["stats"]
