"""The conditioner inputs of each task, built the same way for training and for sampling.

What each task conditions on is its ``TaskSpec`` (``train/tasks.py``); these functions look the task up there.
Noise augmentation of the conditioning frame (image-conditioned tasks, RECIPE 2): ``cond_frames = frame0 +
cond_aug * eps`` with ``log cond_aug ~ N(p_mean, p_std^2)`` in training (``train.config.CondAugConfig``) and a fixed
``cond_aug`` at sampling (``train.config.GenerationSettings``); CLIP sees the clean frame; ``cond_aug`` itself is a
vector input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from models.conditioners import CLIP_EMBEDDING_KEY, GeneralConditioner
from train.config import CondAugConfig
from train.tasks import TEXT_KEY, get_task

__all__ = [
    "TEXT_KEY",
    "CondAugConfig",
    "cached_clip_embedding",
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
    ``cond_image`` (B, 3, H, W) in [-1, 1], ``cond_aug`` (B,), the ``generator`` of the frame noise and, optionally,
    ``clip_image_embedding`` (B, 1, D): the cached CLIP embedding of ``cond_image`` (``cached_clip_embedding``)."""
    return get_task(task).conditional_inputs(**sources)


def cached_clip_embedding(conditioner: GeneralConditioner, batch: Mapping[str, Any]) -> torch.Tensor | None:
    """The batch's cached CLIP image embeddings ``(B, 1, D)`` (a latent cache's ``clip_image_embedding``) for the
    conditioner to use instead of running its CLIP tower; None when the batch carries none or the conditioner has no
    embedder that takes them. ValueError when they were made by a CLIP other than the conditioner's (the cache's
    ``clip_fingerprint`` against the tower's ``fingerprint()``, worked out once per set of weights)."""
    embedding = batch.get(CLIP_EMBEDDING_KEY)
    embedder = conditioner.cached_embedders().get(CLIP_EMBEDDING_KEY)
    if embedding is None or embedder is None:
        return None
    if not embedder.has_fingerprint:
        from train.module import gathered  # DeepSpeed ZeRO-3 partitions the frozen tower too

        with gathered(embedder.parameters()):
            embedder.fingerprint()
    mine = embedder.fingerprint()
    made_by = sorted(set(batch.get("clip_fingerprint") or ["(not recorded)"]))
    if made_by != [mine]:
        raise ValueError(
            f"the batch's cached CLIP image embeddings were made by CLIP {[f[:12] for f in made_by]} but the "
            f"conditioner's CLIP tower is {mine[:12]} (sha256 of its preprocessing and weights); re-run "
            "scripts/cache_latents.py with the --clip-model this stage uses (model.clip, conditioner.clip_resize), "
            "or with --clip-model none to cache without embeddings"
        )
    return embedding


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
    """Copy per-video conditions over the frames of (B*T, ...) latents (RECIPE 2: no masking). A 5-D (B, T, ...)
    condition is per frame already (the frame-interpolation ``concat``) and is flattened to (B*T, ...)."""
    out = {}
    for k, v in cond.items():
        if v.ndim == 5:
            if v.shape[1] != num_frames:
                raise ValueError(
                    f"the conditioner gives per-frame {k!r} for {v.shape[1]} frames but the clips have {num_frames}; "
                    "the stage's stage.num_frames must be the frame count the conditioner was built for"
                )
            out[k] = v.flatten(0, 1)
        else:
            out[k] = v.repeat_interleave(num_frames, dim=0)
    return out


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
