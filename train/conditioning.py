"""The conditioner inputs of each task, built the same way for training and for sampling.

What each task conditions on is its ``TaskSpec`` (``train/tasks.py``); these functions look the task up there.
Noise augmentation of the conditioning frame (image-conditioned tasks, RECIPE 2): ``cond_frames = frame0 +
cond_aug * eps`` with ``log cond_aug ~ N(p_mean, p_std^2)`` in training (``train.config.CondAugConfig``) and a fixed
``cond_aug`` at sampling (``train.config.GenerationSettings``); CLIP sees the clean frame; ``cond_aug`` itself is a
vector input.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from train.config import CondAugConfig
from train.tasks import TEXT_KEY, get_task

__all__ = [
    "TEXT_KEY",
    "CondAugConfig",
    "conditioner_inputs",
    "fps_to_fps_id",
    "latent_hw",
    "per_frame",
    "sample_cond_aug",
    "unconditional_inputs",
    "vector_dim",
]


def conditioner_inputs(task: str, **sources: Any) -> dict[str, Any]:
    """The conditioner batch for ``task`` (``TaskSpec.conditional_inputs``) from the keyword ``sources``:
    ``captions`` (B strings), ``fps_id`` and ``motion_bucket_id`` (B,), and for an image-conditioned task
    ``cond_image`` (B, 3, H, W) in [-1, 1], ``cond_aug`` (B,) and the ``generator`` of the frame noise."""
    return get_task(task).conditional_inputs(**sources)


def unconditional_inputs(task: str, inputs: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(batch for the unconditional branch, embeddings to zero there) for classifier-free guidance."""
    return get_task(task).unconditional_inputs(inputs)


def sample_cond_aug(
    config: CondAugConfig, n: int, *, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """``n`` training noise levels of the conditioning frame, ``log cond_aug ~ N(p_mean, p_std^2)``, drawn on the
    generator's device."""
    draw = generator.device if generator is not None else device
    log_sigma = config.p_mean + config.p_std * torch.randn(n, generator=generator, device=draw)
    return log_sigma.exp().to(device)


def per_frame(cond: dict[str, torch.Tensor], num_frames: int) -> dict[str, torch.Tensor]:
    """Copy per-video conditions over the frames of (B*T, ...) latents (RECIPE 2: no masking)."""
    return {k: v.repeat_interleave(num_frames, dim=0) for k, v in cond.items()}


def vector_dim(task: str) -> int | None:
    """Size of the UNet's vector input (``adm_in_channels``) the task's conditioner produces."""
    return get_task(task).vector_dim


def latent_hw(height: int, width: int, downsample: int) -> tuple[int, int]:
    """Latent grid for a pixel size; a size off the grid is a config error with the nearest valid sizes."""
    for name, size in (("height", height), ("width", width)):
        if size % downsample:
            lo = (size // downsample) * downsample
            raise ValueError(
                f"{name}={size} is not divisible by the latent grid ({downsample} pixels per latent); use "
                f"{lo} or {lo + downsample}"
            )
    return height // downsample, width // downsample


def fps_to_fps_id(fps: float) -> int:
    """SVD's convention (RECIPE 2): fps_id = fps - 1."""
    return max(int(math.floor(fps + 0.5)) - 1, 0)
