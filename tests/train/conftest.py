"""Fixtures for end-to-end stage runs: small demo shards and a composer of ``python -m train`` configs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from data.demo_data import write_demo_dataset
from train.config import register_configs

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"

# Tiny runs: 32x32 frames (8x8 latents with the tiny f4 VAE), 4 frames, batch 2, checkpoints every 2 steps.
TINY_RUN = (
    "experiment=demo",
    "stage.height=32",
    "stage.width=32",
    "data.batch_size=2",
    "data.shuffle_buffer=4",
    "trainer.checkpoint_every_n_steps=2",
    "trainer.log_every_n_steps=1",
    "trainer.progress_bar=false",
    "stage.optim.warmup_steps=2",
)


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_data")
    write_demo_dataset(out, seed=3, num_raw_videos=0, num_clips=6, num_images=12, samples_per_shard=3, size=(64, 48))
    return out


def tiny_stage_overrides(stage: str, *extra: str, root: Path, data_root: Path, frames: int = 4) -> list[str]:
    """The overrides of a ``TINY_RUN`` of ``stage`` writing under ``root`` (``paths.root``), reading ``data_root``."""
    video = stage not in ("autoencoder", "image_pretrain")
    return [
        f"stage={stage}",
        *TINY_RUN,
        f"paths.root={root}",
        f"paths.data_root={data_root}",
        *([f"stage.num_frames={frames}"] if video else []),
        *extra,
    ]


@pytest.fixture
def stage_overrides(demo_shards, tmp_path):
    def make(stage: str, *extra: str, frames: int = 4) -> list[str]:
        return tiny_stage_overrides(stage, *extra, root=tmp_path / "runs", data_root=demo_shards, frames=frames)

    return make


def compose_train(overrides: list[str]) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


def assert_same_export_weights(a: Path, b: Path) -> None:
    """Bitwise-equal tensors in two exports' model.safetensors (the files differ in their run ids)."""
    from models.checkpoints import load_state_dict

    state_a, state_b = load_state_dict(Path(a) / "model.safetensors"), load_state_dict(Path(b) / "model.safetensors")
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        assert value.dtype == state_b[key].dtype and torch.equal(value, state_b[key]), key


# A NaN gradient at batch 1 of a 3-step run; the lr warms up over 10 steps, so every applied step changes it.
NONFINITE_GRAD_RUN = ("stage.max_steps=3", "stage.optim.warmup_steps=10", "debug.nonfinite_grad_at=[1]")


def assert_nonfinite_grad_step_skipped(folder: Path) -> None:
    """The stage ``folder`` of a ``NONFINITE_GRAD_RUN``: batch 1 skipped and counted; its finite loss logged; the
    optimizer-step count, the lr schedule and the EMA did not advance on it."""
    from train.checkpointing import list_checkpoints
    from train.module import read_metrics

    rows = read_metrics(folder / "metrics.jsonl")
    assert [r["skipped"] for r in rows] == [False, True, False, False]
    assert [r["step"] for r in rows] == [1, 1, 2, 3]
    assert all(math.isfinite(r["train/loss"]) for r in rows)  # the loss was finite; the gradient was not
    assert rows[-1]["train/nonfinite_skipped"] == 1.0
    lrs = [r["train/lr"] for r in rows]
    assert lrs[1] == lrs[0] and lrs[0] < lrs[2] < lrs[3], lrs
    last = list_checkpoints(folder / "checkpoints")[-1]
    if last.is_file():  # a DeepSpeed checkpoint is a folder; its EMA is checked by its test
        state = torch.load(last, weights_only=True)
        assert state["global_step"] == 3 and int(state["state_dict"]["ema.num_updates"]) == 3


def train_subprocess(overrides: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen(
        [sys.executable, "-m", "train", *overrides],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )
