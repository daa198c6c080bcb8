"""The SD KL-f8 ``Decoder`` (ldm/sgm ``diffusionmodules/model.py``).

``VideoDecoder`` (temporal_decoder.py) is this network with other ResnetBlocks and ``conv_out``; both share
the construction and the forward below through the ``make_resblock`` / ``make_conv_out`` hooks.
"""

from __future__ import annotations

from functools import partial
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import MidBlock, ResnetBlock, ResnetFactory, UpLevel, vae_norm
from .spec import AutoencoderSpec


class ConvOutFactory(Protocol):
    """Builds the final 3x3 conv (``in_channels -> out_channels``)."""

    def __call__(self, in_channels: int, out_channels: int) -> nn.Module: ...


def _plain_conv_out(in_channels: int, out_channels: int) -> nn.Module:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class Decoder(nn.Module):
    """Latent ``(N, z_channels, h, w)`` -> image ``(N, out_ch, h*f, w*f)``.

    Keys: ``conv_in``, ``mid.{block_1,attn_1,block_2}``, ``up.{i}.block.{j}`` (``num_res_blocks + 1`` blocks),
    ``up.{i}.attn.{j}``, ``up.{i}.upsample.conv`` (not on level 0), ``norm_out``, ``conv_out``. ``up.{i}`` is
    the level at the resolution of ``down.{i}``, so it runs from the highest ``i`` down to 0.
    """

    def __init__(
        self,
        spec: AutoencoderSpec | None = None,
        *,
        make_resblock: ResnetFactory | None = None,
        make_conv_out: ConvOutFactory | None = None,
    ) -> None:
        super().__init__()
        spec = spec or AutoencoderSpec()
        make_resblock = make_resblock or partial(ResnetBlock, dropout=spec.dropout)
        make_conv_out = make_conv_out or _plain_conv_out
        block_in = spec.ch * spec.ch_mult[-1]
        curr_res = spec.resolution // spec.downsample_factor
        self.conv_in = nn.Conv2d(spec.z_channels, block_in, 3, padding=1)
        self.mid = MidBlock(block_in, make_resblock=make_resblock)
        levels: list[UpLevel] = []
        for i in reversed(range(spec.num_resolutions)):
            block_out = spec.ch * spec.ch_mult[i]
            levels.insert(
                0,
                UpLevel(
                    block_in,
                    block_out,
                    num_blocks=spec.num_res_blocks + 1,
                    attention=curr_res in spec.attn_resolutions,
                    upsample=i != 0,
                    make_resblock=make_resblock,
                ),
            )
            block_in = block_out
            if i != 0:
                curr_res *= 2
        self.up = nn.ModuleList(levels)
        self.norm_out = vae_norm(block_in)
        self.conv_out = make_conv_out(block_in, spec.out_ch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._decode(z)

    def _decode(self, z: torch.Tensor, **block_kwargs: int) -> torch.Tensor:
        """``block_kwargs`` (the video decoder's ``timesteps``) reach every ResnetBlock and ``conv_out``."""
        h = self.conv_in(z)
        h = self.mid(h, **block_kwargs)
        for level in reversed(self.up):
            h = level(h, **block_kwargs)
        h = F.silu(self.norm_out(h))
        return self.conv_out(h, **block_kwargs)
