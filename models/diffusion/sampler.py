"""Euler sampling of the probability-flow ODE with optional churn: Karras et al. 2022 (EDM, arXiv 2206.00364)
Algorithm 2 without the second-order (Heun) correction, as k-diffusion's ``sample_euler`` and sgm's
``EulerEDMSampler``:

    gamma_i = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax else 0
    sigma_hat = sigma_i (1 + gamma_i);  x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) S_noise eps
    d = (x_hat - D(x_hat; sigma_hat)) / sigma_hat;  x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d

With s_churn = 0 (SVD's setting) this is the deterministic Euler solver. The start is x_0 = eps sqrt(1 + sigma_0^2)
as in sgm (the data variance 1 of the v-scaling added to sigma_0^2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass

import torch
from tqdm.auto import tqdm

from .discretization import Discretization
from .guidance import Guider
from .util import append_dims, randn

# denoise(x, sigma, cond) -> D(x; sigma, cond); x (N, ...), sigma (N,), with N the guider-stacked batch.
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]


@dataclass(eq=False)
class EulerEDMSampler:
    """Call as ``sampler(denoise, cond, uncond, shape=..., generator=...)`` -> x at sigma = 0, shape ``shape``."""

    discretization: Discretization
    _: KW_ONLY
    guider: Guider
    num_steps: int
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps} must be >= 1 (SVD uses 25, SVD-XT 30)")
        if self.s_churn < 0:
            raise ValueError(f"s_churn={self.s_churn} must be >= 0 (0 gives the deterministic Euler solver)")

    def guided_denoise(
        self,
        denoise: DenoiseFn,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: Mapping[str, torch.Tensor],
        uncond: Mapping[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        x_in, sigma_in, cond_in = self.guider.prepare_inputs(x, sigma, cond, uncond)
        return self.guider(denoise(x_in, sigma_in, cond_in), sigma_in)

    @torch.no_grad()
    def __call__(
        self,
        denoise: DenoiseFn,
        cond: Mapping[str, torch.Tensor],
        uncond: Mapping[str, torch.Tensor] | None = None,
        *,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        progress: bool = False,
    ) -> torch.Tensor:
        sigmas = self.discretization(self.num_steps, device=device, append_zero=True)  # (num_steps + 1,)
        x = randn(shape, generator=generator, device=device, dtype=dtype) * torch.sqrt(1.0 + sigmas[0] ** 2)
        # sigma stays float32 whatever dtype x has: bf16 cannot resolve sigma_min = 0.002 next to 700.
        ones = torch.ones(x.shape[0], device=x.device, dtype=torch.float32)
        for i in tqdm(range(self.num_steps), disable=not progress, desc="Euler EDM"):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            gamma = 0.0
            if self.s_tmin <= sigma.item() <= self.s_tmax:
                gamma = min(self.s_churn / self.num_steps, math.sqrt(2.0) - 1.0)
            sigma_hat = sigma * (1.0 + gamma)
            if gamma > 0:
                eps = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * self.s_noise
                x = (x + eps * (sigma_hat**2 - sigma**2).sqrt()).to(dtype)
            denoised = self.guided_denoise(denoise, x, ones * sigma_hat, cond, uncond)
            d = (x - denoised) / append_dims(ones * sigma_hat, x.ndim)
            x = (x + (sigma_next - sigma_hat) * d).to(dtype)
        return x
