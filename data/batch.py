"""The contract between ``data/`` and ``train/``: what one decoded sample and one collated batch hold.

``data/`` yields ``Sample`` dicts (one clip or one image as a 1-frame clip); the default collate stacks them
into a ``Batch``. ``train/`` turns a batch into latents, sigmas and conditions; ``data/`` never imports
``models/``.
"""

from __future__ import annotations

from typing import TypedDict

import torch


class Sample(TypedDict):
    """One training example. Images are 1-frame clips with ``image_only_indicator`` = 1."""

    frames: torch.Tensor  # (T, 3, H, W) float32 in [-1, 1]; frames[0] is the conditioning frame
    image_only_indicator: torch.Tensor  # (T,) float32: 1 for image samples, 0 for video frames
    fps_id: int  # micro-conditioning (see data/micro_cond.py for the mapping)
    motion_bucket_id: int
    caption: str
    key: str  # the sample's key in its shard
    shard: str  # the shard it came from (for logs and bad-sample reports)


class Batch(TypedDict):
    frames: torch.Tensor  # (B, T, 3, H, W)
    image_only_indicator: torch.Tensor  # (B, T)
    fps_id: torch.Tensor  # (B,) long
    motion_bucket_id: torch.Tensor  # (B,) long
    caption: list[str]
    key: list[str]
    shard: list[str]
