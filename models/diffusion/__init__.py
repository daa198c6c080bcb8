"""Diffusion maths in EDM form (Karras et al. 2022) as used by SVD (Blattmann et al. 2023): preconditioning,
denoiser, training noise distribution, loss weighting and loss, sampling discretization, guidance and sampler.
Pure torch; one concept per file.
"""

from .ddpm_schedule import (
    LDM_SCHEDULE_BUFFER_NAMES,
    SD21_LINEAR_END,
    SD21_LINEAR_START,
    SD21_NUM_TIMESTEPS,
    discrete_sigmas,
    ldm_schedule_buffers,
    scaled_linear_betas,
)
from .denoiser import COND_KEYS, Denoiser, DiscreteDenoiser, Network
from .discretization import Discretization, EDMDiscretization, LegacyDDPMDiscretization
from .guidance import Guider, IdentityGuider, LinearPredictionGuider, VanillaCFG
from .loss import LossType, StandardDiffusionLoss, weighted_loss
from .loss_weighting import EDMWeighting, LossWeighting, UnitWeighting, VWeighting
from .sampler import DenoiseFn, EulerEDMSampler
from .scaling import DenoiserScaling, EDMScaling, EpsScaling, VScaling, VScalingWithEDMcNoise
from .sigma_sampling import DiscreteSampling, EDMSampling, SigmaSampler
from .util import append_dims

__all__ = [
    "COND_KEYS",
    "LDM_SCHEDULE_BUFFER_NAMES",
    "SD21_LINEAR_END",
    "SD21_LINEAR_START",
    "SD21_NUM_TIMESTEPS",
    "DenoiseFn",
    "Denoiser",
    "DenoiserScaling",
    "DiscreteDenoiser",
    "DiscreteSampling",
    "Discretization",
    "EDMDiscretization",
    "EDMSampling",
    "EDMScaling",
    "EDMWeighting",
    "EpsScaling",
    "EulerEDMSampler",
    "Guider",
    "IdentityGuider",
    "LegacyDDPMDiscretization",
    "LinearPredictionGuider",
    "LossType",
    "LossWeighting",
    "Network",
    "SigmaSampler",
    "StandardDiffusionLoss",
    "UnitWeighting",
    "VScaling",
    "VScalingWithEDMcNoise",
    "VWeighting",
    "VanillaCFG",
    "append_dims",
    "discrete_sigmas",
    "ldm_schedule_buffers",
    "scaled_linear_betas",
    "weighted_loss",
]
