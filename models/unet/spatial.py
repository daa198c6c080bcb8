"""The SD 2.1 spatial transformer: GroupNorm, projection in, transformer blocks, zero-init projection out."""

from __future__ import annotations

import torch
from torch import nn

from .attention import BasicTransformerBlock
from .resblock import zero_module


class SpatialTransformer(nn.Module):
    """Transformer over the ``H*W`` tokens of each image, with cross-attention to ``context``.

    ``use_linear=True`` (SD 2.x) projects with Linear layers after flattening; ``False`` uses 1x1 convs (SD 1.x).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        n_heads: int,
        d_head: int,
        context_dim: int,
        depth: int = 1,
        dropout: float = 0.0,
        use_linear: bool = True,
    ) -> None:
        super().__init__()
        inner_dim = n_heads * d_head
        self.in_channels = in_channels
        self.n_heads, self.d_head, self.context_dim, self.dropout = n_heads, d_head, context_dim, dropout
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner_dim) if use_linear else nn.Conv2d(in_channels, inner_dim, 1)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    inner_dim, heads=n_heads, dim_head=d_head, context_dim=context_dim, dropout=dropout
                )
                for _ in range(depth)
            ]
        )
        self.proj_out = zero_module(
            nn.Linear(inner_dim, in_channels) if use_linear else nn.Conv2d(inner_dim, in_channels, 1)
        )

    def _to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, H*W, C)
        return self.proj_in(x) if self.use_linear else x

    def _from_tokens(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).unflatten(2, (h, w))  # (N, H*W, C) -> (N, C, H, W)
        return x if self.use_linear else self.proj_out(x)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = self._to_tokens(x)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + self._from_tokens(tokens, h, w)
