"""Run every embedder on its batch entry and route the outputs by rank (sgm's ``GeneralConditioner``).

Routing (RECIPE 2): a 2-D output goes to ``"vector"`` (concatenated on dim 1), 3-D to ``"crossattn"`` (dim 2),
4-D or 5-D to ``"concat"`` (dim 1). Outputs of the same kind are concatenated in embedder order, so the order of
the specs fixes both the state-dict keys (``embedders.N.*``) and the layout of the ``vector``.

Classifier-free-guidance dropout: each embedder with ``ucg_rate > 0`` drops each sample independently with that
probability. By default a dropped sample's embedding is zeroed (what sgm does for every SVD embedder). With
``ucg_value`` set, the dropped samples' *inputs* are replaced by that value before embedding instead (sgm's
``legacy_ucg_value``); the text presets use ``ucg_value=""`` so that a dropped caption is the empty-prompt
embedding, the same unconditional context SD 2.1 sampling uses. All randomness comes from ``generator``.

Precomputed embeddings: an embedder with a ``cached_key`` (SVD's CLIP image embedder: ``clip_image_embedding``,
what ``scripts/cache_latents.py`` stores) takes the batch's ``cached_key`` entry through its ``embed_cached``
instead of running on ``input_key`` when the batch carries it; ucg dropout and forced zeros then apply to the
result exactly as to a fresh embedding (the same generator draws), so both paths give the same conditioning.
Whether the cached values were made by this embedder is the caller's check (``fingerprint()`` of the embedder
against the one the cache records; ``train.conditioning.cached_clip_embedding``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

OUTPUT_RANK_TO_KEY = {2: "vector", 3: "crossattn", 4: "concat", 5: "concat"}
KEY_TO_CAT_DIM = {"vector": 1, "crossattn": 2, "concat": 1}


@dataclass
class EmbedderSpec:
    """One embedder of a ``GeneralConditioner`` and how it is fed (sgm's ``emb_models`` entries)."""

    module: nn.Module
    input_key: str
    ucg_rate: float = 0.0
    is_trainable: bool = False
    # Replace dropped *inputs* by this value (e.g. "" for captions) instead of zeroing dropped embeddings.
    ucg_value: Any = None
    # A batch entry with this embedder's precomputed outputs (see the module docstring); the module needs
    # ``embed_cached(value)`` and ``fingerprint()``.
    cached_key: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.ucg_rate <= 1.0:
            raise ValueError(f"ucg_rate={self.ucg_rate} for {self.input_key!r} must be a probability in [0, 1]")
        if self.cached_key is None:
            return
        if self.is_trainable or self.ucg_value is not None:
            raise ValueError(
                f"cached_key={self.cached_key!r} needs a frozen embedder whose dropped samples are zeroed "
                "(is_trainable=False, ucg_value=None): precomputed embeddings cannot follow trained weights or "
                "replaced inputs"
            )
        if not hasattr(self.module, "embed_cached") or not hasattr(self.module, "fingerprint"):
            raise ValueError(f"{type(self.module).__name__} has no embed_cached/fingerprint; it cannot take cached_key")


def _keep_mask(n: int, rate: float, *, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``(n,)`` bool, True with probability ``1 - rate``; drawn on the generator's device for reproducibility."""
    draw_device = generator.device if generator is not None else device
    return (torch.rand(n, generator=generator, device=draw_device) >= rate).to(device)


def _replace_dropped_inputs(value: Any, keep: torch.Tensor, fill: Any) -> Any:
    if isinstance(value, torch.Tensor):
        mask = keep.to(value.device).reshape(-1, *([1] * (value.ndim - 1)))
        return torch.where(mask, value, torch.as_tensor(fill, dtype=value.dtype, device=value.device))
    return [v if k else fill for v, k in zip(value, keep.tolist(), strict=True)]


class GeneralConditioner(nn.Module):
    """``batch -> {"vector": (B, V), "crossattn": (B, N, D), "concat": (B, C, h, w)}``.

    Non-trainable embedders are frozen (``requires_grad=False``, kept in eval mode) and run under ``no_grad``.
    ``specs[i]`` holds the input key, ucg rate and trainability of ``embedders[i]``; forward always calls
    ``embedders[i]`` (so wrapping it from outside, e.g. for sharding, is picked up), not ``specs[i].module``.
    """

    def __init__(self, embedders: Sequence[EmbedderSpec]) -> None:
        super().__init__()
        if not embedders:
            raise ValueError("GeneralConditioner needs at least one EmbedderSpec")
        self.specs = list(embedders)
        self.embedders = nn.ModuleList(spec.module for spec in self.specs)
        for spec in self.specs:
            params = list(spec.module.parameters())
            if spec.is_trainable and params and not any(p.requires_grad for p in params):
                raise ValueError(
                    f"embedder for {spec.input_key!r} is_trainable=True but all its parameters are frozen; "
                    "build it with freeze=False"
                )
            if not spec.is_trainable:
                spec.module.requires_grad_(False)
                spec.module.eval()

    def train(self, mode: bool = True) -> GeneralConditioner:
        super().train(mode)
        for module, spec in zip(self.embedders, self.specs, strict=True):
            if not spec.is_trainable:
                module.eval()
        return self

    @property
    def input_keys(self) -> list[str]:
        return [spec.input_key for spec in self.specs]

    def cached_embedders(self) -> dict[str, nn.Module]:
        """``cached_key -> embedder`` for the embedders that can take precomputed outputs."""
        return {s.cached_key: m for m, s in zip(self.embedders, self.specs, strict=True) if s.cached_key is not None}

    def _embed_one(
        self,
        module: nn.Module,
        spec: EmbedderSpec,
        batch: Mapping[str, Any],
        *,
        ucg: bool,
        generator: torch.Generator | None,
    ) -> list[torch.Tensor]:
        if spec.cached_key is not None and batch.get(spec.cached_key) is not None:
            with torch.no_grad():  # a cached_key embedder is frozen (EmbedderSpec checks)
                out = module.embed_cached(batch[spec.cached_key])
            return self._drop(
                list(out) if isinstance(out, (list, tuple)) else [out], spec, ucg=ucg, generator=generator
            )
        if spec.input_key not in batch:
            raise ValueError(
                f"batch has no {spec.input_key!r} for {type(module).__name__}; batch keys: {sorted(batch)}"
            )
        value = batch[spec.input_key]
        drop_inputs = ucg and spec.ucg_rate > 0.0 and spec.ucg_value is not None
        if drop_inputs:
            device = value.device if isinstance(value, torch.Tensor) else torch.device("cpu")
            keep = _keep_mask(len(value), spec.ucg_rate, generator=generator, device=device)
            value = _replace_dropped_inputs(value, keep, spec.ucg_value)
        with nullcontext() if spec.is_trainable else torch.no_grad():
            out = module(value)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        return outs if drop_inputs else self._drop(outs, spec, ucg=ucg, generator=generator)

    @staticmethod
    def _drop(
        outs: list[torch.Tensor], spec: EmbedderSpec, *, ucg: bool, generator: torch.Generator | None
    ) -> list[torch.Tensor]:
        """Zero each sample's outputs with probability ``spec.ucg_rate`` (ucg dropout on the embeddings)."""
        if ucg and spec.ucg_rate > 0.0:
            keep = _keep_mask(outs[0].shape[0], spec.ucg_rate, generator=generator, device=outs[0].device)
            outs = [o * keep.reshape(-1, *([1] * (o.ndim - 1))).to(o.dtype) for o in outs]
        return outs

    def _run(
        self,
        batch: Mapping[str, Any],
        *,
        ucg: bool,
        generator: torch.Generator | None,
        force_zero_embeddings: Iterable[str] | None,
    ) -> dict[str, torch.Tensor]:
        zero_keys = set(force_zero_embeddings or ())
        unknown = zero_keys - set(self.input_keys)
        if unknown:
            raise ValueError(
                f"force_zero_embeddings {sorted(unknown)} are not input keys; choose from {self.input_keys}"
            )
        output: dict[str, torch.Tensor] = {}
        for module, spec in zip(self.embedders, self.specs, strict=True):
            for emb in self._embed_one(module, spec, batch, ucg=ucg, generator=generator):
                key = OUTPUT_RANK_TO_KEY.get(emb.ndim)
                if key is None:
                    raise ValueError(
                        f"{type(module).__name__} ({spec.input_key!r}) returned a {emb.ndim}-D tensor; "
                        "embedders must return 2-D (vector), 3-D (crossattn) or 4/5-D (concat) outputs"
                    )
                if spec.input_key in zero_keys:
                    emb = torch.zeros_like(emb)
                output[key] = torch.cat((output[key], emb), KEY_TO_CAT_DIM[key]) if key in output else emb
        return output

    def forward(
        self,
        batch: Mapping[str, Any],
        *,
        generator: torch.Generator | None = None,
        force_zero_embeddings: Iterable[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Embed ``batch`` with ucg dropout; ``force_zero_embeddings`` zeroes the listed input keys' outputs."""
        return self._run(batch, ucg=True, generator=generator, force_zero_embeddings=force_zero_embeddings)

    def get_unconditional_conditioning(
        self,
        batch_c: Mapping[str, Any],
        batch_uc: Mapping[str, Any] | None = None,
        *,
        force_uc_zero_embeddings: Iterable[str] | None = None,
        force_cond_zero_embeddings: Iterable[str] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(c, uc)`` for classifier-free guidance, without ucg dropout.

        ``uc`` embeds ``batch_uc`` (default ``batch_c``) with ``force_uc_zero_embeddings`` zeroed; for SVD sampling
        that is ``("cond_frames", "cond_frames_without_noise")``, keeping fps / motion / cond_aug in the vector.
        """
        c = self._run(batch_c, ucg=False, generator=None, force_zero_embeddings=force_cond_zero_embeddings)
        uc_batch = batch_c if batch_uc is None else batch_uc
        uc = self._run(uc_batch, ucg=False, generator=None, force_zero_embeddings=force_uc_zero_embeddings)
        return c, uc
