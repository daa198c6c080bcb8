"""Small tensor helpers shared by the diffusion modules (broadcasting sigma, seeded noise)."""

from __future__ import annotations

import torch


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample tensor (B,) broadcasts against a (B, ...) tensor of rank ndim."""
    missing = ndim - t.ndim
    if missing < 0:
        raise ValueError(f"tensor of rank {t.ndim} cannot be broadcast to rank {ndim}; pass a per-sample (B,) tensor")
    return t.reshape(*t.shape, *([1] * missing))


def randn(
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``device``.

    Drawing on the generator's own device (rather than on ``device``) is what makes a CPU generator give the same
    numbers whether the result is wanted on CPU or GPU, so a seeded run reproduces across machines.
    """
    draw_device = generator.device if generator is not None else device
    out = torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=dtype)
    return out.to(device) if device is not None else out
