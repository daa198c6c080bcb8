"""The SD 2.1 / SVD (video) UNet."""

from .spec import TemporalSpec, UNetSpec, sd21_unet_spec, svd_unet_spec, tiny_unet_spec
from .temporal import AlphaBlender, SpatialVideoTransformer, VideoResBlock, VideoTransformerBlock
from .unet import TimestepEmbedSequential, VideoUNet

__all__ = [
    "AlphaBlender",
    "SpatialVideoTransformer",
    "TemporalSpec",
    "TimestepEmbedSequential",
    "UNetSpec",
    "VideoResBlock",
    "VideoTransformerBlock",
    "VideoUNet",
    "sd21_unet_spec",
    "svd_unet_spec",
    "tiny_unet_spec",
]
