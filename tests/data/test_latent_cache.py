"""The latent cache end to end: demo shards -> scripts/cache_latents.py (tiny random VAE) -> cached shards ->
decode_cached_sample / the stream and collate, compared with the uncached path and a direct VAE encode."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from data.captions import CaptionPicker
from data.demo_data import clip_sample, image_sample, write_demo_dataset, write_tar_shard
from data.errors import BadSample
from data.latent_cache import LATENT_MEMBER, decode_cached_sample, pack_latents, unpack_latents
from data.loader import DatasetConfig, build_dataloader, build_stream, collate_samples
from data.micro_cond import MicroCondConfig
from data.sample_decode import decode_sample
from data.shard_writer import done_marker, output_names
from data.sources import SourceSpec, iter_shard_records
from data.stream import StreamConfig
from data.transforms import to_model_range
from data.video_decode import ClipSpec
from tests.conftest import load_script

SIZE = (32, 48)  # (H, W): latents (4, 6) with the tiny VAE's downsampling of 2 -> (16, 24)
NUM_FRAMES, TARGET_FPS, SEED = 3, 8.0, 5
CLIP = ClipSpec(num_frames=NUM_FRAMES, target_fps=TARGET_FPS, size=SIZE, start="center", crop="center")


def _script() -> ModuleType:
    return load_script("cache_latents")


def _run(src: Path | list[str], out: Path, *extra: str) -> None:
    shards = [str(src / "*.tar")] if isinstance(src, Path) else src
    argv = ["--shards", *shards, "--out", str(out), "--vae-random-tiny", "--seed", str(SEED), "--size", "32x48"]
    argv += ["--num-frames", str(NUM_FRAMES), "--target-fps", str(TARGET_FPS), "--batch-size", "4"]
    assert _script().main([*argv, *extra]) == 0


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """clips/00000.tar, 00001.tar (2 clips each) and bad.tar (a truncated mp4, a non-video, one good clip)."""
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, seed=2, num_raw_videos=0, num_clips=4, num_images=0, samples_per_shard=2, size=(64, 48))
    good = clip_sample(2, 99, fps=24.0, size=(64, 48), key="bad000002")
    members = {
        "bad000000.mp4": good["bad000002.mp4"][: len(good["bad000002.mp4"]) // 2],
        "bad000000.json": good["bad000002.json"],
        "bad000001.mp4": b"\x00" * 1000,
        "bad000001.json": b"{}",
        **good,
    }
    write_tar_shard(out / "clips" / "bad.tar", members)
    return out / "clips"


@pytest.fixture(scope="module")
def cached(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache")
    _run(source, out, "--clip-model", "tiny-random")
    return out


def _records(path: Path) -> list[dict]:
    return list(iter_shard_records(str(path)))


def test_cached_shards_hold_json_txt_and_latents_only(source, cached):
    assert sorted(p.name for p in cached.iterdir()) == sorted(
        [n for name in ("00000.tar", "00001.tar", "bad.tar") for n in (name, name + ".done")]
    )
    for name in ("00000.tar", "00001.tar"):
        records = _records(cached / name)
        assert [r["__key__"] for r in records] == [r["__key__"] for r in _records(source / name)]
        for record in records:
            assert sorted(k for k in record if not k.startswith("__")) == ["json", LATENT_MEMBER, "txt"]
            info = json.loads(record["json"])["latent_cache"]
            assert info["clip"] == {
                "num_frames": 3,
                "target_fps": 8.0,
                "size": [32, 48],
                "start": "center",
                "crop": "center",
            }
            assert info["scale_factor_applied"] is False and info["vae"]["source"] == "random-tiny"
            assert info["stride"] == 3 and len(info["frame_indices"]) == NUM_FRAMES
    assert [r["__key__"] for r in _records(cached / "bad.tar")] == ["bad000002"]


def test_decode_cached_sample_matches_uncached_centre_clip_and_direct_encode(source, cached):
    micro, captions = MicroCondConfig(), CaptionPicker()
    source_records = {r["__key__"]: r for r in _records(source / "00000.tar")}
    vae = _script().build_random_tiny_vae(SEED)
    for record in _records(cached / "00000.tar"):
        rng = np.random.default_rng(0)
        sample = decode_cached_sample(record, captions=captions, micro=micro, rng=rng, clip=CLIP)
        moments = sample["latent_moments"]
        assert moments.dtype == torch.float16 and moments.shape == (NUM_FRAMES, 8, 16, 24)
        assert sample["cond_frame"].dtype == torch.uint8 and sample["cond_frame"].shape == (3, *SIZE)
        assert sample["clip_image_embedding"].shape == (1, 32) and "frames" not in sample
        assert torch.equal(sample["image_only_indicator"], torch.zeros(NUM_FRAMES))
        uncached = decode_sample(
            source_records[record["__key__"]], clip=CLIP, captions=captions, micro=micro, rng=np.random.default_rng(0)
        )
        assert (sample["fps_id"], sample["motion_bucket_id"]) == (uncached["fps_id"], uncached["motion_bucket_id"])
        info = json.loads(record["json"])["latent_cache"]
        assert (info["fps_id"], info["motion_bucket_id"]) == (uncached["fps_id"], uncached["motion_bucket_id"])
        assert sample["caption"] == uncached["caption"]  # same rng, same draw
        assert torch.equal(sample["cond_frame"], uncached["frames"][0])
        with torch.no_grad():
            posterior = vae.encode(to_model_range(uncached["frames"]))
        torch.testing.assert_close(moments[:, :4].float(), posterior.mean, atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(moments[:, 4:].float(), posterior.logvar, atol=2e-2, rtol=2e-3)


def test_decode_sample_dispatches_and_refuses_a_mismatched_clip_spec(cached):
    record = _records(cached / "00001.tar")[0]
    kw = {"captions": CaptionPicker(), "micro": MicroCondConfig(), "rng": np.random.default_rng(0)}
    sample = decode_sample(record, clip=CLIP, **kw)
    assert sample["latent_moments"].shape[0] == NUM_FRAMES
    with pytest.raises(ValueError, match="--num-frames"):
        decode_sample(record, clip=ClipSpec(num_frames=5, target_fps=TARGET_FPS, size=SIZE), **kw)
    broken = {**record, LATENT_MEMBER: record[LATENT_MEMBER][:50]}
    with pytest.raises(BadSample, match="corrupt_latents"):
        decode_sample(broken, clip=CLIP, **kw)
    meta = json.loads(record["json"])
    meta["latent_cache"]["num_padded"] = 2  # a short video, padded when it was cached: counted like a decoded one
    counters: Counter[str] = Counter()
    decode_sample({**record, "json": json.dumps(meta).encode()}, clip=CLIP, counters=counters, **kw)
    assert counters["padded_short"] == 1
    decode_sample(record, clip=CLIP, counters=counters, **kw)
    assert counters["padded_short"] == 1


def test_rerun_skips_done_shards_and_redoes_a_shard_without_marker(source, cached, capsys, tmp_path):
    out = tmp_path / "cache"
    _run(source, out)
    first = _summary(capsys)
    assert first["samples_written"] == 5 and first["shards_done"] == 3
    assert first["skipped"] == {"corrupt_video": 2}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    os.remove(done_marker(out / "00001.tar"))  # as if killed after the shard's rename, before its marker
    _run(source, out)
    second = _summary(capsys)
    assert second["shards_already_done"] == 2 and second["shards_done"] == 1 and second["samples_written"] == 2
    assert (out / "00000.tar").stat().st_mtime_ns == mtimes["00000.tar"]
    assert (out / "bad.tar").stat().st_mtime_ns == mtimes["bad.tar"]
    assert done_marker(out / "00001.tar").is_file()
    assert not list(out.glob(".*tmp"))  # no temporary files left


def test_decoding_workers_give_the_same_records_in_the_same_order(source, cached, tmp_path):
    _run(source, tmp_path, "--clip-model", "tiny-random", "--workers", "2")
    for name in ("00000.tar", "00001.tar", "bad.tar"):
        # Compare tensors, not bytes: safetensors may order its json header differently from run to run.
        for new, old in zip(_records(tmp_path / name), _records(cached / name), strict=True):
            assert (new["__key__"], new["json"], new["txt"]) == (old["__key__"], old["json"], old["txt"])
            new_t, old_t = unpack_latents(new[LATENT_MEMBER]), unpack_latents(old[LATENT_MEMBER])
            assert new_t.keys() == old_t.keys() and all(torch.equal(new_t[k], old_t[k]) for k in new_t)


def test_parts_split_the_shards_and_a_missing_shard_is_counted_and_retried(source, tmp_path, capsys):
    shards = [str(source / "00000.tar"), str(source / "00001.tar"), str(source / "00009.tar")]  # the last is missing
    _run(shards, tmp_path, "--part", "0/2")
    summary = _summary(capsys)
    assert (summary["shards"], summary["shards_done"], summary["skipped"]) == (2, 1, {"missing_shard": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar", "00000.tar.done"]
    _run(shards, tmp_path, "--part", "1/2")
    assert _summary(capsys)["shards_done"] == 1 and done_marker(tmp_path / "00001.tar").is_file()


def test_images_are_cached_as_one_frame_clips(tmp_path, capsys):
    src = tmp_path / "images"
    write_tar_shard(
        src / "00000.tar", {**image_sample(0, 0, size=(64, 48), key="a"), **image_sample(0, 1, size=(64, 48), key="b")}
    )
    _run(src, tmp_path / "cache")
    assert _summary(capsys)["samples_written"] == 2
    record = _records(tmp_path / "cache" / "00000.tar")[0]
    micro = MicroCondConfig()
    sample = decode_cached_sample(record, captions=CaptionPicker(), micro=micro, rng=np.random.default_rng(0))
    assert sample["latent_moments"].shape == (1, 8, 16, 24) and torch.equal(
        sample["image_only_indicator"], torch.ones(1)
    )
    assert (sample["fps_id"], sample["motion_bucket_id"]) == (micro.default_fps_id, micro.default_motion_bucket)
    assert "clip_image_embedding" not in sample


def test_stream_over_cached_shards_collates_latents(cached):
    config = DatasetConfig(
        sources=[SourceSpec(urls=[str(cached / "*.tar")])],
        clip=CLIP,
        stream=StreamConfig(seed=0, shuffle_buffer=2, passes=1),
    )
    batches = list(build_dataloader(build_stream(config), batch_size=2, num_workers=0))
    assert sum(len(b["key"]) for b in batches) == 5
    batch = batches[0]
    assert batch["latent_moments"].shape == (2, NUM_FRAMES, 8, 16, 24)
    assert batch["cond_frame"].shape == (2, 3, *SIZE) and batch["clip_image_embedding"].shape == (2, 1, 32)
    assert batch["image_only_indicator"].shape == (2, NUM_FRAMES) and "frames" not in batch


def test_collate_refuses_mixing_cached_and_decoded_samples():
    def sample(**tensors):
        return {
            "image_only_indicator": torch.zeros(2),
            "fps_id": 6,
            "motion_bucket_id": 1,
            "caption": "",
            "key": "k",
            "shard": "s",
            **tensors,
        }

    cached = sample(latent_moments=torch.zeros(2, 8, 4, 4), cond_frame=torch.zeros(3, 8, 8, dtype=torch.uint8))
    decoded = sample(frames=torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="cannot mix cached-latent and decoded"):
        collate_samples([cached, decoded])
    assert collate_samples([cached, cached])["latent_moments"].shape == (2, 2, 8, 4, 4)


def test_pack_round_trip_and_output_names(tmp_path):
    moments = torch.randn(2, 8, 3, 3)
    frame = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    tensors = unpack_latents(pack_latents(moments=moments, cond_frame=frame))
    assert tensors["moments"].dtype == torch.float16 and torch.equal(tensors["cond_frame"], frame)
    assert output_names([str(tmp_path / "a" / "0.tar"), str(tmp_path / "b" / "0.tar")]) == ["a/0.tar", "b/0.tar"]
    assert output_names(["pipe:aws s3 cp s3://b/x/007.tar -"]) == ["007.tar"]
    with pytest.raises(ValueError, match="both be written"):
        output_names(["pipe:cat a/0.tar", "pipe:cat b/0.tar"])
