"""The SD 2.1 DDPM schedule against an independent numpy port of ldm ``register_schedule`` (v_posterior = 0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.diffusion import LDM_SCHEDULE_BUFFER_NAMES, discrete_sigmas, ldm_schedule_buffers


def _ldm_reference() -> dict[str, np.ndarray]:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }


def test_ldm_buffers_match_register_schedule() -> None:
    ours = ldm_schedule_buffers()
    ref = _ldm_reference()
    assert tuple(ours) == LDM_SCHEDULE_BUFFER_NAMES == tuple(ref)
    for name, value in ours.items():
        assert value.dtype == torch.float32 and value.shape == (1000,), name
        torch.testing.assert_close(value, torch.tensor(ref[name], dtype=torch.float32), rtol=1e-6, atol=0, msg=name)


def test_buffer_names_match_sd21_ldm_checkpoint(manifest) -> None:
    keys = manifest("sd21")["variants"]["sd21_768_v_ldm"]["keys"]
    schedule_keys = [k for k in keys if "." not in k]
    assert tuple(schedule_keys) == LDM_SCHEDULE_BUFFER_NAMES
    assert all(keys[k]["shape"] == [1000] for k in schedule_keys)


def test_discrete_sigmas_are_sd_sigmas() -> None:
    sigmas = discrete_sigmas()
    assert sigmas.shape == (1000,) and bool((sigmas[1:] > sigmas[:-1]).all())
    # The well-known SD sigma range (k-diffusion / diffusers report sigma_min 0.0292, sigma_max 14.6146).
    assert sigmas[0].item() == pytest.approx(0.029168, rel=1e-4)
    assert sigmas[-1].item() == pytest.approx(14.614642, rel=1e-4)
    ac = torch.tensor(_ldm_reference()["alphas_cumprod"], dtype=torch.float64)
    torch.testing.assert_close(sigmas, ((1 - ac) / ac).sqrt().float())
