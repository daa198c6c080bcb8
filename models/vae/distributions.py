"""Diagonal Gaussian posterior of the KL autoencoder (ldm ``distributions.DiagonalGaussianDistribution``)."""

from __future__ import annotations

import torch

LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


class DiagonalGaussianDistribution:
    """``q(z|x) = N(mean, diag(exp(logvar)))`` from encoder moments ``(N, 2*C, h, w)`` split along channels.

    logvar is clamped to [-30, 20] as in ldm. ``deterministic=True`` gives a zero-variance posterior
    (``sample() == mode()``, ``kl() == 0``).
    """

    def __init__(self, parameters: torch.Tensor, *, deterministic: bool = False) -> None:
        if parameters.ndim < 2 or parameters.shape[1] % 2:
            raise ValueError(
                f"moments of shape {tuple(parameters.shape)} need an even channel dim 1 (mean and logvar); "
                "build the encoder with double_z=True"
            )
        self.parameters = parameters
        self.deterministic = deterministic
        mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.mean = mean
        self.logvar = torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)
        if deterministic:
            self.std = torch.zeros_like(mean)
            self.var = torch.zeros_like(mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw ``mean + std * eps``; ``generator`` must live on the tensors' device."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        """KL(self || other) per sample, summed over all non-batch dims; ``other=None`` is N(0, I)."""
        dims = tuple(range(1, self.mean.ndim))
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=dims,
        )

    def nll(self, sample: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of ``sample`` per sample, summed over all non-batch dims."""
        dims = tuple(range(1, self.mean.ndim))
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        log_two_pi = torch.log(torch.tensor(2.0 * torch.pi, dtype=self.mean.dtype, device=self.mean.device))
        return 0.5 * torch.sum(log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var, dim=dims)
