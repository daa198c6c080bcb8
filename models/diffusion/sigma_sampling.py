"""Training noise-level distributions p(sigma).

``EDMSampling``: ln sigma ~ N(p_mean, p_std^2) (Karras et al. 2022, arXiv 2206.00364, Sec 5 / Table 1 "training";
Blattmann et al. 2023, arXiv 2311.15127, App D.2 and the per-stage values of App D.3-D.5, e.g. (1.0, 1.6) for the
SVD high-resolution I2V finetune). The code default (-1.2, 1.2) is EDM's image setting.

The conditioning-frame noise augmentation of SVD App D.4, ln sigma_aug ~ N(-3.0, 0.5^2), is the same distribution:
use ``EDMSampling(p_mean=-3.0, p_std=0.5)`` for ``cond_aug``.

``DiscreteSampling``: sigma uniform over the 1000 SD 2.1 DDPM sigmas (SVD App D.2 Eqs 6-9, p(sigma) of SD 2.1).

Samples are drawn on the generator's device and moved to ``device`` so a seeded CPU generator reproduces exactly.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .ddpm_schedule import SD21_LINEAR_END, SD21_LINEAR_START, SD21_NUM_TIMESTEPS, discrete_sigmas
from .util import randn


class SigmaSampler(Protocol):
    def __call__(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor: ...


class EDMSampling:
    """ln sigma ~ N(p_mean, p_std^2); returns (n,) float32 sigmas."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2) -> None:
        if p_std <= 0:
            raise ValueError(f"p_std={p_std} must be positive (it is the std of ln sigma)")
        self.p_mean = p_mean
        self.p_std = p_std

    def __call__(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        log_sigma = self.p_mean + self.p_std * randn((n,), generator=generator, device=device)
        return log_sigma.exp()


class DiscreteSampling:
    """sigma = sigmas[j], j ~ U{0, ..., num_idx - 1}, over the SD 2.1 DDPM sigmas; returns (n,) float32 sigmas."""

    def __init__(
        self,
        num_idx: int = SD21_NUM_TIMESTEPS,
        *,
        linear_start: float = SD21_LINEAR_START,
        linear_end: float = SD21_LINEAR_END,
    ) -> None:
        self.num_idx = num_idx
        self.sigmas = discrete_sigmas(num_idx, linear_start=linear_start, linear_end=linear_end)

    def __call__(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        draw_device = generator.device if generator is not None else None
        idx = torch.randint(0, self.num_idx, (n,), generator=generator, device=draw_device)
        return self.sigmas[idx.cpu()].to(device)
