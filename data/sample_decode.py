"""Turn one WebDataset sample (``{"__key__", "__url__", ext: bytes}``) into the ``data.batch.Sample`` contract.

Video samples (video2dataset layout: ``KEY.mp4`` + ``KEY.json`` + ``KEY.txt``) become ``num_frames``-frame clips
with ``image_only_indicator`` zeros; image samples (img2dataset layout: ``KEY.jpg|png|webp`` + ``KEY.txt`` +
``KEY.json``) become 1-frame clips with ``image_only_indicator`` ones and the default ``fps_id`` and
``motion_bucket_id``. Frames are (T, 3, H, W) uint8 either way (the trainer maps them to [-1, 1]). The json is
parsed before any media is decoded, so a bad json costs nothing. Problems raise ``BadSample``; conditions that are
not errors but worth counting (a converted image mode, a default motion bucket, a missing caption, a clip padded
because the video is short: ``padded_short``, which ``data/stream.py`` counts per worker) are added to the optional
``counters``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

from data.batch import Sample
from data.captions import CaptionPicker
from data.errors import BadSample
from data.image_decode import decode_image
from data.latent_cache import LATENT_MEMBER, decode_cached_sample
from data.micro_cond import MicroCondConfig, fps_id_for, motion_bucket_for, with_elevation
from data.record_members import as_text, media_members, parse_json
from data.video_decode import ClipSpec, decode_clip


def decode_sample(
    sample: Mapping[str, Any],
    *,
    clip: ClipSpec,
    captions: CaptionPicker,
    micro: MicroCondConfig,
    rng: np.random.Generator,
    require_json: Literal["always", "video", "never"] = "video",
    counters: Counter[str] | None = None,
) -> Sample:
    """Decode a WebDataset sample dict into a ``Sample`` (video clip, or an image as a 1-frame clip).

    ``require_json="video"`` (default) needs a json for video samples, where the motion score and captions live,
    and lets images come with only a ``.txt``. ``rng`` drives the clip start, crop and caption draw.
    """
    if require_json not in ("always", "video", "never"):
        raise ValueError(f'require_json must be "always", "video" or "never"; got {require_json!r}')
    if LATENT_MEMBER in sample:  # a cached record (scripts/cache_latents.py; see data/latent_cache.py)
        return decode_cached_sample(sample, captions=captions, micro=micro, rng=rng, clip=clip, counters=counters)
    key = as_text(sample.get("__key__", ""))
    shard = as_text(sample.get("__url__", ""))
    video, image = media_members(sample)
    raw_json = sample.get("json")
    if raw_json is None and (require_json == "always" or (require_json == "video" and video is not None)):
        raise BadSample("missing_json", f"no .json member (require_json={require_json!r})")
    meta = parse_json(raw_json) if raw_json is not None else None
    txt = as_text(sample["txt"]) if sample.get("txt") is not None else None

    if video is not None:
        decoded = decode_clip(bytes(video[1]), clip, rng=rng)
        frames = decoded.frames
        indicator = torch.zeros(frames.shape[0], dtype=torch.float32)
        fps_id = fps_id_for(decoded.effective_fps, micro)
        motion_bucket_id, motion_default = motion_bucket_for(meta, micro)
        _count(counters, "motion_default", motion_default)
        _count(counters, "padded_short", decoded.num_padded > 0)
    else:
        assert image is not None
        decoded_image = decode_image(bytes(image[1]), size=clip.size, crop=clip.crop, rng=rng)
        frames = decoded_image.frame[None]  # (3, H, W) -> (1, 3, H, W)
        indicator = torch.ones(1, dtype=torch.float32)
        fps_id, motion_bucket_id = micro.default_fps_id, micro.default_motion_bucket
        converted = decoded_image.converted_from
        _count(counters, f"image_converted_from_{converted}", converted is not None)

    choice = captions.pick(meta, txt=txt, rng=rng)
    _count(counters, "no_caption", choice.source == "none")
    decoded_sample = Sample(
        frames=frames,
        image_only_indicator=indicator,
        fps_id=int(fps_id),
        motion_bucket_id=int(motion_bucket_id),
        caption=choice.text,
        key=key,
        shard=shard,
    )
    return with_elevation(decoded_sample, meta)


def _count(counters: Counter[str] | None, name: str, happened: bool) -> None:
    if counters is not None and happened:
        counters[name] += 1
