"""The frame-interpolation task ``interp`` (SVD paper section 4.4, App D.5; RECIPE 5 "Frame interpolation").

T frames (the paper: 5) of which the first and last are the conditions (``TaskSpec.cond_frame_indices = (0, -1)``):
the objective hands the clean end frames as ``cond_image`` ``(B, 2, 3, H, W)``; the conditioner
(``models/conditioners/interpolation.py``) encodes them, noises their latents with ``cond_aug`` in latent space and
lays out ``{z_s, z_m, ..., z_m, z_e}`` plus a mask channel per frame, so the UNet input is ``C + C + 1`` channels
(``in_channel_factor=2, extra_in_channels=1``: 9). Cross-attention: the CLIP image embeddings of both end frames.
Vector: I2V's ``fps_id``, ``motion_bucket_id``, ``cond_aug`` (768), so the T2V hand-off widens ``label_emb``
512 -> 768 as T2V -> I2V does. Unconditional branch: CLIP embeddings and end-frame latents zeroed; the mask
embedding, the mask channel and the vector kept.
"""

from __future__ import annotations

from typing import Any

import torch

from models.conditioners import (
    ConcatTimestepEmbedderND,
    EmbedderSpec,
    FrozenOpenCLIPImageEmbedder,
    FrozenOpenCLIPImagePredictionEmbedder,
)
from models.conditioners.interpolation import END_FRAMES, EndFrameLatentEmbedder, EndFrames, InterpolationConditioner
from models.conditioners.presets import SVD_INPUT_KEYS, _check_rates
from models.vae import AutoencoderKL
from train.tasks import ConditionerParts, TaskSpec, register_task, zeroed_image

INTERPOLATION_TASK = "interp"


def interpolation_inputs(
    *,
    fps_id: torch.Tensor,
    motion_bucket_id: torch.Tensor,
    cond_image: torch.Tensor | None = None,
    cond_aug: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    **_: Any,
) -> dict[str, Any]:
    """The conditioner batch from the clean end frames ``cond_image`` (B, 2, 3, H, W) in [-1, 1] and ``cond_aug``
    (B,); the latent noise is seeded from one draw of ``generator``."""
    if cond_image is None or cond_aug is None:
        raise ValueError("interp conditioning needs cond_image (the clean first and last frames) and cond_aug")
    if cond_image.ndim != 5 or cond_image.shape[1] != END_FRAMES:
        raise ValueError(
            f"interp conditions on the first and last frame: cond_image must be (B, 2, 3, H, W), got "
            f"{tuple(cond_image.shape)}"
        )
    frames = cond_image.flatten(0, 1)  # (B, 2, 3, H, W) -> (B * 2, 3, H, W): first, last, first, last, ...
    device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())
    return {
        "cond_frames_without_noise": frames,
        "fps_id": fps_id.float(),
        "motion_bucket_id": motion_bucket_id.float(),
        "cond_frames": EndFrames(frames, cond_aug.float(), seed),
        "cond_aug": cond_aug.float(),
    }


def build_interpolation_conditioner(parts: ConditionerParts) -> InterpolationConditioner:
    """The conditioner of the module docstring; the CLIP tower as SVD's (``model.clip``), run on both end frames."""
    rates = _check_rates(parts.ucg_rates, SVD_INPUT_KEYS)
    clip = FrozenOpenCLIPImageEmbedder(parts.clip_arch, pretrained=parts.clip_pretrained, resize=parts.clip_resize)
    encoder = AutoencoderKL(parts.autoencoder)
    modules = {
        "cond_frames_without_noise": FrozenOpenCLIPImagePredictionEmbedder(clip, n_cond_frames=END_FRAMES),
        "fps_id": ConcatTimestepEmbedderND(256),
        "motion_bucket_id": ConcatTimestepEmbedderND(256),
        "cond_frames": EndFrameLatentEmbedder(encoder, scale_factor=encoder.scale_factor),
        "cond_aug": ConcatTimestepEmbedderND(256),
    }
    specs = [EmbedderSpec(modules[k], k, ucg_rate=rates.get(k, 0.0)) for k in SVD_INPUT_KEYS]
    return InterpolationConditioner(specs, latent_channels=parts.autoencoder.embed_dim, num_frames=parts.num_frames)


register_task(
    TaskSpec(
        INTERPOLATION_TASK,
        build_interpolation_conditioner,
        SVD_INPUT_KEYS,
        768,
        interpolation_inputs,
        zeroed_image,
        video=True,
        image_conditioned=True,
        in_channel_factor=2,
        extra_in_channels=1,  # the mask channel
        cond_frame_indices=(0, -1),
    )  # fmt: skip
)
