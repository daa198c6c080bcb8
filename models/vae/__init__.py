"""The SD KL-f8 autoencoder and SVD's temporal VAE decoder (RECIPE 4)."""

from .autoencoder import LATENT_SCALE_FACTOR, AutoencoderKL, TemporalAutoencoder, build_autoencoder
from .blocks import AttnBlock, Downsample, ResnetBlock
from .decoder import Decoder
from .distributions import DiagonalGaussianDistribution
from .encoder import Encoder
from .spec import AutoencoderSpec, tiny_autoencoder_spec
from .temporal_decoder import AE3DConv, VideoDecoder, VideoResnetBlock
from .temporal_init import folded_post_quant_conv, init_temporal_identity_, is_temporal_decoder_key, temporal_from_kl

__all__ = [
    "AE3DConv",
    "LATENT_SCALE_FACTOR",
    "AttnBlock",
    "AutoencoderKL",
    "AutoencoderSpec",
    "DiagonalGaussianDistribution",
    "Decoder",
    "Downsample",
    "Encoder",
    "ResnetBlock",
    "TemporalAutoencoder",
    "VideoDecoder",
    "VideoResnetBlock",
    "build_autoencoder",
    "folded_post_quant_conv",
    "init_temporal_identity_",
    "is_temporal_decoder_key",
    "temporal_from_kl",
    "tiny_autoencoder_spec",
]
