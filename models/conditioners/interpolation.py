"""The frame-interpolation conditioner (SVD paper section 4.4, App D.5; RECIPE 5 "Interpolation input").

The first and last of T frames (the paper: 5) are the conditions. Their VAE latents ``z_s``, ``z_e`` and a learned
mask embedding ``z_m`` form the per-frame sequence ``{z_s, z_m, ..., z_m, z_e}``; a binary mask channel (1 on the two
condition frames, 0 between) is appended, and the UNet sees ``noisy latent (C) + sequence (C) + mask (1)`` channels
(4 + 4 + 1 = 9 for the SD 2.1 VAE). The condition latents are noise-augmented in latent space (``z + cond_aug * eps``,
``log cond_aug`` drawn as for I2V); the CLIP image embeddings of both end frames are the cross-attention context
(length 2); the vector is I2V's ``fps_id``, ``motion_bucket_id``, ``cond_aug`` (768).

Our choices where the paper is silent:

- ``z_m`` is one trainable vector of shape ``(C,)`` (a parameter of the conditioner, ``conditioner.mask_embedding``)
  broadcast over ``h, w`` and over the middle frames; it starts as ``N(0, 1)`` (unit scale, as the scaled latents).
- ``z_s``, ``z_e`` are the VAE posterior *mode* times the first stage's ``scale_factor``, i.e. on the scale of the
  latents being denoised (I2V's concat latent is unscaled because SVD's is; here the noise is added in latent space,
  so the latents it is added to are those the diffusion sees).
- The unconditional branch (CFG dropout in training, the ``uc`` at sampling) zeroes the CLIP embeddings and
  ``z_s``, ``z_e``; the mask embedding, the mask channel and the vector are kept.

Layout of the embedders (the SVD order, so the T2V -> I2V hand-off rules apply unchanged): 0 CLIP image of both
end frames -> crossattn ``(B, 2, D)``; 1 ``fps_id``; 2 ``motion_bucket_id``; 3 the end-frame latents (``encoder.*``
is a copy of the first stage, filled from it at the hand-off); 4 ``cond_aug``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.conditioners.concat_latent import ConcatLatentEmbedder
from models.conditioners.general import EmbedderSpec, GeneralConditioner

END_FRAMES = 2  # the first and the last frame are the conditions


@dataclass(frozen=True)
class EndFrames:
    """The input of ``EndFrameLatentEmbedder``: clean end frames and how to noise their latents."""

    frames: torch.Tensor  # (B * 2, 3, H, W) in [-1, 1]: first, last, first, last, ...
    cond_aug: torch.Tensor  # (B,) noise level of the latents
    noise_seed: int  # seeds the latent noise (drawn on CPU, so a seed gives the same noise on any device)

    def __len__(self) -> int:
        return self.frames.shape[0] // END_FRAMES


class EndFrameLatentEmbedder(ConcatLatentEmbedder):
    """``EndFrames`` -> noise-augmented latents ``(B, 2, C, h, w)`` of the first and last frame (a 5-D output: the
    conditioner routes it to ``concat`` and ``InterpolationConditioner`` lays it out per frame)."""

    def __init__(self, encoder: nn.Module, *, scale_factor: float, chunk_size: int | None = None) -> None:
        super().__init__(encoder, n_cond_frames=END_FRAMES, chunk_size=chunk_size, scale_factor=scale_factor)

    def forward(self, value: EndFrames) -> torch.Tensor:  # type: ignore[override]
        if not isinstance(value, EndFrames):
            raise ValueError(f"expected EndFrames (frames, cond_aug, noise_seed), got {type(value).__name__}")
        z = super().forward(value.frames)  # (B, 2 * C, h, w)
        z = z.reshape(z.shape[0], END_FRAMES, -1, *z.shape[2:])  # (B, 2, C, h, w)
        sigma = value.cond_aug.to(z.device, z.dtype)
        if sigma.shape != (z.shape[0],):
            raise ValueError(f"cond_aug has shape {tuple(sigma.shape)}; pass one level per video, ({z.shape[0]},)")
        g = torch.Generator().manual_seed(value.noise_seed)
        eps = torch.randn(z.shape, generator=g, dtype=z.dtype).to(z.device)
        return z + sigma.reshape(-1, 1, 1, 1, 1) * eps


class InterpolationConditioner(GeneralConditioner):
    """A ``GeneralConditioner`` whose ``concat`` is the per-frame ``(B, T, C + 1, h, w)`` interpolation input.

    The embedders give ``concat = (B, 2, C, h, w)`` (the end-frame latents, zeroed where dropped or forced to zero);
    this class puts them on frames 0 and T-1, the trainable ``mask_embedding`` on the frames between, and appends
    the mask channel. ``train.conditioning.per_frame`` flattens the 5-D result to ``(B * T, C + 1, h, w)``.
    """

    def __init__(self, embedders: Sequence[EmbedderSpec], *, latent_channels: int, num_frames: int) -> None:
        super().__init__(embedders)
        if num_frames < 3:
            raise ValueError(
                f"num_frames={num_frames}; interpolation needs the two end frames and at least one between"
            )
        self.num_frames = num_frames
        self.mask_embedding = nn.Parameter(torch.randn(latent_channels))

    def frame_mask(self, device: torch.device | None = None) -> torch.Tensor:
        """(T,) 1.0 on the condition frames (first and last), 0.0 on the frames to generate."""
        mask = torch.zeros(self.num_frames, device=device)
        mask[0] = mask[-1] = 1.0
        return mask

    def sequence(self, z_ends: torch.Tensor) -> torch.Tensor:
        """(B, 2, C, h, w) end-frame latents -> (B, T, C + 1, h, w): ``{z_s, z_m, ..., z_m, z_e}`` and the mask."""
        b, _, c, h, w = z_ends.shape
        if c != self.mask_embedding.shape[0]:
            raise ValueError(
                f"end-frame latents have {c} channels; the mask embedding has {self.mask_embedding.shape[0]}"
            )
        middle = self.mask_embedding.to(z_ends.dtype).reshape(1, 1, c, 1, 1).expand(b, self.num_frames - 2, c, h, w)
        seq = torch.cat([z_ends[:, :1], middle, z_ends[:, 1:]], dim=1)  # (B, T, C, h, w)
        mask = self.frame_mask(z_ends.device).to(z_ends.dtype).reshape(1, -1, 1, 1, 1).expand(b, -1, 1, h, w)
        return torch.cat([seq, mask], dim=2)  # (B, T, C + 1, h, w)

    def _run(
        self,
        batch: Mapping[str, Any],
        *,
        ucg: bool,
        generator: torch.Generator | None,
        force_zero_embeddings: Iterable[str] | None,
    ) -> dict[str, torch.Tensor]:
        out = super()._run(batch, ucg=ucg, generator=generator, force_zero_embeddings=force_zero_embeddings)
        z_ends = out.get("concat")
        if z_ends is None or z_ends.ndim != 5 or z_ends.shape[1] != END_FRAMES:
            raise ValueError("the interpolation conditioner needs one end-frame latent embedder giving (B, 2, C, h, w)")
        out["concat"] = self.sequence(z_ends)
        return out
