"""Bicubic resize for the CLIP image input, in two flavours.

* ``"torch"``: ``F.interpolate(mode="bicubic", antialias=True)`` (PIL-style area-aware bicubic filter).
* ``"kornia"``: what the official ``FrozenOpenCLIPImageEmbedder.preprocess`` computes with
  ``kornia.geometry.resize(x, (224, 224), interpolation="bicubic", align_corners=True, antialias=True)``: when
  downscaling, a separable Gaussian blur with ``sigma = max((factor - 1) / 2, 0.001)`` and kernel size
  ``int(max(4 * sigma, 3))`` rounded up to odd (reflect padding), then bicubic with ``align_corners=True``.
  diffusers' SVD pipeline (``_resize_with_antialiasing``) reimplements the same thing. No kornia dependency.

The two differ by a few 1e-2 in pixel value on natural images, so the CLIP embedding of released SVD weights is
reproduced exactly only with ``"kornia"``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

ResizeMode = Literal["torch", "kornia"]


def _gaussian_kernel1d(size: int, sigma: float, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    kernel = torch.exp(-x.pow(2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, *, dim: Literal[-2, -1]) -> torch.Tensor:
    """Depthwise 1-D convolution along H (dim=-2) or W (dim=-1) with reflect padding, shape preserved."""
    c = x.shape[1]
    k = kernel.numel()
    pad = ((k - 1) // 2, k - 1 - (k - 1) // 2)
    if dim == -1:
        x = F.pad(x, (*pad, 0, 0), mode="reflect")
        weight = kernel.view(1, 1, 1, k)
    else:
        x = F.pad(x, (0, 0, *pad), mode="reflect")
        weight = kernel.view(1, 1, k, 1)
    return F.conv2d(x, weight.expand(c, 1, *weight.shape[-2:]), groups=c)


def kornia_resize_bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``kornia.geometry.resize(x, size, interpolation="bicubic", align_corners=True, antialias=True)``."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    factors = (h / size[0], w / size[1])
    if max(factors) > 1:  # kornia blurs only when downscaling
        sigmas = (max((factors[0] - 1.0) / 2.0, 0.001), max((factors[1] - 1.0) / 2.0, 0.001))
        ks = [int(max(4.0 * s, 3)) for s in sigmas]
        ks = [k + 1 if k % 2 == 0 else k for k in ks]
        kw = dict(dtype=x.dtype, device=x.device)
        x = _blur_axis(x, _gaussian_kernel1d(ks[1], sigmas[1], **kw), dim=-1)
        x = _blur_axis(x, _gaussian_kernel1d(ks[0], sigmas[0], **kw), dim=-2)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


def resize_bicubic(x: torch.Tensor, size: tuple[int, int], *, mode: ResizeMode = "torch") -> torch.Tensor:
    """Resize ``(B, C, H, W)`` images to ``size`` with an antialiased bicubic filter (see module docstring)."""
    if mode == "torch":
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    if mode == "kornia":
        return kornia_resize_bicubic(x, size)
    raise ValueError(f"resize mode {mode!r}; choose 'torch' or 'kornia'")
