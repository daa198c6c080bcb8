"""The (video) UNet of SD 2.1 / SVD, assembled from the spatial and temporal blocks (RECIPE 1.1 to 1.2).

One class for both: with ``spec.temporal=None`` it is exactly the SD 2.1 image UNet of Stage I (same module
names, same state-dict keys); with temporal layers every ResBlock becomes a ``VideoResBlock`` and every
transformer a ``SpatialVideoTransformer``. Module names match ``model.diffusion_model.*`` of the official
checkpoints, so loading is a prefix strip.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .embeddings import timestep_embedding
from .resblock import Downsample, ResBlock, Upsample, normalization, zero_module
from .spatial import SpatialTransformer
from .spec import UNetSpec
from .temporal import SpatialVideoTransformer, VideoResBlock


class TimestepEmbedSequential(nn.Sequential):
    """A UNet block: a sequence of layers, each given the inputs it needs.

    ``checkpointing`` is switched from outside (``models.activation_checkpointing``); when on, the block's
    activations are recomputed in the backward pass instead of stored.
    """

    checkpointing: bool = False

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        num_video_frames: int = 1,
        image_only_indicator: torch.Tensor | None = None,
        time_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        args = (x, emb, context, num_video_frames, image_only_indicator, time_context)
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(self._run, *args, use_reentrant=False)
        return self._run(*args)

    def _run(self, x, emb, context, num_video_frames, image_only_indicator, time_context):
        for layer in self:
            if isinstance(layer, VideoResBlock):
                x = layer(x, emb, num_video_frames=num_video_frames, image_only_indicator=image_only_indicator)
            elif isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialVideoTransformer):
                x = layer(
                    x,
                    context,
                    num_video_frames=num_video_frames,
                    image_only_indicator=image_only_indicator,
                    time_context=time_context,
                )
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class VideoUNet(nn.Module):
    """Latent-diffusion UNet; inputs follow the official layout ``(B*T, C, H, W)`` with ``num_video_frames``."""

    def __init__(self, spec: UNetSpec) -> None:
        super().__init__()
        self.spec = spec
        mc, ted = spec.model_channels, spec.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        if spec.adm_in_channels is not None:
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(spec.adm_in_channels, ted), nn.SiLU(), nn.Linear(ted, ted))
            )

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(spec.in_channels, mc, 3, padding=1))])
        skip_channels, ch, ds = [mc], mc, 1
        for level, mult in enumerate(spec.channel_mult):
            for _ in range(spec.num_res_blocks):
                layers = [self._resblock(ch, mult * mc)]
                ch = mult * mc
                if ds in spec.attention_resolutions:
                    layers.append(self._transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(spec.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            self._resblock(ch, ch), self._transformer(ch), self._resblock(ch, ch)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(spec.channel_mult))):
            for i in range(spec.num_res_blocks + 1):
                layers = [self._resblock(ch + skip_channels.pop(), mult * mc)]
                ch = mult * mc
                if ds in spec.attention_resolutions:
                    layers.append(self._transformer(ch))
                if level and i == spec.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(mc, spec.out_channels, 3, padding=1))
        )

    def _resblock(self, channels: int, out_channels: int) -> ResBlock:
        s = self.spec
        if s.temporal is None:
            return ResBlock(channels, s.time_embed_dim, out_channels=out_channels, dropout=s.dropout)
        return VideoResBlock(
            channels, s.time_embed_dim, out_channels=out_channels, dropout=s.dropout, temporal=s.temporal
        )

    def _transformer(self, channels: int) -> SpatialTransformer:
        s = self.spec
        kwargs = dict(
            n_heads=channels // s.num_head_channels,
            d_head=s.num_head_channels,
            context_dim=s.context_dim,
            depth=s.transformer_depth,
            dropout=s.dropout,
            use_linear=s.use_linear_in_transformer,
        )
        if s.temporal is None:
            return SpatialTransformer(channels, **kwargs)
        return SpatialVideoTransformer(channels, temporal=s.temporal, **kwargs)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        *,
        num_video_frames: int = 1,
        image_only_indicator: torch.Tensor | None = None,
        time_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` (B*T, C, H, W); ``timesteps`` (B*T,) = c_noise; ``context`` (B*T, S, D); ``y`` (B*T, adm).

        ``image_only_indicator`` (B, T): 1 marks frames run as still images (temporal layers bypassed by the
        ``learned_with_images`` blender); defaults to all zeros (video).
        """
        if x.shape[0] % num_video_frames:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of num_video_frames={num_video_frames}")
        if (y is None) != (self.spec.adm_in_channels is None):
            raise ValueError(
                f"y (vector conditioning) must be given iff adm_in_channels is set (adm={self.spec.adm_in_channels})"
            )
        if self.spec.is_video and image_only_indicator is None:
            image_only_indicator = torch.zeros(x.shape[0] // num_video_frames, num_video_frames, device=x.device)

        emb = self.time_embed(timestep_embedding(timesteps, self.spec.model_channels).to(x.dtype))
        if y is not None:
            emb = emb + self.label_emb(y.to(emb.dtype))

        args = (emb, context, num_video_frames, image_only_indicator, time_context)
        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, *args)
            skips.append(h)
        h = self.middle_block(h, *args)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), *args)
        return self.out(h)
