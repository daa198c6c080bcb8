"""OpenCLIP text token features (SD 2.1 ``cond_stage_model``, the T2V base model's crossattn context).

Mirrors ldm's ``FrozenOpenCLIPEmbedder`` (``layer="penultimate"`` in the SD 2.x configs): the state dict is
``model.*`` = open_clip ViT-H-14 without ``visual``, all 24 text layers kept although the last one is unused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from models.conditioners.open_clip_factory import build_open_clip, freeze_

TextLayer = Literal["last", "penultimate"]


class FrozenOpenCLIPEmbedder(nn.Module):
    """Captions -> ``(B, context_length, width)`` token features (``(B, 77, 1024)`` for ViT-H-14).

    ``layer="penultimate"`` runs the text transformer up to (not including) its last residual block, then
    ``ln_final``; ``"last"`` runs all blocks. No pooling, no projection. Accepts strings (tokenised with
    ``open_clip.tokenize``) or already tokenised ``(B, context_length)`` integer tensors.
    """

    def __init__(
        self,
        arch: str | Mapping[str, Any] = "ViT-H-14",
        *,
        pretrained: str | None = None,
        layer: TextLayer = "penultimate",
        freeze: bool = True,
    ) -> None:
        super().__init__()
        if layer not in ("last", "penultimate"):
            raise ValueError(f"layer={layer!r}; choose 'last' or 'penultimate'")
        self.model = build_open_clip(arch, pretrained=pretrained, drop_tower="visual")
        self.layer = layer
        self.layer_idx = 0 if layer == "last" else 1
        self.frozen = freeze
        if freeze:
            freeze_(self)

    def train(self, mode: bool = True) -> FrozenOpenCLIPEmbedder:
        # A frozen embedder stays in eval mode when a parent module is put in training mode.
        return super().train(mode and not self.frozen)

    @property
    def context_length(self) -> int:
        return int(self.model.positional_embedding.shape[0])

    def tokenize(self, text: str | Sequence[str]) -> torch.Tensor:
        """``open_clip.tokenize`` (BPE, SOT/EOT, zero padding, truncation) -> ``(B, context_length)`` int64."""
        import open_clip

        return open_clip.tokenize([text] if isinstance(text, str) else list(text), context_length=self.context_length)

    def encode_with_transformer(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.token_embedding(tokens) + m.positional_embedding  # (B, L, D)
        batch_first = getattr(m.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)  # (L, B, D)
        blocks = m.transformer.resblocks
        for block in list(blocks)[: len(blocks) - self.layer_idx]:
            x = block(x, attn_mask=m.attn_mask)
        if not batch_first:
            x = x.transpose(0, 1)
        return m.ln_final(x)

    def forward(self, text: str | Sequence[str] | torch.Tensor) -> torch.Tensor:
        tokens = text if isinstance(text, torch.Tensor) else self.tokenize(text)
        if tokens.ndim != 2 or tokens.shape[1] != self.context_length:
            raise ValueError(f"expected tokens (B, {self.context_length}), got shape {tuple(tokens.shape)}")
        return self.encode_with_transformer(tokens.to(self.model.token_embedding.weight.device))
