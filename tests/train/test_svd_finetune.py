"""Finetuning from a released SVD file for real (experiment=svd_finetune, tiny sizes): a file with the official
layout and random weights, a short run on the demo shards, then what the export, the optimizer and the EMA hold."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

import pytest
import torch

from models.checkpoints import CheckpointSizes, OfficialCheckpointModel, load_state_dict, save_state_dict
from models.checkpoints.inflation import is_temporal_unet_key
from models.vae import TemporalAutoencoder
from train.builders import autoencoder_spec, clip_arch, unet_spec
from train.checkpointing import list_checkpoints
from train.export import load_export
from train.run import run

from .conftest import compose_train, train_subprocess

U = "model.diffusion_model."
# SVD's cross-attention context is one token (the CLIP image embedding): softmax over one key is 1 whatever the
# query, so norm2 / to_q / to_k of every cross-attention get no gradient and keep their values (as in the real SVD).
ONE_KEY_ATTENTION = (".norm2.", ".attn2.to_q.", ".attn2.to_k.")


def _moved(export: dict, state: dict, keys: list[str]) -> list[str]:
    """The keys whose exported value differs from the file's; each one must have a gradient."""
    moved = [k for k in keys if not torch.equal(export[k], state[k])]
    assert moved == [k for k in keys if not any(p in k for p in ONE_KEY_ATTENTION)]
    return moved


def _overrides(root: Path, shards: Path, checkpoint: Path | str, *extra: str) -> list[str]:
    # The full experiment on the tiny model and the demo clips: 32x32, 4 frames, batch 2, 2 steps.
    return [
        "experiment=svd_finetune",
        "model=tiny",
        "data=demo",
        "trainer=cpu",
        "logger=csv",
        f"stage.init.path={checkpoint}",
        f"paths.root={root}",
        f"paths.data_root={shards}",
        "stage.height=32",
        "stage.width=32",
        "stage.num_frames=4",
        "stage.max_steps=2",
        "stage.optim.lr=1e-3",
        "data.batch_size=2",
        "data.shuffle_buffer=4",
        "trainer.checkpoint_every_n_steps=2",
        "trainer.progress_bar=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def released(tmp_path_factory, demo_shards) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny svd.safetensors: the official key layout at the sizes of model=tiny, random non-zero weights, and
    without the keys the released files leave out (ABSENT_OK), as the real file."""
    cfg = compose_train(_overrides(Path("unused"), demo_shards, "unused"))
    sizes = CheckpointSizes(unet=unet_spec(cfg), autoencoder=autoencoder_spec(cfg), clip_arch=clip_arch(cfg))
    torch.manual_seed(0)
    model = OfficialCheckpointModel("svd", sizes=sizes)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():  # zero-initialised layers too, so that any update shows
            param.add_(torch.randn(param.shape, generator=g) * 0.02)
    state = {k: v.clone() for k, v in model.state_dict().items() if not model.absent_ok(k)}
    path = tmp_path_factory.mktemp("released") / "svd.safetensors"
    save_state_dict(state, path)
    return path, state


def _finetune(tmp_path: Path, shards: Path, checkpoint: Path, layers: str) -> tuple[dict, dict]:
    """Train; return the export and the last training checkpoint."""
    assert run(compose_train(_overrides(tmp_path, shards, checkpoint, f"stage.trainable_layers={layers}"))) == 0
    stage = tmp_path / "default" / "img2vid_finetune"
    export = load_state_dict(stage / "export" / "model.safetensors")
    return export, torch.load(list_checkpoints(stage / "checkpoints")[-1], weights_only=True)


def _optimized_and_ema(checkpoint: dict) -> tuple[int, set[str]]:
    """(number of tensors the optimizer updates, names of the EMA's shadow weights)."""
    (optimizer,) = checkpoint["optimizer_states"]
    assert len(optimizer["state"]) == sum(len(g["params"]) for g in optimizer["param_groups"])
    ema = {k.removeprefix("ema.").replace("__", ".") for k in checkpoint["state_dict"] if k.startswith("ema.")}
    return len(optimizer["state"]), ema - {"num_updates"}


def test_temporal_finetune_changes_only_the_temporal_unet_layers(released, demo_shards, tmp_path, caplog):
    path, state = released
    with caplog.at_level(logging.INFO, logger="train.module"):
        export, checkpoint = _finetune(tmp_path, demo_shards, path, "temporal")
    temporal = [k for k in state if k.startswith(U) and is_temporal_unet_key(k.removeprefix(U))]
    assert temporal and any(k.startswith(U) and k not in temporal for k in state)

    # Spatial UNet, VAE (with its temporal decoder) and conditioner: the file's values, bit for bit.
    for key in state.keys() - set(temporal):
        assert torch.equal(export[key], state[key]), key
    assert _moved(export, state, temporal)  # every temporal tensor with a gradient trained

    optimized, ema = _optimized_and_ema(checkpoint)
    assert optimized == len(temporal) and ema == set(temporal)
    millions = sum(state[k].numel() for k in temporal) / 1e6
    assert f"trainable: {len(temporal)} of " in caplog.text and f"{millions:.2f}M of " in caplog.text
    assert "stage.trainable_layers=temporal" in caplog.text

    # The export samples like any I2V export: the SVD VAE with its temporal decoder, the stage's size.
    loaded = load_export(tmp_path / "default" / "img2vid_finetune" / "export")
    assert isinstance(loaded.model.first_stage, TemporalAutoencoder)
    assert (loaded.task, loaded.num_frames, loaded.height, loaded.width) == ("i2v", 4, 32, 32)


def test_full_finetune_trains_the_whole_unet_and_keeps_the_vae_and_conditioner(released, demo_shards, tmp_path):
    path, state = released
    export, checkpoint = _finetune(tmp_path, demo_shards, path, "all")
    unet = [k for k in state if k.startswith(U)]
    assert any(not is_temporal_unet_key(k) for k in _moved(export, state, unet))  # spatial layers move too
    for key in state.keys() - set(unet):
        assert torch.equal(export[key], state[key]), key
    optimized, ema = _optimized_and_ema(checkpoint)
    assert optimized == len(unet) and ema == set(unet)


@pytest.mark.processes
def test_temporal_finetune_under_ddp_from_the_command_line(released, demo_shards, tmp_path):
    """Two DDP processes (gloo): the frozen parameters are outside DDP's gradient buckets (no
    find_unused_parameters needed), and the start-up log says what trains."""
    path, state = released
    ddp = ["strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "stage.trainable_layers=temporal"]
    proc = train_subprocess(_overrides(tmp_path, demo_shards, path, *ddp), start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a hung rank must not outlive the test
    assert proc.returncode == 0, out
    temporal = [k for k in state if k.startswith(U) and is_temporal_unet_key(k.removeprefix(U))]
    assert f"trainable: {len(temporal)} of " in out
    export = load_state_dict(tmp_path / "default" / "img2vid_finetune" / "export" / "model.safetensors")
    for key in state.keys() - set(temporal):
        assert torch.equal(export[key], state[key]), key
    assert _moved(export, state, temporal)
