"""The whole curation on generated raw videos: clip shards the training stream reads, annotations, subsets and the
report; a killed run re-run ends byte-identical to an uninterrupted one; the SLURM-array split gives the same."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.curation.camera_motion import FIELDS, LABELS
from data.curation.config import CurateConfig, compose_config
from data.curation.runner import run
from data.demo_data import raw_video_sample, write_shards

ROOT = Path(__file__).resolve().parents[3]
# Small but real: tiny random CLIP, no captioner, percentile filters over the motion/text signals for "pretrain".
TINY = [
    "models=tiny",
    "annotate.clip.aesthetic_head=null",
    "filters@subsets.pretrain.filters=motion_text",
    "filters@subsets.high_quality.filters=motion_text",
]


def write_raw(folder: Path, count: int, *, seed: int = 0, size: tuple[int, int] = (128, 96)) -> Path:
    write_shards(
        folder, lambda i, k: raw_video_sample(seed, i, fps=24.0, size=size, key=k), count=count, samples_per_shard=1
    )
    return folder


def curate_config(raw: Path | str, out: Path, *extra: str) -> CurateConfig:
    return compose_config([f"input={raw}", f"out={out}", *TINY, *extra])


def tree(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes (Hydra's own run logs excluded)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "hydra" not in p.relative_to(folder).parts
    }


@pytest.fixture(scope="module")
def raw_shards(tmp_path_factory) -> Path:
    return write_raw(tmp_path_factory.mktemp("raw") / "raw", 3)


@pytest.fixture(scope="module")
def curated(raw_shards, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("curated")
    result = run(curate_config(f"'{raw_shards}/{{00000..00002}}.tar'", out), progress=False)
    return out, result


def test_clips_annotations_subsets_and_report(curated, raw_shards):
    out, result = curated
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(json.dumps(result["merge"])) == summary
    assert summary["videos"] == 3 and summary["skips"] == {}
    records = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    truth = [json.loads(raw_video_sample(0, i, fps=24.0, size=(128, 96), key="k")["k.json"]) for i in range(3)]
    scenes = sum(len(t["scenes"]) for t in truth)
    # Every scene long enough becomes at least one clip; nothing spans a transition.
    assert scenes - 3 <= len(records) <= scenes + 3, (len(records), scenes)
    for r in records:
        assert r["end_s"] > r["start_s"] and r["num_frames"] > 0
        for name in ("motion_score", "text_area", "clip_similarity"):
            assert isinstance(r[name], float), (name, r)
        assert r["aesthetic"] is None  # no aesthetic head configured
        assert r["caption"]  # the raw video's caption is kept
    # The first scene of every demo raw video is static and the second fast: their clips' motion says so.
    by_video = {}
    for r in records:
        by_video.setdefault(r["video_key"], []).append(r)
    for clips in by_video.values():
        clips.sort(key=lambda r: r["start_s"])
        assert clips[0]["motion_score"] < clips[1]["motion_score"]
        assert clips[0]["camera_motion"] == "static"  # and its camera stands still
    for r in records:  # the camera fields (data/curation/camera_motion.py), in the clip json too
        assert r["camera_motion"] in LABELS and all(isinstance(r[k], float) for k in FIELDS[:3]), r
    kept = (out / "subsets" / "pretrain" / "keys.txt").read_text().split()
    assert 0 < len(kept) < len(records)
    assert summary["subsets"]["pretrain"]["kept"] == len(kept)
    assert (out / "report" / "pretrain" / "report.html").is_file()
    assert (out / "report" / "high_quality" / "report.html").is_file()


def test_the_training_stream_reads_the_curated_shards(curated):
    from data.loader import DatasetConfig, build_stream
    from data.sources import SourceSpec
    from data.stream import StreamConfig
    from data.video_decode import ClipSpec

    out, _ = curated
    shards = sorted(str(p) for p in (out / "subsets" / "pretrain" / "shards").glob("*.tar"))
    kept = set((out / "subsets" / "pretrain" / "keys.txt").read_text().split())
    cfg = DatasetConfig(
        sources=[SourceSpec(shards)],
        clip=ClipSpec(num_frames=4, size=(64, 64), start="center", on_short="pad"),
        stream=StreamConfig(passes=1, shuffle_buffer=1),
    )
    samples = list(build_stream(cfg, rank=0, world_size=1))
    assert sorted(s["key"] for s in samples) == sorted(kept)
    assert all(tuple(s["frames"].shape) == (4, 3, 64, 64) for s in samples)
    # A camera-motion LoRA set: the training filter picks the clips by their camera_motion label.
    from data.stream import MetadataFilter

    labels = {
        r["key"]: r["camera_motion"] for r in map(json.loads, (out / "annotations.jsonl").read_text().split("\n")[:-1])
    }
    static = dataclasses.replace(cfg, stream=StreamConfig(passes=1, shuffle_buffer=1, filters=[
        MetadataFilter("camera_motion", values=["static"])]))  # fmt: skip
    picked = sorted(s["key"] for s in build_stream(static, rank=0, world_size=1))
    assert picked == sorted(k for k in kept if labels[k] == "static") and picked


def _cli(raw: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "data.curation", f"input={raw}", f"out={out}", *TINY, *extra]


def test_killed_run_rerun_gives_identical_output(curated, raw_shards, tmp_path):
    reference, _ = curated
    spec = str(raw_shards)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(spec, tmp_path, "step=annotate"), cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "clips").glob("**/*.done")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list((tmp_path / "clips").glob("**/*.done"))
    assert 1 <= len(done) < 3, "the kill should land after the first unit and before the last"
    subprocess.run(_cli(spec, tmp_path), cwd=ROOT, env=env, check=True, capture_output=True)
    assert tree(tmp_path) == tree(reference)


def test_array_parts_then_merge_equal_one_run(curated, raw_shards, tmp_path):
    reference, _ = curated
    spec = raw_shards
    for part in ("0/2", "1/2"):
        run(curate_config(spec, tmp_path, "step=annotate", f"part={part}"), progress=False)
    run(curate_config(spec, tmp_path, "step=merge"), progress=False)
    assert tree(tmp_path) == tree(reference)


def test_merge_before_every_part_is_done_is_a_clear_error(raw_shards, tmp_path):
    spec = raw_shards
    run(curate_config(spec, tmp_path, "step=annotate", "part=0/2"), progress=False)
    with pytest.raises(RuntimeError, match="not annotated yet"):
        run(curate_config(spec, tmp_path, "step=merge"), progress=False)


def test_config_errors_name_the_key(raw_shards, tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="annotate.motion.fsp"):
        curate_config(raw_shards, tmp_path, "annotate.motion.fsp=2")
    with pytest.raises(ValueError, match="annotate.motion.fsp.*valid keys"):
        curate_config(raw_shards, tmp_path, "+annotate.motion.fsp=2")
    with pytest.raises(ValueError, match="aesthetic head"):
        curate_config(raw_shards, tmp_path, "filters@subsets.pretrain.filters=pretraining")
    assert curate_config(raw_shards, tmp_path, "annotate.motion.fps=2").annotate.motion.fps == 2.0
    with pytest.raises(ValueError, match="part"):
        run(curate_config(raw_shards, tmp_path, "part=3/2"), progress=False)
