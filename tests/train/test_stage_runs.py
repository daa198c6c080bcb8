"""Real stage runs on demo shards (tiny sizes): hand-off between stages, exports, non-finite losses, bad inits."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from models.checkpoints import load_state_dict
from train.checkpointing import list_checkpoints
from train.export import load_export
from train.module import read_metrics
from train.run import run

from .conftest import NONFINITE_GRAD_RUN, assert_nonfinite_grad_step_skipped, compose_train


def _run(overrides: list[str]) -> int:
    return run(compose_train(overrides))


def test_stages_hand_off_their_exports(stage_overrides, tmp_path, caplog):
    root = tmp_path / "runs" / "demo"
    assert _run(stage_overrides("autoencoder", "stage.max_steps=2")) == 0
    ae = load_state_dict(root / "autoencoder" / "export" / "model.safetensors")
    assert ae and all(k.startswith("first_stage_model.") for k in ae)

    assert _run(stage_overrides("temporal_decoder", "stage.max_steps=2")) == 0
    temporal = load_state_dict(root / "temporal_decoder" / "export" / "model.safetensors")
    assert any(".time_stack." in k for k in temporal) and "first_stage_model.quant_conv.weight" in temporal
    for key, value in ae.items():  # the encoder stays the autoencoder's (frozen); the decoder trains
        if key.startswith(("first_stage_model.encoder.", "first_stage_model.quant_conv.")):
            torch.testing.assert_close(temporal[key], value, rtol=0, atol=0)

    assert _run(stage_overrides("image_pretrain", "stage.max_steps=2")) == 0
    image = load_state_dict(root / "image_pretrain" / "export" / "model.safetensors")
    for key, value in ae.items():  # the VAE came from the autoencoder stage and stayed frozen
        torch.testing.assert_close(image[key], value, rtol=0, atol=0)
    meta = json.loads((root / "image_pretrain" / "export" / "export.json").read_text())
    assert meta["stage"] == "image_pretrain" and meta["task"] == "t2i" and meta["step"] == 2

    with caplog.at_level(logging.INFO, logger="train.init_weights"):
        assert _run(stage_overrides("video_pretrain", "stage.max_steps=2")) == 0
    assert "temporal" in caplog.text  # inflation I -> II is reported
    video = load_export(root / "video_pretrain" / "export")
    assert video.task == "t2v" and video.model.unet.spec.is_video and video.num_frames == 4

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train.init_weights"):
        assert _run(stage_overrides("img2vid_finetune", "stage.max_steps=2")) == 0
    assert "widened" in caplog.text and "input_blocks.0.0.weight" in caplog.text  # 4 -> 8 input channels
    i2v = load_export(root / "img2vid_finetune" / "export")
    assert i2v.task == "i2v" and i2v.model.unet.spec.in_channels == 8


def test_a_missing_init_names_the_path_and_the_stage(stage_overrides):
    with pytest.raises(ValueError, match=r"video_pretrain/export.*Stage 'video_pretrain' writes it"):
        _run(stage_overrides("video_finetune", "stage.max_steps=1"))


def test_an_init_path_that_does_not_exist_is_named(stage_overrides, tmp_path):
    with pytest.raises(ValueError, match="no such checkpoint"):
        _run(stage_overrides("image_pretrain", f"stage.init.path={tmp_path}/nope.safetensors"))


def _scratch(stage_overrides, *extra: str) -> list[str]:
    # A video stage from scratch (no previous export): every component as built.
    return stage_overrides(
        "video_pretrain", "stage.init.from_stage=null", "stage.init.keep=[unet,first_stage,conditioner]", *extra
    )


def test_a_nonfinite_loss_skips_the_step_and_is_counted(stage_overrides, tmp_path):
    assert _run(_scratch(stage_overrides, "stage.max_steps=3", "debug.nonfinite_loss_at=[1]")) == 0
    rows = read_metrics(tmp_path / "runs" / "demo" / "video_pretrain" / "metrics.jsonl")
    assert [r["skipped"] for r in rows] == [False, True, False, False]
    assert [r["step"] for r in rows] == [1, 1, 2, 3]  # the skipped batch made no optimizer step
    assert rows[-1]["train/nonfinite_skipped"] == 1.0


def test_a_nonfinite_gradient_skips_the_step_and_advances_nothing(stage_overrides, tmp_path):
    assert _run(_scratch(stage_overrides, *NONFINITE_GRAD_RUN)) == 0
    assert_nonfinite_grad_step_skipped(tmp_path / "runs" / "demo" / "video_pretrain")


def test_k_nonfinite_losses_in_a_row_stop_the_run_with_a_checkpoint(stage_overrides, tmp_path, capsys):
    overrides = _scratch(
        stage_overrides, "stage.max_steps=10", "debug.nonfinite_loss_at=[2,3,4]", "trainer.max_consecutive_nonfinite=3"
    )
    assert _run(overrides) == 1
    assert "3 non-finite losses in a row" in capsys.readouterr().err
    folder = tmp_path / "runs" / "demo" / "video_pretrain"
    saved = list((folder / "checkpoints").glob("nonfinite_step_*.ckpt"))
    assert len(saved) == 1
    state = torch.load(saved[0], weights_only=True)
    assert state["global_step"] == 2 and state["stage_loop"]["batches_seen"] == 5
    assert not (folder / "export").exists()  # a stopped run exports nothing
    # A resume from that checkpoint continues from the weights before the bad batches.
    assert list_checkpoints(folder / "checkpoints")  # the periodic one at step 2 is there too


def test_padded_short_clips_reach_the_metrics(stage_overrides, tmp_path):
    """With on_short=pad (the demo's) a clip shorter than the 4 frames asked for is trained on padded, and counted:
    at 0.5 fps 4 frames span 145 source frames (6 s at 24 fps), more than the shorter demo clips hold."""
    overrides = _scratch(stage_overrides, "stage.max_steps=2", "data.target_fps=0.5", "data.on_short=pad")
    assert _run(overrides) == 0
    rows = read_metrics(tmp_path / "runs" / "demo" / "video_pretrain" / "metrics.jsonl")
    assert rows[-1]["data/padded_short"] >= 1
