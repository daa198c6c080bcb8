"""The latent diffusion model as one module tree: UNet, first stage (VAE) and conditioner.

Attribute names give ``state_dict()`` the released files' key prefixes (RECIPE 1 to 4): the UNet under
``model.diffusion_model.``, the VAE under ``first_stage_model.``, the conditioner under ``conditioner.embedders.N.``.
So a stage export of the SVD layout is loadable as an official ``svd`` file, and an official file's weights map
one to one onto a stage model. The first stage is always frozen (the diffusion loss never trains it).
"""

from __future__ import annotations

from torch import nn

from models.conditioners import GeneralConditioner
from models.unet import VideoUNet

UNET_PREFIX = "model.diffusion_model."
FIRST_STAGE_PREFIX = "first_stage_model."
CONDITIONER_PREFIX = "conditioner."
COMPONENT_PREFIXES = {"unet": UNET_PREFIX, "first_stage": FIRST_STAGE_PREFIX, "conditioner": CONDITIONER_PREFIX}


class OfficialModulePaths:
    """``unet`` and ``first_stage`` at their official module paths; ``OfficialCheckpointModel`` shares them."""

    model: nn.Module
    first_stage_model: nn.Module

    @property
    def unet(self) -> VideoUNet:
        return self.model.diffusion_model

    @property
    def first_stage(self) -> nn.Module:
        return self.first_stage_model


class LatentDiffusion(OfficialModulePaths, nn.Module):
    """``unet``, ``first_stage`` and ``conditioner`` under the official prefixes; the first stage is frozen."""

    def __init__(self, *, unet: VideoUNet, first_stage: nn.Module, conditioner: GeneralConditioner) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = unet
        self.first_stage_model = first_stage.requires_grad_(False).eval()
        self.conditioner = conditioner

    def train(self, mode: bool = True) -> LatentDiffusion:
        super().train(mode)
        self.first_stage_model.eval()  # frozen: no dropout, and GroupNorm has no running stats to update anyway
        return self
