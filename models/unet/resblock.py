"""ResBlock, down- and upsampling of the SD 2.1 UNet; the same ResBlock with ``dims=3`` is the temporal one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 at least (bf16/fp16 statistics over large groups lose precision); float64 stays
    float64 (parity checks against other implementations run in float64)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float32, torch.float64) and self.weight.dtype == x.dtype:
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def normalization(channels: int, *, eps: float = 1e-5) -> GroupNorm32:
    return GroupNorm32(32, channels, eps=eps)


class TimeConv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters and keys) that runs kernels spanning time only, e.g. ``(3, 1, 1)``, in 2-D.

    A ``(k, 1, 1)`` kernel on ``(B, C, T, H, W)`` is a ``(k, 1)`` kernel on ``(B, C, T, H*W)``: same sums, but
    PyTorch's CPU Conv3d falls back to a slow im2col kernel (3-4x slower than conv2d with one thread), while
    conv2d has tuned kernels on every backend. Other kernels run the plain Conv3d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.ndim != 5
            or self.kernel_size[1:] != (1, 1)
            or self.stride[1:] != (1, 1)
            or self.dilation[1:] != (1, 1)
            or isinstance(self.padding, str)
            or self.padding[1:] != (0, 0)
            or self.padding_mode != "zeros"
        ):
            return super().forward(x)
        stride, padding, dilation = (self.stride[0], 1), (self.padding[0], 0), (self.dilation[0], 1)
        # (B, C, T, H, W) -> (B, C, T, H*W) and back
        out = F.conv2d(x.flatten(3), self.weight.flatten(3), self.bias, stride, padding, dilation, self.groups)
        return out.unflatten(3, x.shape[3:])


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    if dims == 2:
        return nn.Conv2d(*args, **kwargs)
    if dims == 3:
        return TimeConv3d(*args, **kwargs)
    raise ValueError(f"unsupported dims={dims}")


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with a timestep embedding added between the two convolutions (DDPM / ADM).

    ``dims=3`` with ``kernel_size=(3, 1, 1)`` gives the temporal ResBlock of VideoLDM / SVD, whose input is
    ``(B, C, T, H, W)`` and whose embedding is per frame ``(B, T, E)`` (``exchange_temb_dims``). The last conv is
    zero-initialised, so a fresh block is the identity.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int | None,
        *,
        out_channels: int | None = None,
        dropout: float = 0.0,
        dims: int = 2,
        kernel_size: int | tuple[int, ...] = 3,
        exchange_temb_dims: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        ks = (kernel_size,) * dims if isinstance(kernel_size, int) else tuple(kernel_size)
        padding = tuple(k // 2 for k in ks)
        self.exchange_temb_dims = exchange_temb_dims
        self.in_layers = nn.Sequential(
            normalization(channels, eps=norm_eps), nn.SiLU(), conv_nd(dims, channels, out_channels, ks, padding=padding)
        )
        self.emb_layers = (
            nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels)) if emb_channels is not None else None
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels, eps=norm_eps),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(conv_nd(dims, out_channels, out_channels, ks, padding=padding)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else conv_nd(dims, channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.in_layers(x)
        if self.emb_layers is not None:
            emb_out = self.emb_layers(emb).type(h.dtype)
            if self.exchange_temb_dims:
                emb_out = emb_out.transpose(1, 2)  # (B, T, C) -> (B, C, T)
            while emb_out.ndim < h.ndim:
                emb_out = emb_out[..., None]
            h = h + emb_out
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (``op``)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution (``conv``)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
