"""The official conditioner layouts: SVD / SVD-XT (``configs/inference/svd.yaml``) and SD 2.1 text.

``build_svd_conditioner`` gives ``embedders.0..4`` in the released order (RECIPE 2):

| N | input_key | embedder | output |
|---|---|---|---|
| 0 | ``cond_frames_without_noise`` | OpenCLIP ViT-H-14 image embedding | crossattn (B, 1, 1024) |
| 1 | ``fps_id`` | sinusoid(256) | vector [0:256] |
| 2 | ``motion_bucket_id`` | sinusoid(256) | vector [256:512] |
| 3 | ``cond_frames`` | VAE posterior mode, scale 1.0 | concat (B, 4, H/8, W/8) |
| 4 | ``cond_aug`` | sinusoid(256) | vector [512:768] |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from models.conditioners.concat_latent import ConcatLatentEmbedder
from models.conditioners.general import EmbedderSpec, GeneralConditioner
from models.conditioners.image_resize import ResizeMode
from models.conditioners.open_clip_factory import tiny_open_clip_config
from models.conditioners.open_clip_image import FrozenOpenCLIPImageEmbedder, FrozenOpenCLIPImagePredictionEmbedder
from models.conditioners.open_clip_text import FrozenOpenCLIPEmbedder
from models.conditioners.timestep import ConcatTimestepEmbedderND

SVD_INPUT_KEYS = ("cond_frames_without_noise", "fps_id", "motion_bucket_id", "cond_frames", "cond_aug")
# What the unconditional branch zeroes at SVD sampling time (the vector conditions are kept).
SVD_UC_ZERO_KEYS = ("cond_frames", "cond_frames_without_noise")
# The batch entry with precomputed CLIP image embeddings (B, 1, D) that replaces running the ViT on
# ``cond_frames_without_noise`` (a latent cache's ``clip_image_embedding``, data/latent_cache.py).
CLIP_EMBEDDING_KEY = "clip_image_embedding"


def _check_rates(ucg_rates: Mapping[str, float] | None, valid: tuple[str, ...]) -> dict[str, float]:
    rates = dict(ucg_rates or {})
    unknown = sorted(set(rates) - set(valid))
    if unknown:
        raise ValueError(f"ucg_rates has unknown keys {unknown}; choose from {list(valid)}")
    return rates


def build_svd_conditioner(
    *,
    encoder: nn.Module,
    clip_arch: str | Mapping[str, Any] = "ViT-H-14",
    clip_pretrained: str | None = None,
    clip_resize: ResizeMode = "kornia",
    ucg_rates: Mapping[str, float] | None = None,
    scale_factor: float = 1.0,
    chunk_size: int | None = None,
) -> GeneralConditioner:
    """The SVD conditioner around a given VAE ``encoder`` (SD 2.1 KL-f8 ``AutoencoderKL``).

    ``ucg_rates`` maps input keys to CFG dropout probabilities; all are 0 in svd.yaml and the I2V training
    rates are unpublished (RECIPE 2), so the default is no dropout.
    """
    rates = _check_rates(ucg_rates, SVD_INPUT_KEYS)
    clip = FrozenOpenCLIPImageEmbedder(clip_arch, pretrained=clip_pretrained, resize=clip_resize)
    modules: dict[str, nn.Module] = {
        "cond_frames_without_noise": FrozenOpenCLIPImagePredictionEmbedder(clip, n_cond_frames=1, n_copies=1),
        "fps_id": ConcatTimestepEmbedderND(256),
        "motion_bucket_id": ConcatTimestepEmbedderND(256),
        "cond_frames": ConcatLatentEmbedder(
            encoder, n_cond_frames=1, n_copies=1, chunk_size=chunk_size, scale_factor=scale_factor
        ),
        "cond_aug": ConcatTimestepEmbedderND(256),
    }
    cached = {"cond_frames_without_noise": CLIP_EMBEDDING_KEY}
    return GeneralConditioner(
        [
            EmbedderSpec(modules[key], key, ucg_rate=rates.get(key, 0.0), cached_key=cached.get(key))
            for key in SVD_INPUT_KEYS
        ]
    )


def build_tiny_svd_conditioner(
    *, encoder: nn.Module, ucg_rates: Mapping[str, float] | None = None
) -> GeneralConditioner:
    """The SVD layout with a tiny random OpenCLIP (``tiny_open_clip_config``) for CPU tests."""
    return build_svd_conditioner(encoder=encoder, clip_arch=tiny_open_clip_config(), ucg_rates=ucg_rates)


def build_sd21_text_conditioner(
    *,
    arch: str | Mapping[str, Any] = "ViT-H-14",
    pretrained: str | None = None,
    input_key: str = "txt",
    ucg_rate: float = 0.0,
    ucg_value: str | None = "",
) -> GeneralConditioner:
    """SD 2.1's text conditioning (sgm ``sd_2_1_768.yaml`` layout: ``embedders.0`` = penultimate OpenCLIP text).

    A dropped caption becomes ``ucg_value`` (default ``""``, i.e. the empty-prompt embedding that SD 2.1 sampling
    uses as the unconditional context); ``ucg_value=None`` zeroes the dropped embeddings instead. The paper's T2V
    base model drops text 15% of the time (RECIPE 2).
    """
    text = FrozenOpenCLIPEmbedder(arch, pretrained=pretrained, layer="penultimate")
    return GeneralConditioner([EmbedderSpec(text, input_key, ucg_rate=ucg_rate, ucg_value=ucg_value)])


TEXT_VIDEO_INPUT_KEYS = ("txt", "fps_id", "motion_bucket_id")


def build_text_video_conditioner(
    *,
    arch: str | Mapping[str, Any] = "ViT-H-14",
    pretrained: str | None = None,
    ucg_rates: Mapping[str, float] | None = None,
) -> GeneralConditioner:
    """Text-to-video (Stages II and III T2V): SD 2.1 text as ``embedders.0`` plus ``fps_id`` and ``motion_bucket_id``
    sinusoids (vector of 512 = UNet ``adm_in_channels``). The paper conditions the video models on frame rate and
    motion score (RECIPE 2, App D.2) and drops text 15% of the time; no official layout exists (RECIPE 8).
    """
    rates = _check_rates(ucg_rates, TEXT_VIDEO_INPUT_KEYS)
    text = FrozenOpenCLIPEmbedder(arch, pretrained=pretrained, layer="penultimate")
    return GeneralConditioner(
        [
            EmbedderSpec(text, "txt", ucg_rate=rates.get("txt", 0.0), ucg_value=""),
            EmbedderSpec(ConcatTimestepEmbedderND(256), "fps_id", ucg_rate=rates.get("fps_id", 0.0)),
            EmbedderSpec(
                ConcatTimestepEmbedderND(256), "motion_bucket_id", ucg_rate=rates.get("motion_bucket_id", 0.0)
            ),
        ]
    )


def build_tiny_sd21_text_conditioner(*, ucg_rate: float = 0.0, ucg_value: str | None = "") -> GeneralConditioner:
    """The SD 2.1 text layout with a tiny random OpenCLIP text tower for CPU tests."""
    return build_sd21_text_conditioner(arch=tiny_open_clip_config(), ucg_rate=ucg_rate, ucg_value=ucg_value)
