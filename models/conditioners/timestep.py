"""Sinusoidal embedding of raw scalar conditions (``fps_id``, ``motion_bucket_id``, ``cond_aug``).

sgm's ``ConcatTimestepEmbedderND``: each scalar ``v`` becomes ``[cos(v * f_i), sin(v * f_i)]`` with
``f_i = 10000 ** (-i / (outdim / 2))`` (the DDPM timestep embedding applied to the raw value, not to a
normalised one), and several scalars per sample are concatenated.
"""

from __future__ import annotations

import torch
from torch import nn

from models.unet.embeddings import timestep_embedding


class ConcatTimestepEmbedderND(nn.Module):
    """``(B,)`` or ``(B, k)`` values -> ``(B, k * outdim)`` float32 features. No parameters."""

    def __init__(self, outdim: int = 256) -> None:
        super().__init__()
        if outdim < 1:
            raise ValueError(f"outdim={outdim} must be positive (SVD uses 256)")
        self.outdim = outdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(f"expected scalar conditions of shape (B,) or (B, k), got {tuple(x.shape)}")
        b, k = x.shape
        emb = timestep_embedding(x.reshape(b * k), self.outdim)  # (B * k, outdim)
        return emb.reshape(b, k * self.outdim)
