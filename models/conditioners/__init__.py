"""Conditioning embedders and the conditioner that routes them (RECIPE 2)."""

from models.conditioners.concat_latent import ConcatLatentEmbedder, add_cond_noise
from models.conditioners.general import EmbedderSpec, GeneralConditioner
from models.conditioners.image_resize import resize_bicubic
from models.conditioners.open_clip_factory import build_open_clip, tiny_open_clip_config
from models.conditioners.open_clip_image import FrozenOpenCLIPImageEmbedder, FrozenOpenCLIPImagePredictionEmbedder
from models.conditioners.open_clip_text import FrozenOpenCLIPEmbedder
from models.conditioners.presets import (
    CLIP_EMBEDDING_KEY,
    SVD_INPUT_KEYS,
    SVD_UC_ZERO_KEYS,
    build_sd21_text_conditioner,
    build_svd_conditioner,
    build_text_video_conditioner,
    build_tiny_sd21_text_conditioner,
    build_tiny_svd_conditioner,
)
from models.conditioners.timestep import ConcatTimestepEmbedderND

__all__ = [
    "CLIP_EMBEDDING_KEY",
    "SVD_INPUT_KEYS",
    "SVD_UC_ZERO_KEYS",
    "ConcatLatentEmbedder",
    "ConcatTimestepEmbedderND",
    "EmbedderSpec",
    "FrozenOpenCLIPEmbedder",
    "FrozenOpenCLIPImageEmbedder",
    "FrozenOpenCLIPImagePredictionEmbedder",
    "GeneralConditioner",
    "add_cond_noise",
    "build_open_clip",
    "build_sd21_text_conditioner",
    "build_svd_conditioner",
    "build_text_video_conditioner",
    "build_tiny_sd21_text_conditioner",
    "build_tiny_svd_conditioner",
    "resize_bicubic",
    "tiny_open_clip_config",
]
