"""Temporal layers of the video UNet (VideoLDM / SVD, RECIPE 1.3): every spatial layer is followed by one.

Tensors enter as ``(B*T, C, H, W)`` like the spatial layers; each temporal module rearranges internally and
blends its output with the spatial output through an ``AlphaBlender``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from .attention import CrossAttention, FeedForward, cross_attention_residual
from .embeddings import timestep_embedding
from .resblock import ResBlock
from .spatial import SpatialTransformer
from .spec import MergeStrategy, TemporalSpec


class AlphaBlender(nn.Module):
    """``out = alpha * x_spatial + (1 - alpha) * x_temporal`` (RECIPE 1.3).

    - ``fixed``: alpha = merge_factor (a buffer);
    - ``learned``: alpha = sigmoid(mix_factor), mix_factor initialised to merge_factor;
    - ``learned_with_images``: as ``learned``, but alpha = 1 (pure spatial) for frames whose
      ``image_only_indicator`` (shape ``(B, T)``) is 1, so images can be mixed into video batches.
    """

    def __init__(self, alpha: float, *, merge_strategy: MergeStrategy) -> None:
        super().__init__()
        self.merge_strategy = merge_strategy
        if merge_strategy == "fixed":
            self.register_buffer("mix_factor", torch.tensor([alpha]))
        elif merge_strategy in ("learned", "learned_with_images"):
            self.mix_factor = nn.Parameter(torch.tensor([alpha]))
        else:
            raise ValueError(f"unknown merge_strategy {merge_strategy!r}; use fixed, learned or learned_with_images")

    def get_alpha(self, image_only_indicator: torch.Tensor | None) -> torch.Tensor:
        """Alpha of shape ``(1,)`` or, for ``learned_with_images``, ``(B, T)``."""
        if self.merge_strategy == "fixed":
            return self.mix_factor
        alpha = torch.sigmoid(self.mix_factor)
        if self.merge_strategy == "learned":
            return alpha
        if image_only_indicator is None:
            raise ValueError("merge_strategy 'learned_with_images' needs image_only_indicator of shape (B, T)")
        return torch.where(image_only_indicator.bool(), torch.ones_like(alpha), alpha)

    def forward(
        self,
        x_spatial: torch.Tensor,
        x_temporal: torch.Tensor,
        *,
        image_only_indicator: torch.Tensor | None,
        layout: Literal["tokens", "video"],
    ) -> torch.Tensor:
        """``layout`` is the host's: ``tokens`` = ``(B*T, S, C)``, ``video`` = ``(B, C, T, H, W)``."""
        alpha = self.get_alpha(image_only_indicator)
        if alpha.ndim == 2:  # (B, T) -> broadcastable against the host layout
            alpha = alpha.reshape(-1, 1, 1) if layout == "tokens" else alpha[:, None, :, None, None]
        # lerp(t, s, a) = a * s + (1 - a) * t in one fused kernel (forward and backward)
        return torch.lerp(x_temporal, x_spatial, alpha.to(x_spatial.dtype))


class VideoResBlock(ResBlock):
    """Spatial ResBlock followed by a temporal ResBlock with kernel ``(3, 1, 1)`` (``time_stack``)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        *,
        out_channels: int | None = None,
        dropout: float = 0.0,
        temporal: TemporalSpec,
    ) -> None:
        super().__init__(channels, emb_channels, out_channels=out_channels, dropout=dropout)
        out_channels = out_channels or channels
        self.time_stack = ResBlock(
            out_channels,
            emb_channels,
            dropout=dropout,
            dims=3,
            kernel_size=temporal.video_kernel_size,
            exchange_temb_dims=True,
        )
        self.time_mixer = AlphaBlender(temporal.merge_factor, merge_strategy=temporal.merge_strategy)

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        *,
        num_video_frames: int,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = super().forward(x, emb)
        # (B*T, C, H, W) -> (B, C, T, H, W)
        x_spatial = x.unflatten(0, (-1, num_video_frames)).transpose(1, 2)
        x_temporal = self.time_stack(x_spatial, emb.unflatten(0, (-1, num_video_frames)))
        x = self.time_mixer(x_spatial, x_temporal, image_only_indicator=image_only_indicator, layout="video")
        return x.transpose(1, 2).flatten(0, 1)  # (B, C, T, H, W) -> (B*T, C, H, W)


class VideoTransformerBlock(nn.Module):
    """Transformer over the T frames at each pixel: FF_in, self-attention, cross-attention, FF (RECIPE 1.3)."""

    def __init__(
        self, dim: int, *, heads: int, dim_head: int, context_dim: int | None, ff_in: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        self.is_res = inner_dim == dim
        if ff_in:
            self.norm_in = nn.LayerNorm(dim)
            self.ff_in = FeedForward(dim, dim_out=inner_dim, dropout=dropout)
        else:
            self.norm_in = self.ff_in = None
        self.attn1 = CrossAttention(inner_dim, heads=heads, dim_head=dim_head, dropout=dropout)
        self.ff = FeedForward(inner_dim, dim_out=dim, dropout=dropout)
        if context_dim is not None:
            self.norm2 = nn.LayerNorm(inner_dim)
            self.attn2 = CrossAttention(
                inner_dim, context_dim=context_dim, heads=heads, dim_head=dim_head, dropout=dropout
            )
        else:
            self.norm2 = self.attn2 = None
        self.norm1 = nn.LayerNorm(inner_dim)
        self.norm3 = nn.LayerNorm(inner_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, *, num_video_frames: int) -> torch.Tensor:
        """``x`` (B*T, S, C) tokens; ``context`` (B, S_ctx, D), one per video, shared by all its pixels."""
        # (B*T, S, C) -> (B*S, T, C): attention runs over frames
        s = x.shape[1]
        x = x.unflatten(0, (-1, num_video_frames)).transpose(1, 2).flatten(0, 1)
        if self.ff_in is not None:
            h = self.ff_in(self.norm_in(x))
            x = h.add_(x) if self.is_res else h
        x = self.attn1(self.norm1(x)).add_(x)
        if self.attn2 is not None:
            # Every pixel of a video attends to the same context: (B*S, T, C) against (B, S_ctx, D).
            x = cross_attention_residual(x, self.attn2, self.norm2, context)
        h = self.ff(self.norm3(x))
        x = h.add_(x) if self.is_res else h
        return x.unflatten(0, (-1, s)).transpose(1, 2).flatten(0, 1)  # (B*S, T, C) -> (B*T, S, C)


class SpatialVideoTransformer(SpatialTransformer):
    """Spatial transformer whose every block is followed by a frame-position-embedded temporal block."""

    def __init__(self, in_channels: int, *, temporal: TemporalSpec, **spatial: Any) -> None:
        """``spatial``: the keyword arguments of ``SpatialTransformer`` (n_heads, d_head, context_dim, ...)."""
        super().__init__(in_channels, **spatial)
        inner_dim = self.n_heads * self.d_head
        self.use_spatial_context = temporal.use_spatial_context
        self.max_time_embed_period = temporal.max_time_embed_period
        time_context_dim = None if temporal.disable_temporal_crossattention else self.context_dim
        self.time_stack = nn.ModuleList(
            [
                VideoTransformerBlock(
                    inner_dim,
                    heads=self.n_heads,
                    dim_head=self.d_head,
                    context_dim=time_context_dim,
                    ff_in=temporal.extra_ff_mix_layer,
                    dropout=self.dropout,
                )
                for _ in self.transformer_blocks
            ]
        )
        self.time_pos_embed = nn.Sequential(
            nn.Linear(in_channels, 4 * in_channels), nn.SiLU(), nn.Linear(4 * in_channels, in_channels)
        )
        self.time_mixer = AlphaBlender(temporal.merge_factor, merge_strategy=temporal.merge_strategy)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        num_video_frames: int,
        image_only_indicator: torch.Tensor | None = None,
        time_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        bt, _, h, w = x.shape
        if self.use_spatial_context and context is not None:
            # The temporal blocks attend to the first frame's context, shared by all pixels.
            time_context = context[::num_video_frames]
        if time_context is not None and time_context.ndim == 2:
            time_context = time_context[:, None]  # (B, D) -> (B, 1, D)

        frame_idx = torch.arange(num_video_frames, device=x.device).repeat(bt // num_video_frames)
        t_emb = timestep_embedding(frame_idx, self.in_channels, max_period=self.max_time_embed_period)
        frame_emb = self.time_pos_embed(t_emb.to(x.dtype))[:, None, :]  # (B*T, 1, C)

        tokens = self._to_tokens(x)
        for block, mix_block in zip(self.transformer_blocks, self.time_stack, strict=True):
            tokens = block(tokens, context)
            tokens_mix = mix_block(tokens + frame_emb, time_context, num_video_frames=num_video_frames)
            tokens = self.time_mixer(tokens, tokens_mix, image_only_indicator=image_only_indicator, layout="tokens")
        return x + self._from_tokens(tokens, h, w)
