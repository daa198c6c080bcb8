"""Training sigma distributions: statistics, determinism under an injected generator, discrete support."""

from __future__ import annotations

import math

import pytest
import torch

from models.diffusion import DiscreteSampling, EDMSampling, discrete_sigmas


@pytest.mark.parametrize(("p_mean", "p_std"), [(-1.2, 1.2), (1.0, 1.6), (-3.0, 0.5)])
def test_edm_sampling_log_normal_statistics(p_mean: float, p_std: float) -> None:
    sigma = EDMSampling(p_mean=p_mean, p_std=p_std)(20000, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (20000,) and bool((sigma > 0).all())
    log_sigma = sigma.log()
    assert log_sigma.mean().item() == pytest.approx(p_mean, abs=0.05)
    assert log_sigma.std().item() == pytest.approx(p_std, rel=0.03)


def test_cond_aug_sampler_median_is_about_0_05() -> None:
    sigma = EDMSampling(p_mean=-3.0, p_std=0.5)(20000, generator=torch.Generator().manual_seed(1))
    assert sigma.median().item() == pytest.approx(math.exp(-3.0), rel=0.03)


@pytest.mark.parametrize("sampler", [EDMSampling(), DiscreteSampling()], ids=lambda s: type(s).__name__)
def test_same_seed_same_samples(sampler) -> None:
    a = sampler(64, generator=torch.Generator().manual_seed(123))
    b = sampler(64, generator=torch.Generator().manual_seed(123))
    c = sampler(64, generator=torch.Generator().manual_seed(124))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_discrete_sampling_is_uniform_over_ddpm_sigmas() -> None:
    sigmas = discrete_sigmas()
    sample = DiscreteSampling()(50000, generator=torch.Generator().manual_seed(0))
    idx = torch.searchsorted(sigmas, sample)
    torch.testing.assert_close(sigmas[idx], sample, rtol=0, atol=0)  # every sample is a DDPM sigma
    # Uniform over 1000 levels: quartiles of the index near 250 / 500 / 750, every level hit.
    q = torch.quantile(idx.float(), torch.tensor([0.25, 0.5, 0.75]))
    torch.testing.assert_close(q, torch.tensor([250.0, 500.0, 750.0]), atol=15, rtol=0)
    assert bool((torch.bincount(idx, minlength=1000) > 0).all())


def test_invalid_std_rejected() -> None:
    with pytest.raises(ValueError, match="p_std"):
        EDMSampling(p_std=0.0)
