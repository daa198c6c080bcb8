"""Building blocks of the SD KL-f8 autoencoder (ldm/sgm ``diffusionmodules/model.py``), same parameter names.

Normalisation is GroupNorm(32, eps=1e-6) computed in float32 (the UNet's ``GroupNorm32``); the temporal
``time_stack`` of the video decoder keeps the UNet ResBlock's eps 1e-5, as in sgm.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from models.unet.resblock import GroupNorm32, Upsample, normalization

VAE_NORM_EPS = 1e-6


def vae_norm(channels: int) -> GroupNorm32:
    return normalization(channels, eps=VAE_NORM_EPS)


class ResnetBlock(nn.Module):
    """norm1 -> swish -> conv1 -> norm2 -> swish -> dropout -> conv2, plus a 1x1 ``nin_shortcut`` if C changes.

    The autoencoder has no timestep embedding, so there is no ``temb_proj``.
    """

    def __init__(self, in_channels: int, *, out_channels: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = vae_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = vae_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class ResnetFactory(Protocol):
    """Builds the ResnetBlock variant a level uses (plain, or the video decoder's ``VideoResnetBlock``)."""

    def __call__(self, in_channels: int, *, out_channels: int) -> nn.Module: ...


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels with 1x1-conv projections ``q, k, v, proj_out``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = vae_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, height, width = x.shape
        # (B, C, H, W) -> (B, 1, H*W, C): one head whose width is all C channels
        q, k, v = (p(h).reshape(b, 1, c, height * width).transpose(-1, -2) for p in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)
        # (B, 1, H*W, C) -> (B, C, H, W)
        h = h.transpose(-1, -2).reshape(b, c, height, width)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Asymmetric zero pad (right, bottom) then a stride-2 3x3 conv without padding (ldm, not the UNet's op)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class MidBlock(nn.Module):
    """``block_1 -> attn_1 -> block_2`` at the lowest resolution."""

    def __init__(self, channels: int, *, make_resblock: ResnetFactory) -> None:
        super().__init__()
        self.block_1 = make_resblock(channels, out_channels=channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = make_resblock(channels, out_channels=channels)

    def forward(self, x: torch.Tensor, **block_kwargs: int) -> torch.Tensor:
        x = self.block_1(x, **block_kwargs)
        x = self.attn_1(x)
        return self.block_2(x, **block_kwargs)


class _Level(nn.Module):
    """``block.{j}`` (+ ``attn.{j}``): the resnet blocks (with attention) that an encoder and a decoder level share."""

    def __init__(
        self, in_channels: int, out_channels: int, *, num_blocks: int, attention: bool, make_resblock: ResnetFactory
    ) -> None:
        super().__init__()
        chans = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(make_resblock(chans[j], out_channels=out_channels) for j in range(num_blocks))
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(num_blocks if attention else 0))

    def _blocks(self, x: torch.Tensor, **block_kwargs: int) -> torch.Tensor:
        for j, block in enumerate(self.block):
            x = block(x, **block_kwargs)
            if len(self.attn) > 0:
                x = self.attn[j](x)
        return x


class DownLevel(_Level):
    """One encoder level: ``block.{j}`` (+ ``attn.{j}``), then ``downsample`` except on the last level.

    ``level``: the arguments of ``_Level`` (num_blocks, attention, make_resblock).
    """

    def __init__(self, in_channels: int, out_channels: int, *, downsample: bool, **level: Any) -> None:
        super().__init__(in_channels, out_channels, **level)
        self.downsample = Downsample(out_channels) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._blocks(x)
        return x if self.downsample is None else self.downsample(x)


class UpLevel(_Level):
    """One decoder level: ``block.{j}`` (+ ``attn.{j}``), then ``upsample`` (nearest x2 + conv) except on level 0.

    ``level``: the arguments of ``_Level`` (num_blocks, attention, make_resblock).
    """

    def __init__(self, in_channels: int, out_channels: int, *, upsample: bool, **level: Any) -> None:
        super().__init__(in_channels, out_channels, **level)
        self.upsample = Upsample(out_channels) if upsample else None

    def forward(self, x: torch.Tensor, **block_kwargs: int) -> torch.Tensor:
        x = self._blocks(x, **block_kwargs)
        return x if self.upsample is None else self.upsample(x)
