"""Denoiser preconditioning: (c_skip, c_out, c_in, c_noise) of D(x; s) = c_skip x + c_out F(c_in x; c_noise).

Karras et al. 2022 (EDM, arXiv 2206.00364) Eq 7 and Table 1; Blattmann et al. 2023 (SVD, arXiv 2311.15127)
App D.2 Eqs 6-9 (SD 2.1 in EDM form) and Eqs 11-14 (the SVD preconditioning). Every scaling maps sigma of any
shape to four tensors of that same shape; the denoiser broadcasts them.
"""

from __future__ import annotations

from typing import Protocol

import torch

ScalingCoefficients = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class DenoiserScaling(Protocol):
    def __call__(self, sigma: torch.Tensor) -> ScalingCoefficients: ...


class EDMScaling:
    """Plain EDM preconditioning (Karras et al. 2022, Table 1 / Eq 7), F predicts a mix of x0 and noise.

    c_skip = sd^2 / (s^2 + sd^2),  c_out = s sd / sqrt(s^2 + sd^2),  c_in = 1 / sqrt(s^2 + sd^2),  c_noise = ln(s) / 4.
    """

    def __init__(self, sigma_data: float = 0.5) -> None:
        if sigma_data <= 0:
            raise ValueError(f"sigma_data={sigma_data} must be positive (EDM uses 0.5 for images in [-1, 1])")
        self.sigma_data = sigma_data

    def __call__(self, sigma: torch.Tensor) -> ScalingCoefficients:
        sd2 = self.sigma_data**2
        denom = sigma**2 + sd2
        c_skip = sd2 / denom
        c_out = sigma * self.sigma_data / denom.sqrt()
        c_in = 1.0 / denom.sqrt()
        c_noise = 0.25 * sigma.log()
        return c_skip, c_out, c_in, c_noise


class VScalingWithEDMcNoise:
    """The SVD preconditioning (Blattmann et al. 2023, App D.2 Eqs 11-14): EDM with sigma_data = 1 and the
    v-parameterisation of progressive distillation (Salimans & Ho 2022), with EDM's continuous c_noise.

    c_skip = 1 / (s^2 + 1),  c_out = -s / sqrt(s^2 + 1),  c_in = 1 / sqrt(s^2 + 1),  c_noise = ln(s) / 4.
    F then predicts v = (n - s x0) / sqrt(1 + s^2) for x = x0 + s n.
    """

    def __call__(self, sigma: torch.Tensor) -> ScalingCoefficients:
        denom = sigma**2 + 1.0
        c_skip = 1.0 / denom
        c_out = -sigma / denom.sqrt()
        c_in = 1.0 / denom.sqrt()
        c_noise = 0.25 * sigma.log()
        return c_skip, c_out, c_in, c_noise


class VScaling:
    """SD 2.1 (768-v) discrete v-prediction in EDM form: the coefficients of ``VScalingWithEDMcNoise`` with
    c_noise = sigma itself, which ``DiscreteDenoiser`` maps to the index of the nearest of the 1000 DDPM sigmas
    (Blattmann et al. 2023, App D.2; Salimans & Ho 2022 for v).
    """

    def __call__(self, sigma: torch.Tensor) -> ScalingCoefficients:
        denom = sigma**2 + 1.0
        c_skip = 1.0 / denom
        c_out = -sigma / denom.sqrt()
        c_in = 1.0 / denom.sqrt()
        return c_skip, c_out, c_in, sigma.clone()


class EpsScaling:
    """Discrete eps-prediction in EDM form (Blattmann et al. 2023, App D.2 Eqs 6-9): c_skip = 1, c_out = -s,
    c_in = 1 / sqrt(s^2 + 1), c_noise = sigma (quantised to a DDPM index by ``DiscreteDenoiser``).
    """

    def __call__(self, sigma: torch.Tensor) -> ScalingCoefficients:
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1.0 / (sigma**2 + 1.0).sqrt()
        return c_skip, c_out, c_in, sigma.clone()
