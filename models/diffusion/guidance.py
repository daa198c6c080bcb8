"""Classifier-free guidance on denoiser outputs (Ho & Salimans 2022; Blattmann et al. 2023, arXiv 2311.15127, Eq 5):

    D_w(x; sigma, c) = D(x; sigma, uc) + w (D(x; sigma, c) - D(x; sigma, uc)) = w D(c) - (w - 1) D(uc).

Batch layout as in sgm: ``prepare_inputs`` stacks the unconditional and conditional halves as [uc; c] along the
batch, so one network call evaluates both; ``__call__`` splits the stacked prediction and combines it.
``LinearPredictionGuider`` uses a per-frame scale w_t = linspace(min_scale, max_scale, T)_t (SVD App D.4.1), rising
over the frames of (B*T, C, H, W) predictions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch

from .util import append_dims

GuidedInputs = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]

# Keys whose uc and c values differ and are stacked; any other key must be identical in both.
STACKED_KEYS = ("crossattn", "vector", "concat")


class Guider(ABC):
    """Lays out the network's batch (``prepare_inputs``) and combines its prediction (``__call__``).

    A guider with ``stacks_uncond = True`` has the network evaluate [uc; c] (batch 2B) and gets the stacked
    prediction; otherwise the network sees (x, sigma, cond) as given.
    """

    stacks_uncond = False

    def prepare_inputs(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: Mapping[str, torch.Tensor],
        uncond: Mapping[str, torch.Tensor] | None = None,
    ) -> GuidedInputs:
        """(x, sigma, cond) of batch B -> batch 2B laid out [uc; c] if ``stacks_uncond``, else unchanged."""
        if not self.stacks_uncond:
            return x, sigma, dict(cond)
        if uncond is None:
            raise ValueError("classifier-free guidance needs `uncond`; pass it, or use IdentityGuider for no guidance")
        if set(cond) != set(uncond):
            raise ValueError(f"cond keys {sorted(cond)} and uncond keys {sorted(uncond)} must match")
        both = {}
        for key, value in cond.items():
            if key in STACKED_KEYS:
                both[key] = torch.cat([uncond[key], value], dim=0)
            elif torch.equal(uncond[key], value):
                both[key] = value
            else:
                raise ValueError(f"cond[{key!r}] differs between cond and uncond; only {STACKED_KEYS} may differ")
        return torch.cat([x, x]), torch.cat([sigma, sigma]), both

    @abstractmethod
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


class IdentityGuider(Guider):
    """No guidance: the conditional prediction as is."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x


class VanillaCFG(Guider):
    """x_u + scale (x_c - x_u) on the stacked [uc; c] prediction (Eq 5 with w = scale)."""

    stacks_uncond = True

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x_u, x_c = x.chunk(2)
        return x_u + self.scale * (x_c - x_u)


class LinearPredictionGuider(VanillaCFG):
    """Per-frame CFG: frame t of each video gets scale linspace(min_scale, max_scale, num_frames)_t (SVD App D.4.1).

    Predictions are (2*B*T, C, ...) with frames of a video consecutive. SVD: 1.0 -> 2.5; SVD-XT: 1.5 -> 3.0.
    """

    def __init__(self, max_scale: float, *, num_frames: int, min_scale: float = 1.0) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames={num_frames} must be >= 1 (14 for SVD, 25 for SVD-XT)")
        super().__init__(max_scale)
        self.max_scale = max_scale
        self.min_scale = min_scale
        self.num_frames = num_frames
        self.scales = torch.linspace(min_scale, max_scale, num_frames)  # (T,)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x_u, x_c = x.chunk(2)
        if x_u.shape[0] % self.num_frames:
            raise ValueError(f"batch {x_u.shape[0]} is not a multiple of num_frames={self.num_frames}")
        # (T,) -> (B*T,) -> (B*T, 1, 1, 1)
        scale = self.scales.to(device=x.device, dtype=x.dtype).repeat(x_u.shape[0] // self.num_frames)
        return x_u + append_dims(scale, x_u.ndim) * (x_c - x_u)
