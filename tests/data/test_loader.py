"""Demo shards -> real decode -> ShardStream -> DataLoader with 2 workers: batches, skips and counters."""

from __future__ import annotations

import json

import pytest
import torch

from data.demo_data import clip_sample, write_demo_dataset, write_tar_shard
from data.loader import DatasetConfig, build_dataloader, build_stream, collate_samples
from data.sources import SourceSpec
from data.stream import StreamConfig
from data.stream_state import StreamTracker
from data.video_decode import ClipSpec

SIZE = (48, 64)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    manifest = write_demo_dataset(out, seed=3, num_raw_videos=0, num_clips=6, num_images=6, samples_per_shard=3)
    good = clip_sample(3, 99, fps=24.0, size=(64, 48), key="bad000000")
    bad_members = {
        "bad000000.mp4": good["bad000000.mp4"][: len(good["bad000000.mp4"]) // 2],  # truncated mp4
        "bad000000.json": good["bad000000.json"],
        "bad000001.mp4": good["bad000000.mp4"],
        "bad000001.json": b"{not json",
        "bad000002.mp4": b"\x00" * 1000,  # not a video at all
        "bad000002.json": json.dumps({"caption": "zeros"}).encode(),
    }
    write_tar_shard(out / "clips" / "bad.tar", bad_members)
    return out, manifest


def _config(urls: list[str], *, passes: int = 1) -> DatasetConfig:
    return DatasetConfig(
        sources=[SourceSpec(urls=urls)],
        clip=ClipSpec(num_frames=4, target_fps=12.0, size=SIZE, start="random", crop="random"),
        stream=StreamConfig(seed=1, shuffle_buffer=4, passes=passes),
    )


def test_clips_stream_through_two_workers_and_bad_samples_are_counted(demo):
    out, manifest = demo
    # Two passes: skip counters travel on yielded samples, so the first pass's skips are all reported by the
    # samples of the second pass (a finite stream's trailing skips only reach its worker's log).
    config = _config([str(out / "clips" / "*.tar")], passes=2)
    loader = build_dataloader(build_stream(config), batch_size=2, num_workers=2)
    tracker, keys = StreamTracker(), []
    for batch in loader:
        assert batch["frames"].shape[1:] == (4, 3, *SIZE)
        assert torch.all(batch["image_only_indicator"] == 0)
        assert batch["fps_id"].dtype == torch.long and torch.all(batch["fps_id"] == 11)  # 24 fps / stride 2 - 1
        assert all(batch["caption"])
        tracker.update(batch["_stream"])
        keys += batch["key"]
    assert sorted(keys) == sorted(2 * sorted(set(keys))) and len(set(keys)) == manifest["counts"]["clips"]
    skipped = tracker.stats().nonzero_skips()
    assert set(skipped) == {"corrupt_video", "invalid_json"}
    assert 2 <= skipped["corrupt_video"] <= 4 and 1 <= skipped["invalid_json"] <= 2


def test_the_same_seed_gives_the_same_batches(demo):
    out, _ = demo
    config = _config([str(out / "clips" / "*.tar")])

    def run() -> list[torch.Tensor]:
        return [b["frames"] for b in build_dataloader(build_stream(config), batch_size=2, num_workers=2)]

    first, second = run(), run()
    assert len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_images_come_as_one_frame_clips(demo):
    out, manifest = demo
    batches = list(
        build_dataloader(build_stream(_config([str(out / "images" / "*.tar")])), batch_size=3, num_workers=0)
    )
    assert sum(len(b["key"]) for b in batches) == manifest["counts"]["images"]
    for batch in batches:
        assert batch["frames"].shape[1:] == (1, 3, *SIZE)
        assert torch.all(batch["image_only_indicator"] == 1)


def test_collate_refuses_mixed_frame_counts(demo):
    out, _ = demo
    stream = build_stream(_config([str(out / "clips" / "0*.tar"), str(out / "images" / "*.tar")]))
    samples = list(stream)
    video = next(s for s in samples if s["frames"].shape[0] == 4)
    image = next(s for s in samples if s["frames"].shape[0] == 1)
    with pytest.raises(ValueError, match="mixes clips"):
        collate_samples([video, image])


def test_exact_resume_with_real_decoding_and_two_workers(demo):
    """Uninterrupted vs stopped after k batches and resumed from the tracker state: identical continuation."""
    import itertools

    out, _ = demo
    config = _config([str(out / "clips" / "*.tar")], passes=None)  # cycles, as in training

    def batches(state=None, *, take: int):
        stream = build_stream(config, rank=0, world_size=1)
        if state is not None:
            stream.load_state_dict(state)
        return list(itertools.islice(build_dataloader(stream, batch_size=2, num_workers=2), take))

    full = batches(take=9)
    tracker = StreamTracker()
    for batch in full[:5]:
        tracker.update(batch["_stream"])
    rest = batches(tracker.state_dict(), take=4)
    for a, b in zip(rest, full[5:], strict=True):
        assert a["key"] == b["key"]
        assert torch.equal(a["frames"], b["frames"])  # same clip windows and crops: the decode rng resumes too


def test_resident_memory_stays_flat_over_many_real_decodes(demo):
    import gc
    import os

    out, _ = demo
    config = _config([str(out / "clips" / "*.tar")], passes=None)
    stream = build_stream(config, rank=0, world_size=1)
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    samples = stream.iter_worker(0, num_workers=1)
    for _ in range(300):  # warm-up: allocator pools, decoder libraries
        next(samples)
    gc.collect()
    before = rss()
    for _ in range(2000):
        next(samples)
    gc.collect()
    growth = rss() - before
    assert growth < 24 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 2000 decodes"


@pytest.mark.parametrize("on_short", ["pad", "skip"])
def test_a_short_video_is_counted_as_padded_or_skipped(make_mp4, tmp_path, on_short):
    """on_short="pad" (the demo's setting) trains on a 1-frame video as a static clip: counted as padded_short, which
    reaches the trainer's metrics as data/padded_short; on_short="skip" skips it as too_few_frames."""
    members = {}
    for i in range(4):  # v1 has one frame; the others 40, plenty for 4 frames at stride 2
        members[f"v{i}.mp4"] = make_mp4(num_frames=1 if i == 1 else 40)
        members[f"v{i}.json"] = json.dumps({"caption": f"video {i}"}).encode()
    write_tar_shard(tmp_path / "s.tar", members)  # members in name order: v1 comes before the last sample
    config = DatasetConfig(
        sources=[SourceSpec(urls=[str(tmp_path / "s.tar")])],
        clip=ClipSpec(num_frames=4, target_fps=12.0, size=SIZE, start="center", on_short=on_short),
        stream=StreamConfig(seed=0, shuffle_buffer=0, passes=1),
    )
    tracker, static = StreamTracker(), []
    for batch in build_dataloader(build_stream(config, rank=0, world_size=1), batch_size=2, num_workers=0):
        tracker.update(batch["_stream"])
        static += [k for k, f in zip(batch["key"], batch["frames"], strict=True) if bool((f == f[0]).all())]
    stats = tracker.stats()
    if on_short == "pad":
        assert static == ["v1"] and stats.samples_yielded == 4
        assert stats.padded == {"padded_short": len(static)} and stats.nonzero_skips() == {}
        assert stats.metrics() == {"data/padded_short": 1}
    else:
        assert static == [] and stats.samples_yielded == 3
        assert stats.nonzero_skips() == {"too_few_frames": 1} and stats.nonzero_padded() == {}
        assert stats.metrics() == {"data/skipped_too_few_frames": 1}
