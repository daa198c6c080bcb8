"""Loss weights lambda(sigma) of the denoising objective E[lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2].

Karras et al. 2022 (EDM, arXiv 2206.00364) Eq 8 / Table 1: lambda = (s^2 + sd^2) / (s sd)^2 = 1 / c_out^2, which
makes the effective loss on F unit-weighted. Blattmann et al. 2023 (SVD, arXiv 2311.15127) Eq 3 / App D.2 uses
sigma_data = 1: lambda = (1 + s^2) / s^2 (``VWeighting``), so that w c_out^2 = 1 with ``VScalingWithEDMcNoise``.
Each weighting maps sigma of any shape to a tensor of the same shape.
"""

from __future__ import annotations

from typing import Protocol

import torch


class LossWeighting(Protocol):
    def __call__(self, sigma: torch.Tensor) -> torch.Tensor: ...


class EDMWeighting:
    """lambda(s) = (s^2 + sd^2) / (s sd)^2 (EDM Table 1)."""

    def __init__(self, sigma_data: float = 0.5) -> None:
        if sigma_data <= 0:
            raise ValueError(f"sigma_data={sigma_data} must be positive (EDM uses 0.5; SVD's v-weighting uses 1)")
        self.sigma_data = sigma_data

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


class VWeighting(EDMWeighting):
    """lambda(s) = (1 + s^2) / s^2, i.e. ``EDMWeighting(sigma_data=1)`` (SVD App D.2)."""

    def __init__(self) -> None:
        super().__init__(sigma_data=1.0)


class UnitWeighting:
    """lambda(s) = 1."""

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(sigma)
