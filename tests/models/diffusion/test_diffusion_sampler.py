"""Euler EDM sampler on toy problems with exact denoisers."""

from __future__ import annotations

import pytest
import torch

from models.diffusion import EDMDiscretization, EulerEDMSampler, IdentityGuider, VanillaCFG


def _sampler(num_steps: int = 25, **kwargs) -> EulerEDMSampler:
    return EulerEDMSampler(EDMDiscretization(), guider=IdentityGuider(), num_steps=num_steps, **kwargs)


def test_point_mass_data_is_recovered() -> None:
    mu = torch.tensor([0.3, -1.2, 2.0])

    def denoise(x, sigma, cond):
        return mu.expand_as(x)

    x = _sampler()(denoise, {}, shape=(8, 3), generator=torch.Generator().manual_seed(0))
    # The last step goes to sigma = 0 with D = mu, so x = mu up to rounding.
    torch.testing.assert_close(x, mu.expand(8, 3), atol=1e-5, rtol=0)


def test_gaussian_data_std_is_recovered() -> None:
    """Data N(0, s_d^2) has the exact denoiser D = x s_d^2 / (s_d^2 + sigma^2); the flow maps N(0, 1 + 700^2) to it.

    Euler is first order, so the sample is the start times prod_i (1 + (sigma_{i+1} - sigma_i) sigma_i / (s_d^2 +
    sigma_i^2)), which tends to s_d as the number of steps grows.
    """
    s_d, steps = 0.5, 400

    def denoise(x, sigma, cond):
        return x * s_d**2 / (s_d**2 + sigma[:, None] ** 2)

    sampler = _sampler(num_steps=steps)
    x = sampler(denoise, {}, shape=(16384, 2), generator=torch.Generator().manual_seed(0))
    start = torch.randn(16384, 2, generator=torch.Generator().manual_seed(0)).double()
    sig = EDMDiscretization()(steps).double()
    factor = (1 + sig[0] ** 2).sqrt() * torch.prod(1 + (sig[1:] - sig[:-1]) * sig[:-1] / (s_d**2 + sig[:-1] ** 2))
    torch.testing.assert_close(x.double(), start * factor, rtol=1e-4, atol=1e-6)
    assert x.mean().item() == pytest.approx(0.0, abs=0.02)
    assert x.std().item() == pytest.approx(s_d, rel=0.03)


def test_seeded_sampling_is_deterministic_with_and_without_churn() -> None:
    def denoise(x, sigma, cond):
        return x / (1 + sigma[:, None] ** 2)

    for kwargs in ({}, {"s_churn": 10.0, "s_tmin": 0.05, "s_tmax": 50.0}):
        a = _sampler(num_steps=8, **kwargs)(denoise, {}, shape=(4, 2), generator=torch.Generator().manual_seed(1))
        b = _sampler(num_steps=8, **kwargs)(denoise, {}, shape=(4, 2), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    plain = _sampler(num_steps=8)(denoise, {}, shape=(4, 2), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(plain, a)  # churn draws extra noise


def test_guided_sampling_uses_stacked_batch() -> None:
    """D(c) = mu_c, D(uc) = mu_u: the guided sample is mu_u + w (mu_c - mu_u)."""
    calls = []

    def denoise(x, sigma, cond):
        calls.append(x.shape[0])
        return cond["vector"].expand_as(x)

    sampler = EulerEDMSampler(EDMDiscretization(), guider=VanillaCFG(3.0), num_steps=5)
    cond = {"vector": torch.full((2, 1), 2.0)}
    uncond = {"vector": torch.full((2, 1), 1.0)}
    x = sampler(denoise, cond, uncond, shape=(2, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, torch.full((2, 4), 1.0 + 3.0 * (2.0 - 1.0)), atol=1e-5, rtol=0)
    assert calls == [4] * 5
