"""The SD 2.1 / ldm discrete DDPM noise schedule and its sigmas in EDM form.

SD 2.1 uses the "scaled linear" betas: beta_t = (linspace(sqrt(b_start), sqrt(b_end), T)_t)^2 with
b_start = 0.00085, b_end = 0.012, T = 1000. With alpha_bar_t = prod_{s<=t} (1 - beta_s) the DDPM forward process
x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps is, after dividing by sqrt(alpha_bar_t), the EDM process
x = x_0 + sigma_t n with sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) (Karras et al. 2022, arXiv 2206.00364,
Table 1 "DDPM/VP discrete"; Blattmann et al. 2023, arXiv 2311.15127, App D.2 Eqs 6-9).

``ldm_schedule_buffers`` reproduces ldm's ``DDPM.register_schedule`` (v_posterior = 0; the parameterization-dependent
``lvlb_weights`` is left out) so that a loader can check or fill the 12 buffers that old ldm checkpoints carry.
"""

from __future__ import annotations

import torch

SD21_LINEAR_START = 0.00085
SD21_LINEAR_END = 0.012
SD21_NUM_TIMESTEPS = 1000

# The buffer names exactly as ldm's DDPM registers them (checkpoint keys, without the module prefix).
LDM_SCHEDULE_BUFFER_NAMES: tuple[str, ...] = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def scaled_linear_betas(
    num_timesteps: int = SD21_NUM_TIMESTEPS,
    *,
    linear_start: float = SD21_LINEAR_START,
    linear_end: float = SD21_LINEAR_END,
) -> torch.Tensor:
    """beta_t = linspace(sqrt(linear_start), sqrt(linear_end), T)^2, float64 (ldm ``make_beta_schedule("linear")``)."""
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps={num_timesteps}; a DDPM schedule needs at least 2 steps (SD 2.1 uses 1000)")
    if not 0.0 < linear_start < linear_end < 1.0:
        raise ValueError(f"need 0 < linear_start < linear_end < 1, got {linear_start}, {linear_end}")
    return torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def discrete_sigmas(
    num_timesteps: int = SD21_NUM_TIMESTEPS,
    *,
    linear_start: float = SD21_LINEAR_START,
    linear_end: float = SD21_LINEAR_END,
) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), float32 (T,), increasing: index t is the DDPM timestep."""
    betas = scaled_linear_betas(num_timesteps, linear_start=linear_start, linear_end=linear_end)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt().float()


def ldm_schedule_buffers(
    num_timesteps: int = SD21_NUM_TIMESTEPS,
    *,
    linear_start: float = SD21_LINEAR_START,
    linear_end: float = SD21_LINEAR_END,
) -> dict[str, torch.Tensor]:
    """The 12 float32 (T,) buffers of ldm ``DDPM.register_schedule`` with v_posterior = 0, keyed by their ldm names.

    Computed in float64 and cast at the end, as ldm does with numpy, so values match the checkpoint buffers.
    posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, Eqs 6-7): variance beta_t (1 - abar_{t-1}) / (1 - abar_t),
    mean coef1 = beta_t sqrt(abar_{t-1}) / (1 - abar_t), coef2 = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t).
    """
    betas = scaled_linear_betas(num_timesteps, linear_start=linear_start, linear_end=linear_end)
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    buffers = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1.0).sqrt(),
        "posterior_variance": posterior_variance,
        # Clipped because the t=0 posterior variance is exactly 0.
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    }
    assert tuple(buffers) == LDM_SCHEDULE_BUFFER_NAMES
    return {name: value.float() for name, value in buffers.items()}
