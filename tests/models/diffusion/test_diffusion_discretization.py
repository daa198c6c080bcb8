"""Sampling noise levels: EDM Eq 5 endpoints and monotonicity; the legacy DDPM subset."""

from __future__ import annotations

import pytest
import torch

from models.diffusion import EDMDiscretization, LegacyDDPMDiscretization, discrete_sigmas


@pytest.mark.parametrize("n", [2, 25, 30])
def test_edm_discretization_endpoints_and_order(n: int) -> None:
    sigmas = EDMDiscretization()(n)
    assert sigmas.shape == (n + 1,) and sigmas.dtype == torch.float32
    assert sigmas[0].item() == pytest.approx(700.0, rel=1e-6)
    assert sigmas[-2].item() == pytest.approx(0.002, rel=1e-6)
    assert sigmas[-1].item() == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_edm_discretization_matches_eq5_and_no_zero_option() -> None:
    s_min, s_max, rho, n = 0.002, 80.0, 7.0, 5
    sigmas = EDMDiscretization(sigma_min=s_min, sigma_max=s_max, rho=rho)(n, append_zero=False)
    expected = [(s_max ** (1 / rho) + i / (n - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho for i in range(n)]
    torch.testing.assert_close(sigmas, torch.tensor(expected, dtype=torch.float32))


def test_legacy_ddpm_discretization() -> None:
    all_sigmas = discrete_sigmas()
    sigmas = LegacyDDPMDiscretization()(10)
    assert sigmas.shape == (11,) and sigmas[-1].item() == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    # sgm: timesteps np.linspace(999, 0, 10, endpoint=False).astype(int) = 999, 899, ..., 99.
    torch.testing.assert_close(sigmas[:-1], all_sigmas[[999, 899, 799, 699, 599, 499, 399, 299, 199, 99]])
    full = LegacyDDPMDiscretization()(1000, append_zero=False)
    torch.testing.assert_close(full, all_sigmas.flip(0))


def test_invalid_settings_rejected() -> None:
    with pytest.raises(ValueError, match="sigma_min"):
        EDMDiscretization(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="at least 2"):
        EDMDiscretization()(1)
