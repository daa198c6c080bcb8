"""The SD KL-f8 ``Encoder`` (ldm/sgm ``diffusionmodules/model.py``); SVD's first stage uses it unchanged."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DownLevel, MidBlock, ResnetBlock, vae_norm
from .spec import AutoencoderSpec


class Encoder(nn.Module):
    """Image ``(N, in_channels, H, W)`` -> moments ``(N, 2*z_channels, H/f, W/f)`` (``z_channels`` if not double_z).

    Keys: ``conv_in``, ``down.{i}.block.{j}``, ``down.{i}.attn.{j}``, ``down.{i}.downsample.conv``,
    ``mid.{block_1,attn_1,block_2}``, ``norm_out``, ``conv_out``.
    """

    def __init__(self, spec: AutoencoderSpec | None = None) -> None:
        super().__init__()
        spec = spec or AutoencoderSpec()
        make_resblock = partial(ResnetBlock, dropout=spec.dropout)
        self.conv_in = nn.Conv2d(spec.in_channels, spec.ch, 3, padding=1)
        in_ch_mult = (1, *spec.ch_mult)
        levels = []
        curr_res = spec.resolution
        for i, mult in enumerate(spec.ch_mult):
            last = i == spec.num_resolutions - 1
            levels.append(
                DownLevel(
                    spec.ch * in_ch_mult[i],
                    spec.ch * mult,
                    num_blocks=spec.num_res_blocks,
                    attention=curr_res in spec.attn_resolutions,
                    downsample=not last,
                    make_resblock=make_resblock,
                )
            )
            if not last:
                curr_res //= 2
        self.down = nn.ModuleList(levels)
        block_in = spec.ch * spec.ch_mult[-1]
        self.mid = MidBlock(block_in, make_resblock=make_resblock)
        self.norm_out = vae_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * spec.z_channels if spec.double_z else spec.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))
