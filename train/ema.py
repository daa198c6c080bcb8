"""Exponential moving average of the trained weights (sgm ``LitEma``; RECIPE 5: decay 0.9999).

    decay_n = min(decay, (1 + n) / (10 + n))   (warm-up, n = number of updates so far)
    ema <- decay_n * ema + (1 - decay_n) * param

The shadow weights are fp32 buffers of an ``nn.Module``, so they travel in the training checkpoint with the
model; exports and sample videos use them through ``swapped_into``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn


def _buffer_name(name: str) -> str:
    return name.replace(".", "__")


class EMA(nn.Module):
    """Shadow copies of named parameters; ``update`` after each optimizer step."""

    def __init__(self, named_params: Iterable[tuple[str, nn.Parameter]], *, decay: float = 0.9999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay={decay} must be in [0, 1); the recipe uses 0.9999")
        self.decay = decay
        self.warmup = warmup
        self.names: list[str] = []
        for name, param in named_params:
            self.names.append(name)
            self.register_buffer(_buffer_name(name), param.detach().float().clone())
        if not self.names:
            raise ValueError("EMA over zero parameters: the stage trains nothing; check stage.trainable")
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def shadow(self, name: str) -> torch.Tensor:
        return getattr(self, _buffer_name(name))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, named_params: Iterable[tuple[str, nn.Parameter]]) -> None:
        decay = self.current_decay()
        params = dict(named_params)
        if set(params) != set(self.names):
            raise ValueError("EMA.update got other parameters than it was built with")
        shadows = [self.shadow(n) for n in self.names]
        values = [params[n].detach().to(s.dtype) for n, s in zip(self.names, shadows, strict=True)]
        torch._foreach_lerp_(shadows, values, 1.0 - decay)
        self.num_updates += 1

    @contextlib.contextmanager
    def swapped_into(self, named_params: Iterable[tuple[str, nn.Parameter]]) -> Iterator[None]:
        """Temporarily give the parameters their EMA values (for exports and sampling), then restore them."""
        params = dict(named_params)
        saved = {n: params[n].detach().clone() for n in self.names}
        try:
            with torch.no_grad():
                for n in self.names:
                    params[n].copy_(self.shadow(n).to(params[n].dtype))
            yield
        finally:
            with torch.no_grad():
                for n in self.names:
                    params[n].copy_(saved[n])
