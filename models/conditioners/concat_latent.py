"""VAE latent of the (noise-augmented) conditioning frame, concatenated to the UNet input (SVD embedder 3).

sgm's ``VideoPredictionEmbedderWithEncoder`` with the svd.yaml settings: ``is_ae=True``, the encoder is an
``AutoencoderKLModeOnly`` (posterior **mode**), ``disable_encoder_autocast=True`` and ``scale_factor=1.0``, i.e.
the cond latent is NOT multiplied by 0.18215 (RECIPE 2).

The noise augmentation itself happens before the conditioner, in pixel space (``add_cond_noise``). The
training-time level is drawn as ``log sigma_aug ~ N(-3.0, 0.5^2)``; that sampler lives with the other sigma
samplers in ``models/diffusion``. At inference ``cond_aug`` defaults to 0.02. The same value is also fed to the
``cond_aug`` vector embedder.
"""

from __future__ import annotations

import torch
from torch import nn


def add_cond_noise(
    frames: torch.Tensor, cond_aug: torch.Tensor | float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``frames + cond_aug * eps`` with ``eps ~ N(0, I)``, per sample: ``cond_aug`` is ``(B,)`` or a scalar.

    ``frames`` are pixels in [-1, 1] of any shape ``(B, ...)``. The noise is drawn on the generator's device
    (CPU when ``generator`` is None and ``frames`` are on CPU) so a seeded generator gives the same noise on
    every accelerator.
    """
    device = generator.device if generator is not None else frames.device
    eps = torch.randn(frames.shape, generator=generator, device=device, dtype=frames.dtype).to(frames.device)
    sigma = torch.as_tensor(cond_aug, dtype=frames.dtype, device=frames.device)
    if sigma.ndim == 1:
        if sigma.shape[0] != frames.shape[0]:
            raise ValueError(f"cond_aug has {sigma.shape[0]} values for a batch of {frames.shape[0]} frames")
        sigma = sigma.reshape(-1, *([1] * (frames.ndim - 1)))
    elif sigma.ndim != 0:
        raise ValueError(f"cond_aug must be a scalar or of shape (B,), got {tuple(sigma.shape)}")
    return frames + sigma * eps


def _posterior_mode(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):  # an encoder that already returns the mode (sgm's AutoencoderKLModeOnly)
        return out
    mode = getattr(out, "mode", None)
    if mode is None:
        raise ValueError(
            f"encoder.encode(x) returned {type(out).__name__}; it must return a tensor or a distribution with .mode()"
        )
    return mode()


class ConcatLatentEmbedder(nn.Module):
    """``(B * n_cond_frames, 3, H, W)`` pixels -> ``(B * n_copies, n_cond_frames * C, H/8, W/8)`` latents.

    ``encoder`` is any module with ``encode(x)`` returning a distribution with ``.mode()`` (our
    ``AutoencoderKL``) or a tensor; its state dict appears under ``encoder.*`` (``encoder.encoder.*``,
    ``encoder.decoder.*``, ``encoder.quant_conv.*``, ``encoder.post_quant_conv.*`` for the SD KL-f8 VAE). The
    encoder runs in its parameter dtype (float32) with autocast disabled; ``chunk_size`` encodes that many
    images at a time (sgm's ``en_and_decode_n_samples_a_time``) to bound activation memory.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        n_cond_frames: int = 1,
        n_copies: int = 1,
        chunk_size: int | None = None,
        scale_factor: float = 1.0,
        freeze: bool = True,
    ) -> None:
        super().__init__()
        if not callable(getattr(encoder, "encode", None)):
            raise ValueError(f"{type(encoder).__name__} has no encode(x) method; pass the VAE (AutoencoderKL)")
        if n_cond_frames < 1 or n_copies < 1:
            raise ValueError(f"n_cond_frames={n_cond_frames} and n_copies={n_copies} must both be >= 1")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be None (all at once) or >= 1")
        self.encoder = encoder
        self.n_cond_frames = n_cond_frames
        self.n_copies = n_copies
        self.chunk_size = chunk_size
        self.scale_factor = scale_factor
        self.frozen = freeze
        if freeze:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> ConcatLatentEmbedder:
        # A frozen embedder stays in eval mode when a parent module is put in training mode.
        return super().train(mode and not self.frozen)

    def _encoder_dtype(self) -> torch.dtype:
        for p in self.encoder.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[0] % self.n_cond_frames:
            raise ValueError(
                f"expected (B * n_cond_frames, 3, H, W) pixels with n_cond_frames={self.n_cond_frames}, "
                f"got shape {tuple(frames.shape)}"
            )
        x = frames.to(self._encoder_dtype())
        chunks = x.split(self.chunk_size or max(1, x.shape[0]))
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = torch.cat([_posterior_mode(self.encoder.encode(c)) for c in chunks])
        z = z * self.scale_factor  # (B * t, C, h, w)
        b = z.shape[0] // self.n_cond_frames
        z = z.reshape(b, self.n_cond_frames * z.shape[1], *z.shape[2:])  # (B, t * C, h, w)
        return z.repeat_interleave(self.n_copies, dim=0)  # (B * n_copies, t * C, h, w)
