"""Sinusoidal embeddings shared by the UNet (noise level, frame index) and the scalar conditioners."""

from __future__ import annotations

import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """``[cos, sin]`` sinusoidal features of a 1-D tensor of (possibly fractional) values: ``(N,) -> (N, dim)``.

    Same convention as the official ``timestep_embedding`` (DDPM / transformer positional encoding with
    frequencies ``max_period ** (-i / half)``), so released weights see the features they were trained on.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
