"""The preconditioned denoiser D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x; c_noise(s)).

Karras et al. 2022 (EDM, arXiv 2206.00364) Eq 7; Blattmann et al. 2023 (SVD, arXiv 2311.15127) App D.2 Eq 11 with
the coefficients of ``scaling.py``. ``DiscreteDenoiser`` is SD 2.1 in EDM form (SVD App D.2 Eqs 6-9): sigma is
snapped to the nearest of the 1000 DDPM sigmas and c_noise is that sigma's index, i.e. the DDPM timestep t.

Conditioning ``cond`` is the conditioner's dict (RECIPE 2): ``crossattn`` -> network ``context=``, ``vector`` ->
``y=``, ``concat`` -> concatenated to the network input along channels AFTER the c_in scaling, as sgm's
``OpenAIWrapper`` does, so the conditioning latent reaches the network unscaled. ``concat`` has one row per frame:
i2v's one latent repeated over the frames, frame interpolation's per-frame sequence (``train.conditioning.per_frame``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .ddpm_schedule import SD21_LINEAR_END, SD21_LINEAR_START, SD21_NUM_TIMESTEPS, discrete_sigmas
from .scaling import DenoiserScaling, VScaling
from .util import append_dims

# network(x_in, c_noise, context=..., y=..., **network_kwargs) -> F, same shape as the noisy part of x_in.
Network = Callable[..., torch.Tensor]

COND_KEYS = ("crossattn", "vector", "concat")


class Denoiser(nn.Module):
    """Continuous-sigma denoiser. Call as ``denoiser(network, x, sigma, cond, **network_kwargs)``.

    x: (B, C, ...) noisy input x0 + sigma n; sigma: (B,) or a scalar; returns D(x; sigma) shaped and typed like x.
    """

    def __init__(self, scaling: DenoiserScaling) -> None:
        super().__init__()
        self.scaling = scaling

    def quantize_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def map_c_noise(self, c_noise: torch.Tensor) -> torch.Tensor:
        return c_noise

    def forward(
        self,
        network: Network,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        cond: Mapping[str, torch.Tensor] | None = None,
        **network_kwargs: Any,
    ) -> torch.Tensor:
        cond = {} if cond is None else cond
        unknown = set(cond) - set(COND_KEYS)
        if unknown:
            raise ValueError(f"unknown cond keys {sorted(unknown)}; the denoiser routes only {COND_KEYS}")
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma has shape {tuple(sigma.shape)}; pass one sigma per sample, shape ({x.shape[0]},)")
        sigma = self.quantize_sigma(sigma)
        c_skip, c_out, c_in, c_noise = self.scaling(sigma)
        c_skip, c_out, c_in = (append_dims(c, x.ndim).to(x.dtype) for c in (c_skip, c_out, c_in))

        x_in = x * c_in
        if "concat" in cond:
            # (B, C, ...) + (B, C_cond, ...) -> (B, C + C_cond, ...); the cond latent is deliberately not scaled.
            x_in = torch.cat([x_in, cond["concat"].to(x_in.dtype)], dim=1)
        routed = {"context": cond.get("crossattn"), "y": cond.get("vector")}
        routed = {k: v for k, v in routed.items() if v is not None}
        out = network(x_in, self.map_c_noise(c_noise), **routed, **network_kwargs)
        return c_skip * x + c_out * out


class DiscreteDenoiser(Denoiser):
    """SD 2.1 in EDM form (SVD App D.2 Eqs 6-9): sigma -> nearest DDPM sigma_j, c_noise = j (a long tensor).

    ``sigmas`` is the increasing (num_idx,) buffer built from the scaled-linear betas (``ddpm_schedule.py``).
    With ``quantize_c_noise=False`` the network gets the (quantised) sigma itself as c_noise.
    """

    sigmas: torch.Tensor

    def __init__(
        self,
        scaling: DenoiserScaling | None = None,
        *,
        num_idx: int = SD21_NUM_TIMESTEPS,
        linear_start: float = SD21_LINEAR_START,
        linear_end: float = SD21_LINEAR_END,
        quantize_c_noise: bool = True,
    ) -> None:
        super().__init__(VScaling() if scaling is None else scaling)
        # Persistent, like sgm's DiscreteDenoiser, so the state dict has sgm's ``denoiser.sigmas`` key.
        self.register_buffer("sigmas", discrete_sigmas(num_idx, linear_start=linear_start, linear_end=linear_end))
        self.quantize_c_noise = quantize_c_noise

    def sigma_to_idx(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index of the nearest discrete sigma, same shape as sigma (long)."""
        dists = (sigma.reshape(1, -1).to(self.sigmas) - self.sigmas[:, None]).abs()  # (num_idx, N)
        return dists.argmin(dim=0).reshape(sigma.shape)

    def idx_to_sigma(self, idx: torch.Tensor) -> torch.Tensor:
        return self.sigmas[idx]

    def quantize_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.idx_to_sigma(self.sigma_to_idx(sigma))

    def map_c_noise(self, c_noise: torch.Tensor) -> torch.Tensor:
        return self.sigma_to_idx(c_noise) if self.quantize_c_noise else c_noise
