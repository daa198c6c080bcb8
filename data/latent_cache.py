"""Cached latents: the record format ``scripts/cache_latents.py`` writes (``data/latent_cache_writer.py``) and the
decoder that reads it back.

A cached record keeps the source record's ``KEY.json`` (plus a ``latent_cache`` object) and ``KEY.txt``, and
replaces the media with one member ``KEY.latents.safetensors`` (``safetensors.torch.save`` of a dict):

- ``moments``: (T, 2*z, h, w) float16, the VAE posterior's mean and (clamped) logvar concatenated on channels.
  The moments, not one fixed draw, are cached so that training still samples ``z = mean + std * eps`` afresh every
  epoch, exactly as the uncached path does (sgm's first stage samples its posterior); a cached sample would train
  on the same noise forever. Unscaled: the trainer multiplies by the VAE's ``scale_factor`` as for fresh latents.
- ``cond_frame``: (3, H, W) uint8, the clean conditioning frame (frame 0). SVD's conditioning-frame noise
  augmentation (``cond_aug``) is added in pixel space *before* the concat-latent encoder, with a fresh sigma per
  sample, so the concat latent cannot be cached exactly; the trainer encodes this frame with noise instead.
- ``clip_image_embedding`` (optional): (1, D) float16, the CLIP image embedding of the clean conditioning frame
  (the CLIP embedder sees the image without noise, RECIPE 2), so the trainer can skip the ViT-H.

The json's ``latent_cache`` object records how the latents were made: ``version``, ``media`` (video or image),
``vae`` (source, sha256, kind), ``scale_factor_applied`` (false), ``clip`` (num_frames, target_fps, size, start,
crop), ``frame_indices``, ``native_fps``, ``stride``, ``effective_fps``, ``fps_id``, ``motion_bucket_id``,
``clip_model`` and, with an embedding, ``clip_fingerprint`` (the CLIP embedder's ``fingerprint()``: sha256 of its
preprocessing and float32 weights). Caching is deterministic: the clip window is centred and the crop is centred.
A cache therefore fixes one window per video; training with random windows or random crops needs the uncached path.

``decode_cached_sample`` turns such a record into the same ``Sample`` contract, with ``latent_moments``,
``cond_frame`` and ``clip_image_embedding`` instead of ``frames``. ``fps_id`` comes from the cached clip's
``effective_fps`` and ``motion_bucket_id`` from the json's motion score, both through the *current*
``MicroCondConfig`` (so a recalibrated mapping applies without re-caching; with the cache-time config they equal
the stored ``fps_id`` / ``motion_bucket_id``). The caption is still drawn per epoch with the ``CaptionPicker``.
The embedding comes with its ``clip_fingerprint`` (the trainer uses it only when its own CLIP tower has that
fingerprint, and raises otherwise); an embedding from a cache made before fingerprints were recorded is left out
(warned once), so the trainer recomputes it.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.torch
import torch

from data.batch import Sample
from data.captions import CaptionPicker
from data.errors import BadSample
from data.micro_cond import MicroCondConfig, fps_id_for, motion_bucket_for, with_elevation
from data.record_members import as_text, parse_json
from data.video_decode import ClipSpec

log = logging.getLogger(__name__)

LATENT_MEMBER = "latents.safetensors"  # the record extension: KEY.latents.safetensors
CACHE_VERSION = 1
MOMENTS_DTYPE = torch.float16  # range of the posterior's mean and logvar (|x| < 100, logvar in [-30, 20])


def pack_latents(
    *, moments: torch.Tensor, cond_frame: torch.Tensor, clip_image_embedding: torch.Tensor | None = None
) -> bytes:
    """The ``KEY.latents.safetensors`` bytes: moments (T, 2z, h, w) and the embedding as float16, the frame uint8."""
    if moments.ndim != 4 or moments.shape[1] % 2:
        raise ValueError(f"moments must be (T, 2*z, h, w) (mean and logvar on channels); got {tuple(moments.shape)}")
    if cond_frame.ndim != 3 or cond_frame.shape[0] != 3 or cond_frame.dtype != torch.uint8:
        raise ValueError(f"cond_frame must be (3, H, W) uint8; got {cond_frame.dtype} {tuple(cond_frame.shape)}")
    tensors = {
        "moments": moments.detach().to("cpu", MOMENTS_DTYPE).contiguous(),
        "cond_frame": cond_frame.detach().cpu().contiguous(),
    }
    if clip_image_embedding is not None:
        if clip_image_embedding.ndim != 2 or clip_image_embedding.shape[0] != 1:
            raise ValueError(f"clip_image_embedding must be (1, D); got {tuple(clip_image_embedding.shape)}")
        tensors["clip_image_embedding"] = clip_image_embedding.detach().to("cpu", MOMENTS_DTYPE).contiguous()
    return safetensors.torch.save(tensors, metadata={"format": "svd-latent-cache", "version": str(CACHE_VERSION)})


def unpack_latents(data: bytes) -> dict[str, torch.Tensor]:
    """Read a ``latents.safetensors`` member; ``BadSample("corrupt_latents")`` when it is unreadable or malformed."""
    try:
        tensors = safetensors.torch.load(bytes(data))
    except Exception as exc:  # safetensors raises its own SafetensorError or others on bad headers
        raise BadSample("corrupt_latents", f"cannot load: {type(exc).__name__}: {str(exc)[:200]}") from exc
    moments, frame = tensors.get("moments"), tensors.get("cond_frame")
    if moments is None or moments.ndim != 4 or moments.shape[1] % 2 or not moments.is_floating_point():
        shape = None if moments is None else tuple(moments.shape)
        raise BadSample("corrupt_latents", f"moments missing or not (T, 2z, h, w) float: {shape}")
    if frame is None or frame.ndim != 3 or frame.shape[0] != 3 or frame.dtype != torch.uint8:
        raise BadSample("corrupt_latents", "cond_frame missing or not (3, H, W) uint8")
    emb = tensors.get("clip_image_embedding")
    if emb is not None and (emb.ndim != 2 or emb.shape[0] != 1):
        raise BadSample("corrupt_latents", f"clip_image_embedding is not (1, D): {tuple(emb.shape)}")
    return tensors


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def check_cache_matches(info: Mapping[str, Any], clip: ClipSpec) -> None:
    """ValueError when a cached record was made for another clip length, rate or size than ``clip`` asks for."""
    cached = info.get("clip", {})
    want = {"num_frames": clip.num_frames, "target_fps": clip.target_fps, "size": list(clip.size)}
    have = {k: cached.get(k) for k in want}
    if info.get("media") == "image":  # images are 1-frame clips at the stage size whatever num_frames says
        want, have = {"size": want["size"]}, {"size": have["size"]}
    if have != want:
        raise ValueError(
            f"cached latents were made for {have} but the data config asks for {want}; re-run "
            "scripts/cache_latents.py with --num-frames/--target-fps/--size of this stage, or point the stage at "
            "the uncached shards"
        )
    if clip.start != "center" or clip.crop != "center":
        _warn_once(
            f"ClipSpec(start={clip.start!r}, crop={clip.crop!r}) is ignored for cached latents: the cache holds "
            "one centred window and crop per video; use the uncached shards for random windows"
        )


def decode_cached_sample(
    record: Mapping[str, Any],
    *,
    captions: CaptionPicker,
    micro: MicroCondConfig,
    rng: np.random.Generator,
    clip: ClipSpec | None = None,
    counters: Counter[str] | None = None,
) -> Sample:
    """A cached record (see the module docstring) -> ``Sample`` with ``latent_moments`` and ``cond_frame``.

    ``clip``, when given, must match the cached clip spec (``check_cache_matches``). ``rng`` draws the caption.
    """
    raw_json = record.get("json")
    if raw_json is None:
        raise BadSample("missing_json", "a cached record needs its .json (it holds the latent_cache info)")
    meta = parse_json(raw_json)
    info = meta.get("latent_cache")
    if not isinstance(info, Mapping) or info.get("version") != CACHE_VERSION:
        version = info.get("version") if isinstance(info, Mapping) else None
        raise BadSample("corrupt_latents", f"json has no latent_cache object of version {CACHE_VERSION} ({version})")
    if clip is not None:
        check_cache_matches(info, clip)
    tensors = unpack_latents(record[LATENT_MEMBER])
    moments = tensors["moments"]  # (T, 2z, h, w) float16
    num_frames = moments.shape[0]
    if info.get("media") == "image":
        indicator = torch.ones(num_frames, dtype=torch.float32)
        fps_id, motion_bucket_id = micro.default_fps_id, micro.default_motion_bucket
    else:
        indicator = torch.zeros(num_frames, dtype=torch.float32)
        fps_id = fps_id_for(float(info["effective_fps"]), micro)
        motion_bucket_id, motion_default = motion_bucket_for(meta, micro)
        if counters is not None and motion_default:
            counters["motion_default"] += 1
        if counters is not None and int(info.get("num_padded", 0)) > 0:  # padded when it was cached
            counters["padded_short"] += 1
    txt = as_text(record["txt"]) if record.get("txt") is not None else None
    choice = captions.pick(meta, txt=txt, rng=rng)
    if counters is not None and choice.source == "none":
        counters["no_caption"] += 1
    sample = Sample(
        latent_moments=moments,
        cond_frame=tensors["cond_frame"],
        image_only_indicator=indicator,
        fps_id=int(fps_id),
        motion_bucket_id=int(motion_bucket_id),
        caption=choice.text,
        key=as_text(record.get("__key__", "")),
        shard=as_text(record.get("__url__", "")),
    )
    with_elevation(sample, meta)
    if "clip_image_embedding" in tensors:
        fingerprint = info.get("clip_fingerprint")
        if isinstance(fingerprint, str):
            sample["clip_image_embedding"] = tensors["clip_image_embedding"]
            sample["clip_fingerprint"] = fingerprint
        else:
            _warn_once(
                "cached CLIP image embeddings without a clip_fingerprint (a cache from before fingerprints) are not "
                "used: the trainer recomputes CLIP; re-run scripts/cache_latents.py --clip-model ... to use them"
            )
    return sample
