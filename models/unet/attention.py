"""Attention and feed-forward layers (parameter names as in SD 2.1 / sgm).

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` so PyTorch picks the flash,
memory-efficient or math kernel; xformers is not needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# CUDA attention kernels launch one block per (batch * head); very large batches (temporal attention runs
# over every pixel of every video) exceed the grid limit on some versions, so split them.
_MAX_ATTENTION_BATCH = 65535


class CrossAttention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None. Projections have no bias but ``to_out``."""

    def __init__(
        self,
        query_dim: int,
        *,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None and all(type(m) is nn.Linear for m in (self.to_q, self.to_k, self.to_v)):
            # One (C, 3C) matmul instead of three (C, C) ones: better kernel efficiency at small widths. Wrapped
            # projections (a peft LoRA, train/lora.py) run as modules below, so that their adapters apply.
            weight = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])
            q, k, v = F.linear(x, weight).chunk(3, dim=-1)
        else:
            context = x if context is None else context
            q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        # (B, N, h*d) -> (B, h, N, d)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        step = max(1, _MAX_ATTENTION_BATCH // self.heads)
        if q.shape[0] <= step:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.cat(
                [
                    F.scaled_dot_product_attention(q[i : i + step], k[i : i + step], v[i : i + step])
                    for i in range(0, q.shape[0], step)
                ]
            )
        return self.to_out(out.transpose(1, 2).flatten(2))  # (B, h, N, d) -> (B, N, h*d)


def cross_attention_residual(
    x: torch.Tensor, attn: CrossAttention, norm: nn.LayerNorm, context: torch.Tensor | None
) -> torch.Tensor:
    """``x + attn(norm(x), context)`` where each context row serves ``x.shape[0] // context.shape[0]`` rows of x.

    With a single context token (SVD's CLIP image embedding) the attention weights are exactly 1 (a softmax over
    one logit), so every query receives ``to_out(to_v(context))``: the norm, the query and key projections and
    the attention kernel change nothing, and their true gradient is exactly zero. That case skips them (two of
    the block's per-token matmuls and an attention call) and ties the skipped parameters in with a zero, so they
    still get their (zero) gradient, as DDP expects of every parameter. Longer contexts take the full path.
    """
    groups = x.shape[0] // context.shape[0]
    if context.shape[1] != 1:
        # (B*G, L, C) -> (B, G*L, C): rows sharing a context attend to it in one call, no copy of the context
        h = attn(norm(x).unflatten(0, (-1, groups)).flatten(1, 2), context)
        return x + h.unflatten(1, (groups, x.shape[1])).flatten(0, 1)
    out = attn.to_out(attn.to_v(context))  # (B, 1, C)
    if torch.is_grad_enabled():
        skipped = (*attn.to_q.parameters(), *attn.to_k.parameters(), norm.weight, norm.bias)  # + a LoRA's A, B
        out = out + sum(p.sum() for p in skipped if p is not None and p.requires_grad) * 0.0
    return (x.unflatten(0, (-1, groups)) + out[:, None]).flatten(0, 1)


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020): ``a * gelu(b)`` with ``[a, b] = proj(x)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two matmuls on the weight halves rather than one matmul then chunk: the same sums, but the backward
        # adds two (N, C) input gradients instead of concatenating two (N, 4C) output gradients (~25% faster).
        w, b = self.proj.weight, self.proj.bias
        half = w.shape[0] // 2
        return F.linear(x, w[:half], b[:half]) * F.gelu(F.linear(x, w[half:], b[half:]))


class FeedForward(nn.Module):
    """GEGLU MLP with hidden size ``mult * dim``; ``net.0.proj`` and ``net.2`` match the official keys."""

    def __init__(self, dim: int, *, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim_out or dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention and GEGLU feed-forward, each residual (SD 2.1 spatial block)."""

    def __init__(self, dim: int, *, heads: int, dim_head: int, context_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=heads, dim_head=dim_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=heads, dim_head=dim_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # In-place residual adds on fresh Linear outputs (their backward does not need them): no extra buffer.
        x = self.attn1(self.norm1(x)).add_(x)
        x = cross_attention_residual(x, self.attn2, self.norm2, context)
        return self.ff(self.norm3(x)).add_(x)
