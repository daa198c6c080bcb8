"""The conditioner inputs of each task, built the same way for training and for sampling.

- ``t2i`` (Stage I): SD 2.1 text conditioner; input ``txt``; unconditional ``txt = ""``.
- ``t2v`` (II, III text-to-video): text + ``fps_id`` + ``motion_bucket_id``; unconditional ``txt = ""``, vector kept.
- ``i2v`` (SVD / SVD-XT): the SVD image conditioner (RECIPE 2), its five keys; unconditional ``cond_frames*``
  zeroed, vector kept.

Noise augmentation of the conditioning frame (i2v, RECIPE 2): ``cond_frames = frame0 + cond_aug * eps`` with
``log cond_aug ~ N(-3.0, 0.5^2)`` in training and a fixed ``cond_aug`` (0.02) at sampling; CLIP sees the clean
frame; ``cond_aug`` itself is a vector input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from models.conditioners import SVD_UC_ZERO_KEYS, add_cond_noise

Task = Literal["t2i", "t2v", "i2v"]
TASKS: tuple[str, ...] = ("t2i", "t2v", "i2v")
TEXT_KEY = "txt"


@dataclass(frozen=True)
class CondAugConfig:
    """log cond_aug ~ N(p_mean, p_std^2) in training (SVD App D.4: -3.0, 0.5)."""

    p_mean: float = -3.0
    p_std: float = 0.5

    def sample(self, n: int, *, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        draw = generator.device if generator is not None else device
        log_sigma = self.p_mean + self.p_std * torch.randn(n, generator=generator, device=draw)
        return log_sigma.exp().to(device)


def check_task(task: str) -> Task:
    if task not in TASKS:
        raise ValueError(f"task={task!r}; choose one of {', '.join(TASKS)}")
    return task  # type: ignore[return-value]


def conditioner_inputs(
    task: Task,
    *,
    captions: list[str],
    fps_id: torch.Tensor,
    motion_bucket_id: torch.Tensor,
    cond_image: torch.Tensor | None = None,
    cond_aug: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """The conditioner batch for ``task``; ``cond_image`` (B, 3, H, W) in [-1, 1] and ``cond_aug`` (B,) for i2v."""
    check_task(task)
    if task == "t2i":
        return {TEXT_KEY: list(captions)}
    vector = {"fps_id": fps_id.float(), "motion_bucket_id": motion_bucket_id.float()}
    if task == "t2v":
        return {TEXT_KEY: list(captions), **vector}
    if cond_image is None or cond_aug is None:
        raise ValueError("i2v conditioning needs cond_image (the clean first frame) and cond_aug")
    return {
        "cond_frames_without_noise": cond_image,
        "cond_frames": add_cond_noise(cond_image, cond_aug, generator=generator),
        **vector,
        "cond_aug": cond_aug.float(),
    }


def unconditional_inputs(task: Task, inputs: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(batch for the unconditional branch, embeddings to zero there) for classifier-free guidance."""
    if task == "i2v":
        return inputs, SVD_UC_ZERO_KEYS
    return {**inputs, TEXT_KEY: [""] * len(inputs[TEXT_KEY])}, ()


def per_frame(cond: dict[str, torch.Tensor], num_frames: int) -> dict[str, torch.Tensor]:
    """Copy per-video conditions over the frames of (B*T, ...) latents (RECIPE 2: no masking)."""
    return {k: v.repeat_interleave(num_frames, dim=0) for k, v in cond.items()}


def vector_dim(task: Task) -> int | None:
    """Size of the UNet's vector input (``adm_in_channels``) the task's conditioner produces."""
    return {"t2i": None, "t2v": 512, "i2v": 768}[check_task(task)]


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
