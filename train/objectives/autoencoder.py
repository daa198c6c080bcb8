"""First-stage objectives: the SD KL-f8 image autoencoder and SVD's temporal (deflickering) decoder (RECIPE 4).

Both read ``batch["frames"]`` ``(B, T, 3, H, W)`` uint8, map them to [-1, 1] and reconstruct them:
``x -> q(z|x) -> z ~ q(z|x) -> x_hat = decode(z)``. Both export ``first_stage_model.*``, the prefix of the
official SD 2.1 and SVD checkpoints. Not included: the adversarial terms. ldm's KL-f8 used a 2-D patch
discriminator (``LPIPSWithDiscriminator``, from step 50001) and Video LDM [VLDM 3.1.1] a patch-wise 3-D
convolutional video discriminator for the temporal decoder; neither is in the SVD repo and neither is here.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal

import torch
from torch import nn

from data.batch import Batch
from data.transforms import to_model_range
from models.vae import AutoencoderKL, DiagonalGaussianDistribution, TemporalAutoencoder, is_temporal_decoder_key
from train.objectives.base import Metrics, Objective
from train.objectives.perceptual import VGGPerceptual

ReconstructionLoss = Literal["l1", "l2"]
DecoderPart = Literal["temporal", "all"]
# ldm's KL-f8 ``kl_weight`` (models/first_stage_models/kl-f8/config.yaml), against a pixel-SUM reconstruction.
LDM_KL_WEIGHT = 1e-6


class FirstStageExport(nn.Module):
    """Holds the autoencoder as ``first_stage_model`` so export keys read ``first_stage_model.*``."""

    def __init__(self, first_stage_model: nn.Module) -> None:
        super().__init__()
        self.first_stage_model = first_stage_model


def frames_as_images(batch: Batch, *, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """``batch["frames"]`` ``(B, T, 3, H, W)`` uint8 -> ``(B*T, 3, H, W)`` in [-1, 1] (clip-major) and ``T``."""
    if "frames" not in batch:
        raise ValueError(
            "autoencoder objectives train on pixels but the batch has no 'frames' (cached latents?); "
            "use a frame data config, not the latent cache"
        )
    frames = batch["frames"]
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"batch['frames'] must be (B, T, 3, H, W); got {tuple(frames.shape)}")
    # (B, T, 3, H, W) -> (B*T, 3, H, W)
    return to_model_range(frames.flatten(0, 1), dtype=dtype), int(frames.shape[1])


def sample_latent(posterior: DiagonalGaussianDistribution, generator: torch.Generator) -> torch.Tensor:
    """``z = mean + std * eps``; ``eps`` is drawn on the generator's device, so a CPU generator drives GPU runs."""
    if generator.device == posterior.mean.device:
        return posterior.sample(generator=generator)
    eps = torch.randn(posterior.mean.shape, generator=generator, device=generator.device, dtype=posterior.mean.dtype)
    return posterior.mean + posterior.std * eps.to(posterior.mean.device)


def reconstruction_error(rec: torch.Tensor, x: torch.Tensor, *, loss_type: ReconstructionLoss) -> torch.Tensor:
    """Per-sample mean over pixels of ``|x - x_hat|`` (l1) or ``(x - x_hat)^2`` (l2), in float32: ``(N,)``."""
    diff = rec.float() - x.float()
    err = diff.abs() if loss_type == "l1" else diff.square()
    return err.flatten(1).mean(dim=1)


@torch.no_grad()
def psnr(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``10 log10(2^2 / MSE)`` per sample for images in [-1, 1] (peak-to-peak 2), ``rec`` clamped: ``(N,)``."""
    mse = (rec.float().clamp(-1.0, 1.0) - x.float()).square().flatten(1).mean(dim=1)
    return 10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))


class _ReconstructionObjective(Objective):
    """Shared parts: the autoencoder as ``first_stage_model``, the pixel loss, the optional perceptual term."""

    task = "frames"

    def __init__(
        self,
        autoencoder: nn.Module,
        *,
        loss_type: ReconstructionLoss,
        perceptual_weight: float,
        vgg_weights: str | os.PathLike[str] | None,
    ) -> None:
        super().__init__()
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type={loss_type!r}; choose 'l1' or 'l2'")
        if perceptual_weight < 0:
            raise ValueError(f"perceptual_weight={perceptual_weight}; use 0 (off) or a positive weight")
        self.loss_type: ReconstructionLoss = loss_type
        self.perceptual_weight = float(perceptual_weight)
        self.first_stage_model = autoencoder
        self.perceptual: VGGPerceptual | None = None
        if perceptual_weight > 0:
            if vgg_weights is None:
                raise ValueError(
                    f"perceptual_weight={perceptual_weight} needs vgg_weights: the path of a local torchvision "
                    "vgg16 state dict (.safetensors or .pth); or set perceptual_weight=0"
                )
            self.perceptual = VGGPerceptual.from_file(vgg_weights)
        elif vgg_weights is not None:
            warnings.warn("vgg_weights is ignored because perceptual_weight=0", stacklevel=3)
        # Not registered as a child: it shares first_stage_model, and the objective's own keys stay
        # first_stage_model.* (+ perceptual.*), the same as the export's.
        object.__setattr__(self, "_export", FirstStageExport(autoencoder))

    def export_module(self) -> nn.Module:
        return self._export

    def _model_dtype(self) -> torch.dtype:
        return next(self.first_stage_model.parameters()).dtype

    def _pixel_terms(self, rec: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """``mean_n rec_n + perceptual_weight * mean_n P(x_n, x_hat_n)`` and its metrics."""
        rec_loss = reconstruction_error(rec, x, loss_type=self.loss_type).mean()
        metrics: Metrics = {"rec_loss": rec_loss.detach(), "psnr": psnr(rec, x).mean()}
        loss = rec_loss
        if self.perceptual is not None:
            p_loss = self.perceptual(x, rec).float().mean()
            loss = loss + self.perceptual_weight * p_loss
            metrics["perceptual"] = p_loss.detach()
        return loss, metrics


class AutoencoderObjective(_ReconstructionObjective):
    """Trains an ``AutoencoderKL`` on every frame of the batch as an image (ldm ``LPIPSWithDiscriminator`` without
    the discriminator and with its ``logvar`` at 0, as ldm's optimizers never update it).

    With ``D = 3 H W`` pixels per image and ``N = B T`` images, ldm minimises
    ``L_ldm = (1/N) sum_n [ sum_pixels (|x - x_hat| + w_p P_n) + w_kl KL_n ]``, ``KL_n = KL(q(z|x_n) || N(0, I))``
    summed over latent elements. This objective is ``L_ldm / D``:

        ``loss = mean_n mean_pixels |x - x_hat| + w_p mean_n P_n + w_kl mean_n KL_n / D``

    which has the same minimiser and the same Adam steps (Adam is invariant to a constant loss scale) while the
    logged loss stays of order 1; ``kl_weight`` 1e-6 therefore keeps ldm's balance. ``loss_type="l2"`` uses
    ``(x - x_hat)^2`` instead. Metrics: ``rec_loss``, ``kl`` (``mean_n KL_n``), ``psnr`` and ``perceptual``.
    """

    def __init__(
        self,
        autoencoder: AutoencoderKL,
        *,
        loss_type: ReconstructionLoss = "l1",
        kl_weight: float = LDM_KL_WEIGHT,
        perceptual_weight: float = 0.0,
        vgg_weights: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(autoencoder, AutoencoderKL):
            raise ValueError(
                f"AutoencoderObjective trains an AutoencoderKL; got {type(autoencoder).__name__}. "
                "Train a TemporalAutoencoder's decoder with TemporalDecoderObjective"
            )
        if kl_weight < 0:
            raise ValueError(f"kl_weight={kl_weight}; use a weight >= 0 (ldm KL-f8: 1e-6)")
        super().__init__(autoencoder, loss_type=loss_type, perceptual_weight=perceptual_weight, vgg_weights=vgg_weights)
        self.kl_weight = float(kl_weight)

    def forward(self, batch: Batch, *, generator: torch.Generator) -> tuple[torch.Tensor, Metrics]:
        x, _ = frames_as_images(batch, dtype=self._model_dtype())
        posterior = self.first_stage_model.encode(x)
        z = sample_latent(posterior, generator)
        rec = self.first_stage_model.decode(z)
        loss, metrics = self._pixel_terms(rec, x)
        kl = posterior.kl().float().mean()
        loss = loss + self.kl_weight * kl / x[0].numel()
        metrics["kl"] = kl.detach()
        return loss, metrics


class TemporalDecoderObjective(_ReconstructionObjective):
    """SVD's deflickering decoder: finetune a ``TemporalAutoencoder``'s decoder on whole clips, encoder frozen.

    ``x_hat = decode(z, num_frames=T)`` mixes the ``T`` frames of each clip; ``z ~ q(z|x)`` from the frozen
    encoder (``sample_posterior=False`` uses the mean). The encoder (and ``quant_conv``, when present) never
    changes, so the latent space the diffusion model sees stays fixed and there is no KL term:

        ``loss = mean_n mean_pixels |x - x_hat| + w_p mean_n P_n``  (``(x - x_hat)^2`` with ``loss_type="l2"``)

    ``train_decoder="all"`` trains the whole decoder (and ``post_quant_conv``), as SVD "finetuned the f8
    decoder"; ``"temporal"`` only ``time_stack``, ``mix_factor`` and ``time_mix_conv``, as Video LDM did. Start
    from SD 2.1 with ``models.vae.temporal_from_kl``. Video LDM's 3-D patch discriminator is not included.
    """

    def __init__(
        self,
        autoencoder: TemporalAutoencoder,
        *,
        train_decoder: DecoderPart = "all",
        loss_type: ReconstructionLoss = "l1",
        perceptual_weight: float = 0.0,
        vgg_weights: str | os.PathLike[str] | None = None,
        sample_posterior: bool = True,
    ) -> None:
        if not isinstance(autoencoder, TemporalAutoencoder):
            raise ValueError(
                f"TemporalDecoderObjective needs a TemporalAutoencoder; got {type(autoencoder).__name__}. "
                "Build one from an AutoencoderKL with models.vae.temporal_from_kl"
            )
        if train_decoder not in ("temporal", "all"):
            raise ValueError(f"train_decoder={train_decoder!r}; choose 'temporal' or 'all'")
        super().__init__(autoencoder, loss_type=loss_type, perceptual_weight=perceptual_weight, vgg_weights=vgg_weights)
        self.train_decoder: DecoderPart = train_decoder
        self.sample_posterior = sample_posterior
        for name, param in autoencoder.named_parameters():
            trainable = name.startswith("decoder.") or name.startswith("post_quant_conv.")
            if train_decoder == "temporal":
                trainable = name.startswith("decoder.") and is_temporal_decoder_key(name)
            param.requires_grad_(trainable)

    def forward(self, batch: Batch, *, generator: torch.Generator) -> tuple[torch.Tensor, Metrics]:
        x, num_frames = frames_as_images(batch, dtype=self._model_dtype())
        with torch.no_grad():
            posterior = self.first_stage_model.encode(x)
            z = sample_latent(posterior, generator) if self.sample_posterior else posterior.mode()
        rec = self.first_stage_model.decode(z, num_frames=num_frames)
        return self._pixel_terms(rec, x)
