"""The sample and evaluation callbacks (logger.samples / logger.evaluation) in tiny interp and mv stage runs: interp
samples from ``first.png|last.png`` pairs through train.interpolation (the end frames are the pair), mv at
``elevation``; a pair config that does not fit the task fails when the config is validated, before any folder or
model exists."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from data.demo_data import write_demo_dataset
from train.callbacks.evaluate_videos import EVAL_FILE
from train.config import validate
from train.run import run

from .conftest import compose_train, tiny_stage_overrides

FRAMES, SIZE = 5, 32
SCRATCH = ("stage.init.from_stage=null", "stage.init.keep=[unet,first_stage,conditioner]", "stage.max_steps=2")


def _png(path: Path, seed: int) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
    return path


def _callbacks(images: str, *extra: str) -> tuple[str, ...]:
    """Samples and evaluation every 2 steps (2 Euler steps, the tiny CLIP) of ``images`` (a Hydra list)."""
    return tuple(
        f"logger.{node}.{k}" for node in ("samples", "evaluation")
        for k in ("every_n_steps=2", "num_steps=2", f"images={images}", *extra)
    ) + ("logger.evaluation.clip_arch=tiny",)  # fmt: skip


def _mp4_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _check_outputs(folder: Path) -> dict:
    names = sorted(p.name for p in (folder / "samples").iterdir())
    assert names == ["step_000002_0.gif", "step_000002_0.mp4"]
    assert _mp4_frames(folder / "samples" / "step_000002_0.mp4").shape == (FRAMES, SIZE, SIZE, 3)
    rows = [json.loads(line) for line in (folder / EVAL_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [2]
    assert -1 <= rows[0]["eval/clip_image_similarity"] <= 1 and -1 <= rows[0]["eval/clip_consistency"] <= 1
    return rows[0]


def test_interp_stage_samples_and_evaluates_image_pairs(demo_shards, tmp_path):
    a, b = _png(tmp_path / "a.png", 1), _png(tmp_path / "b.png", 2)
    cfg = compose_train(
        tiny_stage_overrides(
            "frame_interpolation", *SCRATCH, *_callbacks(f'["{a}|{b}"]'),
            root=tmp_path / "runs", data_root=demo_shards, frames=FRAMES,
        )
    )  # fmt: skip
    assert run(cfg) == 0
    folder = tmp_path / "runs" / "demo" / "frame_interpolation"
    _check_outputs(folder)
    with Image.open(folder / "samples" / "step_000002_0.gif") as gif:  # the end frames are the pair (gif: 256 colours)
        first = np.asarray(gif.convert("RGB"), dtype=np.float64)
        gif.seek(FRAMES - 1)
        last = np.asarray(gif.convert("RGB"), dtype=np.float64)
    want_a, want_b = (np.asarray(Image.open(p), dtype=np.float64) for p in (a, b))
    assert np.abs(first - want_a).mean() < np.abs(first - want_b).mean()
    assert np.abs(last - want_b).mean() < np.abs(last - want_a).mean()


@pytest.mark.parametrize(
    ("stage", "images", "message"),
    [
        ("frame_interpolation", "[{a}]", r"conditions on 2 per sample: .*first.png\|last.png"),
        ("frame_interpolation", '["{a}|{a}|{a}"]', "names 3 image"),
        ("frame_interpolation", '["{a}|missing.png"]', "no image file at missing.png"),
        ("img2vid_finetune", '["{a}|{a}"]', r"conditions on 1 per sample: give one image path per entry"),
    ],
)
def test_a_bad_image_config_fails_before_training(demo_shards, tmp_path, stage, images, message):
    a = _png(tmp_path / "a.png", 1)
    root = tmp_path / "runs"
    overrides = tiny_stage_overrides(
        stage, "logger.samples.every_n_steps=2", f"logger.samples.images={images.format(a=a)}",
        root=root, data_root=demo_shards, frames=FRAMES,
    )  # fmt: skip
    with pytest.raises(ValueError, match=f"logger.samples.images entry .*{message}"):
        run(compose_train(overrides))
    assert not root.exists()  # nothing built, no stage folder


def test_mv_needs_an_elevation_to_sample(demo_shards, tmp_path):
    a = _png(tmp_path / "a.png", 1)
    cfg = compose_train(
        tiny_stage_overrides(
            "multiview", "logger.evaluation.every_n_steps=2", f"logger.evaluation.images=[{a}]",
            root=tmp_path, data_root=demo_shards, frames=FRAMES,
        )
    )  # fmt: skip
    with pytest.raises(ValueError, match="logger.evaluation.elevation is unset.*logger.evaluation.elevation=DEG"):
        validate(cfg)


def test_mv_stage_samples_and_evaluates_at_an_elevation(tmp_path):
    orbits = tmp_path / "orbits"
    write_demo_dataset(
        orbits, seed=5, num_raw_videos=0, num_clips=0, num_images=0, samples_per_shard=2, num_orbits=2,
        num_orbit_test=0, orbit_views=FRAMES, orbit_size=SIZE,
    )  # fmt: skip
    view = _png(tmp_path / "view.png", 3)
    cfg = compose_train(
        tiny_stage_overrides(
            "multiview", *SCRATCH, *_callbacks(f"[{view}]", "elevation=12.5"),
            root=tmp_path / "runs", data_root=orbits, frames=FRAMES,
        )
    )  # fmt: skip
    assert run(cfg) == 0
    _check_outputs(tmp_path / "runs" / "demo" / "multiview")
