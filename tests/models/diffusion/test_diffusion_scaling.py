"""Preconditioning coefficients against the closed forms of EDM Table 1 and SVD App D.2 Eqs 11-14."""

from __future__ import annotations

import math

import pytest
import torch

from models.diffusion import EDMScaling, EpsScaling, VScaling, VScalingWithEDMcNoise

SIGMAS = [0.002, 0.1, 1.0, 3.7, 80.0, 700.0]


@pytest.mark.parametrize("s", SIGMAS)
def test_v_scaling_with_edm_c_noise_matches_closed_form(s: float) -> None:
    c_skip, c_out, c_in, c_noise = VScalingWithEDMcNoise()(torch.tensor([s], dtype=torch.float64))
    assert c_skip.item() == pytest.approx(1.0 / (s * s + 1.0), rel=1e-12)
    assert c_out.item() == pytest.approx(-s / math.sqrt(s * s + 1.0), rel=1e-12)
    assert c_in.item() == pytest.approx(1.0 / math.sqrt(s * s + 1.0), rel=1e-12)
    assert c_noise.item() == pytest.approx(0.25 * math.log(s), rel=1e-12)


@pytest.mark.parametrize("s", SIGMAS)
def test_edm_scaling_matches_closed_form(s: float) -> None:
    sd = 0.5
    c_skip, c_out, c_in, c_noise = EDMScaling(sigma_data=sd)(torch.tensor([s], dtype=torch.float64))
    assert c_skip.item() == pytest.approx(sd**2 / (s * s + sd**2), rel=1e-12)
    assert c_out.item() == pytest.approx(s * sd / math.sqrt(s * s + sd**2), rel=1e-12)
    assert c_in.item() == pytest.approx(1.0 / math.sqrt(s * s + sd**2), rel=1e-12)
    assert c_noise.item() == pytest.approx(0.25 * math.log(s), rel=1e-12)


def test_discrete_scalings_pass_sigma_as_c_noise() -> None:
    sigma = torch.tensor([0.03, 1.0, 14.6])
    v = VScaling()(sigma)
    v_edm = VScalingWithEDMcNoise()(sigma)
    for a, b in zip(v[:3], v_edm[:3], strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(v[3], sigma)
    c_skip, c_out, c_in, c_noise = EpsScaling()(sigma)
    torch.testing.assert_close(c_skip, torch.ones(3))
    torch.testing.assert_close(c_out, -sigma)
    torch.testing.assert_close(c_in, 1.0 / (sigma**2 + 1).sqrt())
    torch.testing.assert_close(c_noise, sigma)


@pytest.mark.parametrize(
    "scaling", [EDMScaling(), VScalingWithEDMcNoise(), VScaling(), EpsScaling()], ids=lambda s: type(s).__name__
)
def test_coefficients_keep_sigma_shape(scaling) -> None:
    sigma = torch.rand(2, 3) + 0.1
    for c in scaling(sigma):
        assert c.shape == sigma.shape


def test_v_parameterisation_identity() -> None:
    """D - x0 = c_out (F - v) with v = (n - s x0) / sqrt(1 + s^2): F = v recovers x0 exactly."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    n = torch.randn(5, 3, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.3, 1.0, 5.0, 700.0], dtype=torch.float64)[:, None]
    x = x0 + sigma * n
    v = (n - sigma * x0) / (1 + sigma**2).sqrt()
    f = torch.randn(5, 3, generator=g, dtype=torch.float64)
    c_skip, c_out, c_in, _ = VScalingWithEDMcNoise()(sigma)
    d = c_skip * x + c_out * f
    torch.testing.assert_close(d - x0, c_out * (f - v))
    torch.testing.assert_close(c_skip * x + c_out * v, x0)
