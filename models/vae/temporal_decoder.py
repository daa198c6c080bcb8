"""SVD's temporal VAE decoder (sgm ``autoencoding/temporal_ae.py``, ``VideoDecoder`` with time_mode conv-only).

Every decoder ResnetBlock (2 mid + ``num_res_blocks + 1`` per level) becomes a ``VideoResnetBlock`` and
``conv_out`` becomes ``AE3DConv``; the mid attention stays spatial (RECIPE 4). The other sgm time modes
(``all``, ``attn-only``) are not used by SVD and are not implemented.

Frames arrive flattened into the batch, ``(B*T, C, h, w)`` with ``T = timesteps``, clip-major (all frames of
clip 0 first). Temporal layers mix frames only within a clip of ``timesteps`` frames.
"""

from __future__ import annotations

from functools import partial

import torch
from einops import rearrange
from torch import nn

from models.unet.resblock import ResBlock

from .blocks import ResnetBlock
from .decoder import Decoder
from .spec import AutoencoderSpec

VideoKernelSize = tuple[int, int, int]


class VideoResnetBlock(ResnetBlock):
    """Spatial ResnetBlock, then a temporal 3-D ``time_stack`` blended with a learned ``mix_factor``.

    ``alpha = sigmoid(mix_factor)``; ``out = alpha * time_stack(x) + (1 - alpha) * x``. This is the opposite of
    the UNet's ``AlphaBlender`` (``alpha * spatial + (1 - alpha) * temporal``), RECIPE 1.3 / 4. The parameter
    sits directly on the block (no ``time_mixer``). At init mix_factor = 0 (alpha 0.5) and ``time_stack``'s last
    conv is zero, so ``time_stack`` is the identity and the block equals its spatial part.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        out_channels: int | None = None,
        dropout: float = 0.0,
        video_kernel_size: VideoKernelSize = (3, 1, 1),
        merge_factor: float = 0.0,
    ) -> None:
        super().__init__(in_channels, out_channels=out_channels, dropout=dropout)
        # sgm: openaimodel.ResBlock(emb_channels=0, skip_t_emb=True, dims=3) -> no emb_layers, GroupNorm eps 1e-5.
        self.time_stack = ResBlock(self.out_channels, None, dropout=dropout, dims=3, kernel_size=video_kernel_size)
        self.mix_factor = nn.Parameter(torch.full((1,), float(merge_factor)))

    def forward(self, x: torch.Tensor, *, timesteps: int) -> torch.Tensor:
        x = super().forward(x)
        # (B*T, C, H, W) -> (B, C, T, H, W)
        x = rearrange(x, "(b t) c h w -> b c t h w", t=timesteps)
        alpha = torch.sigmoid(self.mix_factor).to(x.dtype)
        x = alpha * self.time_stack(x) + (1.0 - alpha) * x
        # (B, C, T, H, W) -> (B*T, C, H, W)
        return rearrange(x, "b c t h w -> (b t) c h w")


class AE3DConv(nn.Conv2d):
    """The decoder's ``conv_out`` (3x3 Conv2d, keys ``weight``/``bias``) followed by ``time_mix_conv``.

    ``time_mix_conv`` is a Conv3d(out -> out, ``video_kernel_size``, same padding) over each clip's frames,
    with PyTorch's default (random) init; it is NOT the identity at init.
    """

    def __init__(self, in_channels: int, out_channels: int, *, video_kernel_size: VideoKernelSize = (3, 1, 1)) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        padding = tuple(k // 2 for k in video_kernel_size)
        self.time_mix_conv = nn.Conv3d(out_channels, out_channels, video_kernel_size, padding=padding)

    def forward(self, x: torch.Tensor, *, timesteps: int) -> torch.Tensor:
        x = super().forward(x)
        # (B*T, C, H, W) -> (B, C, T, H, W)
        x = rearrange(x, "(b t) c h w -> b c t h w", t=timesteps)
        x = self.time_mix_conv(x)
        # (B, C, T, H, W) -> (B*T, C, H, W)
        return rearrange(x, "b c t h w -> (b t) c h w")


class VideoDecoder(Decoder):
    """``Decoder`` with temporal layers: ``(B*T, z_channels, h, w)`` + ``timesteps=T`` -> ``(B*T, out_ch, H, W)``."""

    def __init__(
        self,
        spec: AutoencoderSpec | None = None,
        *,
        video_kernel_size: VideoKernelSize = (3, 1, 1),
        merge_factor: float = 0.0,
    ) -> None:
        spec = spec or AutoencoderSpec()
        video_kernel_size = tuple(video_kernel_size)
        if len(video_kernel_size) != 3 or video_kernel_size[0] % 2 == 0:
            raise ValueError(
                f"video_kernel_size={video_kernel_size}; give three ints with an odd time size, e.g. (3, 1, 1)"
            )
        super().__init__(
            spec,
            make_resblock=partial(
                VideoResnetBlock, dropout=spec.dropout, video_kernel_size=video_kernel_size, merge_factor=merge_factor
            ),
            make_conv_out=partial(AE3DConv, video_kernel_size=video_kernel_size),
        )

    def forward(self, z: torch.Tensor, *, timesteps: int) -> torch.Tensor:
        if timesteps < 1 or z.shape[0] % timesteps:
            raise ValueError(
                f"batch of {z.shape[0]} latents is not a whole number of clips of timesteps={timesteps} frames; "
                "pass (B*T, C, h, w) with timesteps=T"
            )
        return self._decode(z, timesteps=timesteps)
