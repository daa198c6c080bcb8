"""Shared stand-ins for the conditioner tests: a tiny VAE-like encoder with the AutoencoderKL encode() API."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class StandInPosterior:
    """Diagonal Gaussian with the two methods the conditioner may call."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, self.logvar = moments.chunk(2, dim=1)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.mean.shape, generator=generator)
        return self.mean + (0.5 * self.logvar).exp() * eps


class StandInVAE(nn.Module):
    """f8, 4 latent channels; submodule names follow the SD VAE (encoder / decoder / quant_conv / post_quant_conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.decoder = nn.ConvTranspose2d(4, 3, kernel_size=8, stride=8)
        self.quant_conv = nn.Conv2d(8, 8, 1)
        self.post_quant_conv = nn.Conv2d(4, 4, 1)

    def encode(self, x: torch.Tensor) -> StandInPosterior:
        return StandInPosterior(self.quant_conv(self.encoder(x)))


@pytest.fixture
def stand_in_vae() -> StandInVAE:
    torch.manual_seed(0)
    return StandInVAE()
