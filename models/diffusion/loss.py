"""The denoising score-matching loss (Karras et al. 2022, arXiv 2206.00364, Eq 2 / Eq 8; Blattmann et al. 2023,
arXiv 2311.15127, Eq 3):

    L = E_{x0, sigma ~ p(sigma), n ~ N(0, I)} [ lambda(sigma) || D(x0 + sigma n; sigma, c) - x0 ||^2 ],

reduced to one value per sample (mean over non-batch elements). With ``VScalingWithEDMcNoise`` and ``VWeighting``
lambda c_out^2 = 1 and D - x0 = c_out (F - v), so this is exactly the unweighted MSE of F against the v target
v = (n - sigma x0) / sqrt(1 + sigma^2) of progressive distillation (Salimans & Ho 2022).

Video batches are flattened frames (B*T, C, H, W). One sigma (and one offset noise) is drawn per VIDEO and shared by
its T frames (``num_video_frames=T``, frames of a video consecutive): a clip is one sample of the video model and
is noised at one level, as at sampling time where all frames share sigma. sgm's loss draws one sigma per batch row,
which for flattened video would be per frame; the released repo has no video training config (RECIPE 8), so this
is our reading of the paper, not a copy of the code. Use ``num_video_frames=1`` for image batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

from .denoiser import Denoiser, Network
from .loss_weighting import LossWeighting
from .sigma_sampling import SigmaSampler
from .util import append_dims, randn

LossType = Literal["l2", "l1"]


def weighted_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, *, loss_type: LossType = "l2"
) -> torch.Tensor:
    """Per-sample mean of w |pred - target|^p, p = 2 ("l2") or 1 ("l1"); weight is (B,) or broadcastable; -> (B,)."""
    if loss_type not in ("l2", "l1"):
        raise ValueError(f"loss_type={loss_type!r}; choose 'l2' or 'l1'")
    if weight.ndim < pred.ndim:
        weight = append_dims(weight, pred.ndim)
    diff = pred - target
    err = diff**2 if loss_type == "l2" else diff.abs()
    return (weight * err).reshape(pred.shape[0], -1).mean(dim=1)


class StandardDiffusionLoss:
    """sigma ~ p(sigma), x_noisy = x0 + sigma n, loss = mean(lambda(sigma) (D(x_noisy; sigma, c) - x0)^2) per sample.

    ``offset_noise_level`` > 0 adds a per-channel constant to n (offset noise; only the SVD App E.2.1 ablation models
    used it, the released models did not), shared by the frames of a video like sigma.
    """

    def __init__(
        self,
        sigma_sampler: SigmaSampler,
        *,
        loss_weighting: LossWeighting,
        loss_type: LossType = "l2",
        offset_noise_level: float = 0.0,
    ) -> None:
        if loss_type not in ("l2", "l1"):
            raise ValueError(f"loss_type={loss_type!r}; choose 'l2' or 'l1'")
        if offset_noise_level < 0:
            raise ValueError(f"offset_noise_level={offset_noise_level} must be >= 0 (0 disables offset noise)")
        self.sigma_sampler = sigma_sampler
        self.loss_weighting = loss_weighting
        self.loss_type = loss_type
        self.offset_noise_level = offset_noise_level

    def sample_sigmas(
        self,
        batch_size: int,
        *,
        num_video_frames: int = 1,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """(batch_size,) sigmas, constant within each consecutive group of ``num_video_frames`` frames."""
        if num_video_frames < 1 or batch_size % num_video_frames:
            raise ValueError(
                f"batch of {batch_size} frames is not a whole number of videos of num_video_frames={num_video_frames};"
                " pass the (B*T, C, H, W) frame batch and T"
            )
        sigma = self.sigma_sampler(batch_size // num_video_frames, generator=generator, device=device)
        return sigma.repeat_interleave(num_video_frames)  # (B,) -> (B*T,)

    def sample_noise(
        self, x0: torch.Tensor, *, num_video_frames: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        noise = randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if self.offset_noise_level > 0:
            shape = (x0.shape[0] // num_video_frames, x0.shape[1])
            offset = randn(shape, generator=generator, device=x0.device, dtype=x0.dtype)
            offset = offset.repeat_interleave(num_video_frames, dim=0)  # (B, C) -> (B*T, C)
            noise = noise + self.offset_noise_level * append_dims(offset, x0.ndim)
        return noise

    def __call__(
        self,
        network: Network,
        denoiser: Denoiser,
        x0: torch.Tensor,
        cond: Mapping[str, torch.Tensor] | None = None,
        *,
        num_video_frames: int = 1,
        generator: torch.Generator | None = None,
        network_kwargs: Mapping[str, Any] | None = None,
    ) -> torch.Tensor:
        """Per-sample loss (B,) for clean latents x0 (B, ...); for video B = videos * num_video_frames.

        ``network_kwargs`` go to the network unchanged (e.g. the UNet's ``num_video_frames`` and
        ``image_only_indicator``); the generator draws sigma first, then the noise.
        """
        network_kwargs = dict(network_kwargs or {})
        frames = network_kwargs.get("num_video_frames", num_video_frames)
        if frames != num_video_frames:
            raise ValueError(
                f"network_kwargs num_video_frames={frames} differs from num_video_frames={num_video_frames}; pass the"
                " same T to both (the loss uses it to share one sigma per video)"
            )
        batch = x0.shape[0]
        sigma = self.sample_sigmas(batch, num_video_frames=num_video_frames, generator=generator, device=x0.device)
        noise = self.sample_noise(x0, num_video_frames=num_video_frames, generator=generator)
        x_noisy = x0 + append_dims(sigma, x0.ndim).to(x0.dtype) * noise
        denoised = denoiser(network, x_noisy, sigma, cond, **network_kwargs)
        weight = self.loss_weighting(sigma).to(denoised.dtype)
        return weighted_loss(denoised, x0, weight, loss_type=self.loss_type)
