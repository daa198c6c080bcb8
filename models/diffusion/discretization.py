"""Sampling-time noise levels sigma_0 > sigma_1 > ... > sigma_{n-1} > sigma_n = 0.

``EDMDiscretization``: Karras et al. 2022 (arXiv 2206.00364) Eq 5,
    sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  i = 0..n-1,  sigma_n = 0.
SVD samples with sigma_min 0.002, sigma_max 700 (not EDM's 80), rho 7 (RECIPE 3).

``LegacyDDPMDiscretization``: n of the 1000 SD 2.1 DDPM sigmas at roughly equal timestep spacing (sgm's
``generate_roughly_equally_spaced_steps``), decreasing, then 0.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .ddpm_schedule import SD21_LINEAR_END, SD21_LINEAR_START, SD21_NUM_TIMESTEPS, discrete_sigmas


class Discretization(Protocol):
    def __call__(
        self, n: int, *, device: torch.device | str | None = None, append_zero: bool = True
    ) -> torch.Tensor: ...


def _finish(sigmas: torch.Tensor, *, device: torch.device | str | None, append_zero: bool) -> torch.Tensor:
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(device)


class EDMDiscretization:
    """Karras Eq 5; returns (n + 1,) float32 decreasing sigmas ending in 0 (or (n,) without the zero)."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        if rho <= 0:
            raise ValueError(f"rho={rho} must be positive (EDM uses 7)")
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.rho = rho

    def __call__(self, n: int, *, device: torch.device | str | None = None, append_zero: bool = True) -> torch.Tensor:
        if n < 2:
            raise ValueError(f"n={n}; Eq 5 needs at least 2 noise levels (SVD samples with 25 or 30)")
        # float64 so the endpoints come out as sigma_max and sigma_min to float32 precision.
        ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
        max_inv_rho = self.sigma_max ** (1.0 / self.rho)
        min_inv_rho = self.sigma_min ** (1.0 / self.rho)
        sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** self.rho
        return _finish(sigmas.float(), device=device, append_zero=append_zero)


class LegacyDDPMDiscretization:
    """n of the ``num_timesteps`` DDPM sigmas (timesteps roughly equally spaced, as sgm), decreasing, then 0."""

    def __init__(
        self,
        *,
        linear_start: float = SD21_LINEAR_START,
        linear_end: float = SD21_LINEAR_END,
        num_timesteps: int = SD21_NUM_TIMESTEPS,
    ) -> None:
        self.num_timesteps = num_timesteps
        self.sigmas = discrete_sigmas(num_timesteps, linear_start=linear_start, linear_end=linear_end)

    def __call__(self, n: int, *, device: torch.device | str | None = None, append_zero: bool = True) -> torch.Tensor:
        if not 1 <= n <= self.num_timesteps:
            raise ValueError(f"n={n}; pick between 1 and num_timesteps={self.num_timesteps} steps")
        # sgm: np.linspace(T - 1, 0, n, endpoint=False).astype(int), i.e. T-1 first and truncation toward 0.
        idx = torch.linspace(self.num_timesteps - 1, 0, n + 1, dtype=torch.float64)[:-1].long()
        return _finish(self.sigmas[idx], device=device, append_zero=append_zero)
