"""A strategy added through the registry alone (one ``StrategySpec``, no other file touched) trains a real stage,
and run.py takes the clipping owner, the checkpoint plugin and the sharded-weights switch from the spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pytorch_lightning.strategies import SingleDeviceStrategy

from train.checkpointing import AtomicCheckpointIO, list_checkpoints
from train.config import validate
from train.module import read_metrics
from train.run import build_callbacks, run
from train.strategy_registry import (
    StrategyOptions,
    StrategySpec,
    get_strategy,
    register_strategy,
    strategy_names,
    unregister_strategy,
)

from .conftest import compose_train

TOY = "toy_single_device"


class RecordingCheckpointIO(AtomicCheckpointIO):
    saved: list[str] = []

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        RecordingCheckpointIO.saved.append(Path(path).name)
        super().save_checkpoint(checkpoint, path, storage_options)


def test_a_registered_toy_strategy_trains_a_stage_and_leaves_no_trace(stage_overrides, tmp_path):
    built: list[StrategyOptions] = []

    def build(options: StrategyOptions) -> SingleDeviceStrategy:
        built.append(options)
        return SingleDeviceStrategy(device=torch.device("cpu"))

    RecordingCheckpointIO.saved = []
    register_strategy(StrategySpec(TOY, build, checkpoint_io=RecordingCheckpointIO))
    overrides = stage_overrides("autoencoder", f"strategy.name={TOY}", "strategy.timeout_s=77")
    try:
        assert TOY in strategy_names()
        cfg = compose_train([*overrides, "stage.max_steps=2"])
        assert run(cfg) == 0
        with pytest.raises(ValueError, match="already registered"):
            register_strategy(StrategySpec(TOY, build))
    finally:
        unregister_strategy(TOY)

    assert len(built) == 1 and (built[0].accelerator, built[0].timeout_s) == ("cpu", 77)
    assert RecordingCheckpointIO.saved == ["step_000000002.ckpt"]  # the spec's plugin wrote the checkpoint
    folder = tmp_path / "runs" / "demo" / "autoencoder"
    assert [p.name for p in list_checkpoints(folder / "checkpoints")] == ["step_000000002.ckpt"]
    rows = read_metrics(folder / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and (folder / "export" / "model.safetensors").is_file()
    # Unregistered, the name is no valid choice any more; the built-ins are untouched.
    assert strategy_names() == ("auto", "ddp", "deepspeed_zero2", "deepspeed_zero3")
    with pytest.raises(ValueError, match=rf"strategy.name='{TOY}' is not valid; choose one of auto, ddp"):
        validate(cfg)
    with pytest.raises(ValueError, match="Unknown strategy"):
        get_strategy(TOY)


def test_callbacks_that_need_full_weights_are_left_out_under_a_sharded_spec(stage_overrides, tmp_path):
    def callback_names(strategy: str) -> list[str]:
        cfg = compose_train(
            stage_overrides("video_pretrain", f"strategy.name={strategy}", "logger.samples.every_n_steps=1")
        )
        return [type(c).__name__ for c in build_callbacks(cfg, tmp_path / strategy)]

    register_strategy(StrategySpec(TOY, lambda options: "auto", shards_weights=True))
    try:
        assert "SampleVideos" not in callback_names(TOY)
    finally:
        unregister_strategy(TOY)
    assert "SampleVideos" in callback_names("auto")
