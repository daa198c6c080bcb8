"""Sampling a video (or an image) from a ``LatentDiffusion`` model, the SVD way (RECIPE 2 and 3).

The conditions are built by ``train/conditioning.py``, the same functions training uses. Then:

* EDM discretization (sigma 0.002 .. 700, rho 7) and the deterministic Euler sampler, ``num_steps`` steps;
* classifier-free guidance: ``VanillaCFG(max_cfg)`` for image tasks; for the video tasks ``LinearPredictionGuider``,
  a per-frame scale linspace(min_cfg, max_cfg, T) (svd 1.0 -> 2.5, svd_xt 1.5 -> 3.0);
* the unconditional branch of the task (``TaskSpec.unconditional_inputs``): empty caption (text tasks) or zeroed
  image conditions (i2v), vector kept;
* decoding ``decode_chunk`` frames at a time, each chunk as its own clip, as sgm's ``decoding_t`` does.

The settings (steps, guidance, micro-conditioning, seed) are one ``train.config.GenerationSettings``. All noise comes
from one CPU ``torch.Generator`` seeded with its ``seed``, so a seed gives the same video on any device.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from data.transforms import resize_and_crop, to_model_range
from models.diffusion import EDMDiscretization, EulerEDMSampler, Guider, LinearPredictionGuider, VanillaCFG
from models.latent_diffusion import LatentDiffusion
from train.conditioning import conditioner_inputs, latent_hw, per_frame, unconditional_inputs
from train.config import GenerationSettings
from train.tasks import TaskSpec, get_task


@dataclass(frozen=True)
class SamplingPreset:
    """Sampling defaults of a released model (RECIPE 3, sgm ``scripts/sampling/configs``)."""

    num_frames: int
    num_steps: int
    min_cfg: float
    max_cfg: float
    height: int = 576
    width: int = 1024


PRESETS: dict[str, SamplingPreset] = {
    "svd": SamplingPreset(num_frames=14, num_steps=25, min_cfg=1.0, max_cfg=2.5),
    "svd_image_decoder": SamplingPreset(num_frames=14, num_steps=25, min_cfg=1.0, max_cfg=2.5),
    "svd_xt": SamplingPreset(num_frames=25, num_steps=30, min_cfg=1.5, max_cfg=3.0),
}


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode and restore each submodule's own training flag afterwards."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def grid_factor(model: LatentDiffusion) -> int:
    """Pixels per cell of the grid a sample size must lie on: VAE downsampling x UNet downsampling."""
    return model.first_stage.spec.downsample_factor * 2 ** (len(model.unet.spec.channel_mult) - 1)


def prepare_image(image: torch.Tensor, *, height: int, width: int) -> torch.Tensor:
    """A (3, H, W) uint8 or [-1, 1] float image -> float (3, height, width) in [-1, 1], cover-resized and
    centre-cropped as training frames are (``data.transforms.resize_and_crop``, in uint8; a float image is rounded
    to 8 bits first). ``train.media.read_image`` gives images at the stage size already (no resize here)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image has shape {tuple(image.shape)}; pass one RGB image as a (3, H, W) tensor")
    pixels = image if image.dtype == torch.uint8 else (image.float().clamp(-1.0, 1.0) + 1.0) * 127.5
    return to_model_range(resize_and_crop(pixels[None].cpu(), size=(height, width), crop="center")[0])


def prepare_cond_images(task: TaskSpec, image: torch.Tensor, *, height: int, width: int) -> torch.Tensor:
    """The sampling ``cond_image`` of ``task``: (1, 3, H, W) from one image; (1, k, 3, H, W) from k stacked images
    (k, 3, H, W) for a task conditioned on k frames (``TaskSpec.cond_frame_indices``, interp: first and last)."""
    k = len(task.cond_frame_indices)
    if k == 1:
        return prepare_image(image, height=height, width=width)[None]  # (1, 3, H, W)
    if image.ndim != 4 or image.shape[0] != k:
        raise ValueError(
            f"task {task.name!r} conditions on {k} frames; pass image=<({k}, 3, H, W) tensor> (frame interpolation: "
            f"scripts/sample.py --interpolate A B), got {tuple(image.shape)}"
        )
    return torch.stack([prepare_image(i, height=height, width=width) for i in image])[None]  # (1, k, 3, H, W)


def to_uint8_frames(frames: torch.Tensor) -> torch.Tensor:
    """Decoded (T, 3, H, W) frames in [-1, 1] -> uint8 (T, H, W, 3) on CPU."""
    x = ((frames.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu()


def make_guider(task: TaskSpec, *, num_frames: int, min_cfg: float, max_cfg: float) -> Guider:
    if not task.video:
        return VanillaCFG(max_cfg)
    return LinearPredictionGuider(max_cfg, num_frames=num_frames, min_scale=min_cfg)


def decode_in_chunks(first_stage: nn.Module, z: torch.Tensor, *, chunk: int) -> torch.Tensor:
    """(T, C, h, w) latents -> (T, 3, H, W); each chunk of ``chunk`` frames is decoded as one clip (sgm)."""
    if chunk < 1:
        raise ValueError(f"decode_chunk={chunk}; use a positive number of frames (SVD decodes 14 at a time)")
    dtype = next(first_stage.parameters()).dtype
    out = [first_stage.decode_latents(part.to(dtype), chunk_size=None, num_frames=len(part)) for part in z.split(chunk)]
    return torch.cat(out)


def _check_inputs(task: TaskSpec, prompt: str | None, image: torch.Tensor | None, num_frames: int) -> int:
    if not task.image_conditioned and prompt is None:
        raise ValueError(f"task {task.name!r} samples from text; pass prompt='...'")
    if task.image_conditioned and image is None:
        raise ValueError(f"task {task.name!r} animates an image; pass image=<(3, H, W) tensor>")
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}; use at least 1 (SVD 14, SVD-XT 25)")
    if not task.video and num_frames != 1:
        warnings.warn(f"task {task.name!r} samples one frame; num_frames={num_frames} is ignored", stacklevel=3)
        return 1
    return num_frames


def sample_video(
    model: LatentDiffusion,
    denoiser: nn.Module,
    *,
    task: str,
    prompt: str | None = None,
    image: torch.Tensor | None = None,
    num_frames: int,
    height: int,
    width: int,
    settings: GenerationSettings | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """One sample as uint8 (T, H, W, 3) on CPU (T = 1 for an image task); the model is expected on ``device``.

    ``prompt`` for a text task (t2i, t2v); ``image`` ((3, H, W), uint8 or float in [-1, 1]) for an image-conditioned
    one (i2v), resized and centre-cropped to (height, width). ``settings`` default to ``GenerationSettings()``. The
    model runs in eval mode without gradients; its modes are restored.
    """
    spec = get_task(task)
    s = settings if settings is not None else GenerationSettings()
    num_frames = _check_inputs(spec, prompt, image, num_frames)
    latent_hw(height, width, grid_factor(model))
    vae_down = model.first_stage.spec.downsample_factor
    device = torch.device(device)
    dtype = next(model.unet.parameters()).dtype
    generator = torch.Generator().manual_seed(s.seed)

    cond_image = None
    if spec.image_conditioned:
        assert image is not None
        cond_dtype = next(model.conditioner.parameters()).dtype
        cond_image = prepare_cond_images(spec, image, height=height, width=width).to(device, cond_dtype)
    inputs = conditioner_inputs(
        spec.name,
        captions=[prompt] if prompt is not None else [],
        fps_id=torch.tensor([s.fps_id], device=device),
        motion_bucket_id=torch.tensor([s.motion_bucket_id], device=device),
        elevation=torch.tensor([s.elevation], device=device) if s.elevation is not None else None,
        cond_image=cond_image,
        cond_aug=torch.tensor([s.cond_aug], device=device),
        generator=generator,
    )
    uc_inputs, zero_keys = unconditional_inputs(spec.name, inputs)

    is_video = model.unet.spec.is_video

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        if not is_video:
            return denoiser(model.unet, x, sigma, cond)
        # Guided batch of 2 videos ([uc; c]), all frames video frames (no image-only frames at sampling).
        indicator = torch.zeros(x.shape[0] // num_frames, num_frames, device=x.device, dtype=x.dtype)
        return denoiser(model.unet, x, sigma, cond, num_video_frames=num_frames, image_only_indicator=indicator)

    with eval_mode(model), torch.no_grad():
        c, uc = model.conditioner.get_unconditional_conditioning(inputs, uc_inputs, force_uc_zero_embeddings=zero_keys)
        c, uc = ({k: v.to(dtype) for k, v in per_frame(d, num_frames).items()} for d in (c, uc))
        sampler = EulerEDMSampler(
            EDMDiscretization(),
            guider=make_guider(spec, num_frames=num_frames, min_cfg=s.min_cfg, max_cfg=s.max_cfg),
            num_steps=s.num_steps,
        )
        shape = (num_frames, model.unet.spec.out_channels, height // vae_down, width // vae_down)
        z = sampler(denoise, c, uc, shape=shape, generator=generator, device=device, dtype=dtype, progress=progress)
        frames = decode_in_chunks(model.first_stage, z, chunk=s.decode_chunk)
    return to_uint8_frames(frames)
