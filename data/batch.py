"""The contract between ``data/`` and ``train/``: what one decoded sample and one collated batch hold.

``data/`` yields ``Sample`` dicts (one clip or one image as a 1-frame clip); the default collate stacks them
into a ``Batch``. Frames are uint8 in [0, 255] all the way from the decoder to the trainer (a quarter of the
shared-memory traffic of float32 between DataLoader workers and the main process); ``train/`` moves the batch to
its device, maps the frames to [-1, 1] with ``data.transforms.to_model_range`` and turns the batch into latents,
sigmas and conditions. ``data/`` never imports ``models/``.
"""

# No "from __future__ import annotations" here: TypedDict sees NotRequired only in evaluated annotations
# (with string annotations Python 3.11 lists every key in __required_keys__).
import sys
from typing import TypedDict

import torch

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # pyproject allows 3.10; typing_extensions comes with torch
    from typing_extensions import NotRequired


class Sample(TypedDict):
    """One training example. Images are 1-frame clips with ``image_only_indicator`` = 1."""

    # (T, 3, H, W) uint8 in [0, 255]; to_model_range() maps to [-1, 1] on the trainer's device.
    # frames[0] is the conditioning frame. Absent from cached-latent samples, which carry the three fields below.
    frames: NotRequired[torch.Tensor]
    image_only_indicator: torch.Tensor  # (T,) float32: 1 for image samples, 0 for video frames
    fps_id: int  # micro-conditioning (see data/micro_cond.py for the mapping)
    motion_bucket_id: int
    caption: str
    key: str  # the sample's key in its shard
    shard: str  # the shard it came from (for logs and bad-sample reports)
    # Cached latents (data/latent_cache.py, written by scripts/cache_latents.py), instead of frames:
    latent_moments: NotRequired[torch.Tensor]  # (T, 2z, h, w) float16: VAE posterior mean and logvar, unscaled
    cond_frame: NotRequired[torch.Tensor]  # (3, H, W) uint8: the clean conditioning frame (cond_aug is added later)
    clip_image_embedding: NotRequired[torch.Tensor]  # (1, D) float16: CLIP embedding of the clean cond frame
    clip_fingerprint: NotRequired[str]  # with clip_image_embedding: the fingerprint of the CLIP that made it
    elevation: NotRequired[float]  # camera elevation in degrees, when the json has one (multi-view orbits)


class Batch(TypedDict):
    # (B, T, 3, H, W) uint8 in [0, 255]; to_model_range() maps to [-1, 1] on the trainer's device
    frames: NotRequired[torch.Tensor]
    image_only_indicator: torch.Tensor  # (B, T)
    fps_id: torch.Tensor  # (B,) long
    motion_bucket_id: torch.Tensor  # (B,) long
    caption: list[str]
    key: list[str]
    shard: list[str]
    # Cached-latent batches (collate stacks what the samples carry; a batch never mixes the two kinds):
    latent_moments: NotRequired[torch.Tensor]  # (B, T, 2z, h, w) float16
    cond_frame: NotRequired[torch.Tensor]  # (B, 3, H, W) uint8
    clip_image_embedding: NotRequired[torch.Tensor]  # (B, 1, D) float16
    clip_fingerprint: NotRequired[list[str]]  # with clip_image_embedding, one per sample
    elevation: NotRequired[torch.Tensor]  # (B,) float32 degrees, when every sample carries one
