"""Sampling a tiny LatentDiffusion per task, and the SampleVideos callback in a real (tiny) Trainer."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import av
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import WandbLogger
from torch.utils.data import DataLoader, TensorDataset

from models.conditioners import (
    ConcatTimestepEmbedderND,
    EmbedderSpec,
    FrozenOpenCLIPEmbedder,
    GeneralConditioner,
    build_tiny_sd21_text_conditioner,
    build_tiny_svd_conditioner,
    tiny_open_clip_config,
)
from models.diffusion import Denoiser, VScalingWithEDMcNoise
from models.latent_diffusion import LatentDiffusion
from models.unet import VideoUNet, tiny_unet_spec
from models.vae import AutoencoderKL, TemporalAutoencoder, tiny_autoencoder_spec
from train.callbacks import SampleVideos, log_videos
from train.config import GenerationSettings
from train.sampling import eval_mode, grid_factor, prepare_image, sample_video

T, H, W = 2, 16, 24  # the tiny grid is 4 pixels (VAE 2 x UNet 2)
FAST = dict(num_frames=T, height=H, width=W, settings=GenerationSettings(num_steps=2))


def fast(**settings) -> dict:
    """FAST with some ``GenerationSettings`` changed."""
    return {**FAST, "settings": dataclasses.replace(FAST["settings"], **settings)}


def tiny_model(task: str) -> LatentDiffusion:
    torch.manual_seed(0)
    ae = tiny_autoencoder_spec()
    if task == "i2v":
        unet = tiny_unet_spec()
        conditioner = build_tiny_svd_conditioner(encoder=AutoencoderKL(ae))
    elif task == "t2v":
        unet = tiny_unet_spec(in_channels=4, adm_in_channels=512)
        timestep = [EmbedderSpec(ConcatTimestepEmbedderND(256), k) for k in ("fps_id", "motion_bucket_id")]
        text = EmbedderSpec(FrozenOpenCLIPEmbedder(tiny_open_clip_config()), "txt", ucg_value="")
        conditioner = GeneralConditioner([text, *timestep])
    else:
        unet = tiny_unet_spec(temporal=False, in_channels=4, adm_in_channels=None)
        conditioner = build_tiny_sd21_text_conditioner()
    first_stage = AutoencoderKL(ae) if task == "t2i" else TemporalAutoencoder(ae)
    unet = VideoUNet(dataclasses.replace(unet, context_dim=32))  # the tiny OpenCLIP embeds to 32
    with torch.no_grad():  # zero-initialised layers would hide the conditions from the output
        for param in unet.parameters():
            if not param.any():
                param.normal_(0.0, 0.05)
    return LatentDiffusion(unet=unet, first_stage=first_stage, conditioner=conditioner)


@pytest.fixture(scope="module")
def i2v() -> LatentDiffusion:
    return tiny_model("i2v")


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randint(0, 256, (3, 20, 30), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


DENOISER = Denoiser(VScalingWithEDMcNoise())


def test_i2v_is_deterministic_per_seed_and_restores_train_mode(i2v, image):
    i2v.train()
    video = sample_video(i2v, DENOISER, task="i2v", image=image, **fast(seed=3))
    assert video.shape == (T, H, W, 3) and video.dtype == torch.uint8
    assert i2v.training and i2v.unet.training and not i2v.first_stage.training
    assert torch.equal(sample_video(i2v, DENOISER, task="i2v", image=image, **fast(seed=3)), video)
    assert not torch.equal(sample_video(i2v, DENOISER, task="i2v", image=image, **fast(seed=4)), video)


def test_i2v_uses_the_image_and_its_float_form_matches_uint8(i2v, image):
    as_float = image.float() / 127.5 - 1.0
    a = sample_video(i2v, DENOISER, task="i2v", image=image, **FAST)
    torch.testing.assert_close(sample_video(i2v, DENOISER, task="i2v", image=as_float, **FAST), a, rtol=0, atol=1)
    other = sample_video(i2v, DENOISER, task="i2v", image=255 - image, **FAST)
    assert not torch.equal(other, a)


def test_t2v_and_t2i_sample_from_prompts():
    video = sample_video(tiny_model("t2v"), DENOISER, task="t2v", prompt="a red car", **FAST)
    assert video.shape == (T, H, W, 3)
    with pytest.warns(UserWarning, match="one frame"):
        still = sample_video(tiny_model("t2i"), DENOISER, task="t2i", prompt="a red car", **FAST)
    assert still.shape == (1, H, W, 3)


def test_decode_chunk_splits_the_clip_like_sgm(i2v, image):
    video = sample_video(i2v, DENOISER, task="i2v", image=image, **{**fast(decode_chunk=2), "num_frames": 3})
    assert video.shape == (3, H, W, 3)


def test_errors_say_what_to_pass(i2v, image):
    with pytest.raises(ValueError, match="pass image="):
        sample_video(i2v, DENOISER, task="i2v", **FAST)
    with pytest.raises(ValueError, match="pass prompt="):
        sample_video(i2v, DENOISER, task="t2v", **FAST)
    with pytest.raises(ValueError, match="not divisible by the latent grid"):
        sample_video(i2v, DENOISER, task="i2v", image=image, **{**FAST, "height": 18})
    with pytest.raises(ValueError, match="task="):
        sample_video(i2v, DENOISER, task="v2v", image=image, **FAST)
    assert grid_factor(i2v) == 4


def test_prepare_image_resizes_and_centre_crops():
    img = torch.zeros(3, 10, 40, dtype=torch.uint8)
    img[:, :, 15:25] = 255  # a white centre stripe survives the crop, the black sides are cut off
    out = prepare_image(img, height=16, width=16)
    assert out.shape == (3, 16, 16) and out.min() >= -1 and out.max() <= 1
    assert out[:, :, 8].mean() > 0.9
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        prepare_image(torch.zeros(1, 3, 8, 8), height=8, width=8)


def test_eval_mode_restores_mixed_modes():
    net = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Dropout())
    net[1].eval()
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[0].training and not net[1].training


class _Objective(torch.nn.Module):
    def __init__(self, model: LatentDiffusion | None) -> None:
        super().__init__()
        if model is not None:
            self.model, self.denoiser = model, DENOISER
            self.task, self.num_frames, self.height, self.width = "i2v", T, H, W


class _Module(pl.LightningModule):
    def __init__(self, model: LatentDiffusion | None, stage_dir: Path) -> None:
        super().__init__()
        self.objective = _Objective(model)
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.stage_dir = stage_dir
        self.swaps = 0

    @contextlib.contextmanager
    def ema_weights(self):
        self.swaps += 1
        yield

    def training_step(self, batch, batch_idx):
        return (self.weight * batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD([self.weight], lr=0.1)


def _fit(module: pl.LightningModule, callback: SampleVideos, max_steps: int) -> None:
    trainer = pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(module, DataLoader(TensorDataset(torch.ones(8, 1)), batch_size=1))


def test_callback_writes_samples_during_and_at_the_end_of_training(tmp_path, i2v, image):
    image_path = tmp_path / "cond.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(image_path)
    module = _Module(i2v, tmp_path / "stage")
    _fit(module, SampleVideos(2, images=[str(image_path)], settings=FAST["settings"], fps=4), max_steps=3)
    names = sorted(p.name for p in (tmp_path / "stage" / "samples").iterdir())
    assert names == [f"step_00000{s}_0.{ext}" for s in (2, 3) for ext in ("gif", "mp4")]
    with av.open(str(tmp_path / "stage" / "samples" / "step_000002_0.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == T and frames[0].shape == (H, W, 3)
    assert module.swaps == 2 and module.training


def test_callback_warns_once_and_does_nothing_for_a_stage_that_cannot_sample(tmp_path):
    module = _Module(None, tmp_path / "stage")
    with pytest.warns(UserWarning, match="cannot sample") as record:
        _fit(module, SampleVideos(1, images=["missing.png"]), max_steps=2)
    assert sum("SampleVideos" in str(w.message) for w in record) == 1
    assert not (tmp_path / "stage").exists() and module.swaps == 0


def test_videos_are_logged_to_wandb_loggers_only(tmp_path):
    class FakeWandb(WandbLogger):
        def __init__(self) -> None:
            self.logged: list[tuple] = []

        def log_video(self, key, videos, step=None, **kwargs):
            self.logged.append((key, videos, step))

    class Other:
        pass

    wandb_logger = FakeWandb()
    log_videos([Other(), wandb_logger], [tmp_path / "a.mp4", tmp_path / "b.mp4"], step=7)
    assert wandb_logger.logged == [
        ("samples/0", [str(tmp_path / "a.mp4")], 7),
        ("samples/1", [str(tmp_path / "b.mp4")], 7),
    ]


def test_callback_rejects_bad_settings():
    with pytest.raises(ValueError, match="every_n_steps"):
        SampleVideos(0)
    assert np.isfinite(SampleVideos(1).fps)
