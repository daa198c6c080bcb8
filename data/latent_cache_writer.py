"""Writing cached latents (format: ``data/latent_cache.py``): decode source records with a centred window and crop,
encode them with the frozen VAE (and optionally the CLIP image embedder), write the cached shard.

Used by ``scripts/cache_latents.py`` and by ``train/stage_cache.py`` (a stage's sources cached with the stage's own
VAE). The encoders are passed in built (``Encoders``); this module imports no network code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data.errors import BadSample
from data.image_decode import decode_image
from data.latent_cache import CACHE_VERSION, LATENT_MEMBER, pack_latents
from data.micro_cond import MicroCondConfig, fps_id_for, motion_bucket_for
from data.record_members import media_members, parse_json
from data.shard_writer import ShardWriter
from data.sources import iter_shard_records
from data.transforms import to_model_range
from data.video_decode import ClipSpec, decode_clip

log = logging.getLogger(__name__)

CACHE_INPUT_MEMBERS = ("json", "txt")  # copied from the source record next to the latents


@dataclass(frozen=True)
class CacheInput:
    """A source record decoded for caching: centred clip (or image) frames and what the json needs."""

    frames: torch.Tensor  # (T, 3, H, W) uint8; frames[0] is the conditioning frame
    media: Literal["video", "image"]
    meta: dict[str, Any]
    clip_info: dict[str, Any]  # frame_indices, native_fps, stride, effective_fps (empty for images)


def cache_clip_spec(clip: ClipSpec) -> ClipSpec:
    """``clip`` with the centred start and crop a cache uses (the window must not depend on a seed)."""
    return dataclasses.replace(clip, start="center", crop="center")


def decode_for_cache(record: Mapping[str, Any], clip: ClipSpec) -> CacheInput:
    """Decode a source record (video or image) with a centred window and crop; raises ``BadSample``.

    A json is required (it carries captions and the motion score into the cached record); images without one get
    an empty json object.
    """
    spec = cache_clip_spec(clip)
    video, image = media_members(record)
    raw_json = record.get("json")
    if raw_json is None and video is not None:
        raise BadSample("missing_json", "no .json member (videos need one)")
    meta = parse_json(raw_json) if raw_json is not None else {}
    if video is not None:
        decoded = decode_clip(bytes(video[1]), spec)
        clip_info = {
            "frame_indices": list(decoded.frame_indices),
            "native_fps": decoded.native_fps,
            "stride": decoded.stride,
            "effective_fps": decoded.effective_fps,
            "num_padded": decoded.num_padded,
        }
        return CacheInput(decoded.frames, "video", meta, clip_info)
    assert image is not None
    frame = decode_image(bytes(image[1]), size=spec.size, crop="center").frame
    return CacheInput(frame[None], "image", meta, {})  # (3, H, W) -> (1, 3, H, W)


class DecodedShard(IterableDataset):
    """One shard's records decoded for caching, in shard order, as ``(record, item, skip)`` triples.

    ``record`` keeps only ``__key__``, ``__url__``, ``json`` and ``txt`` (the media bytes stay in the worker);
    ``item`` is the ``CacheInput`` or None; ``skip`` is None or ``(reason, message)``. A skipped record still
    yields a triple, so with DataLoader workers (worker w of k decodes records i with i % k == w, and the loader
    takes one item from each worker in turn) the output order is the shard order. Shard-level problems
    (``missing_shard``, ``truncated_shard``) come once, from worker 0, with ``record`` None.
    """

    def __init__(self, url: str, clip: ClipSpec) -> None:
        self.url, self.clip = url, clip

    def __iter__(self) -> Iterator[tuple[dict[str, Any] | None, CacheInput | None, tuple[str, str] | None]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        try:
            for i, record in enumerate(iter_shard_records(self.url)):
                if i % workers != worker:
                    continue
                kept = {k: record[k] for k in ("__key__", "__url__", *CACHE_INPUT_MEMBERS) if k in record}
                try:
                    yield kept, decode_for_cache(record, self.clip), None
                except BadSample as e:
                    yield kept, None, (e.reason, str(e))
        except BadSample as e:
            if worker == 0:
                yield None, None, (e.reason, str(e))


def cached_record_members(
    record: Mapping[str, Any],
    item: CacheInput,
    *,
    latents: bytes,
    clip: ClipSpec,
    micro: MicroCondConfig,
    vae: Mapping[str, Any],
    clip_model: str | None,
    clip_fingerprint: str | None = None,
) -> dict[str, bytes]:
    """The members (extension -> bytes) of the cached record: json with ``latent_cache``, txt, latents."""
    spec = cache_clip_spec(clip)
    if item.media == "video":
        fps_id = fps_id_for(item.clip_info["effective_fps"], micro)
        motion_bucket_id, _ = motion_bucket_for(item.meta, micro)
    else:
        fps_id, motion_bucket_id = micro.default_fps_id, micro.default_motion_bucket
    info = {
        "version": CACHE_VERSION,
        "media": item.media,
        "vae": dict(vae),
        "scale_factor_applied": False,
        "clip": {
            "num_frames": spec.num_frames,
            "target_fps": spec.target_fps,
            "size": list(spec.size),
            "start": spec.start,
            "crop": spec.crop,
        },
        **item.clip_info,
        "fps_id": int(fps_id),
        "motion_bucket_id": int(motion_bucket_id),
        "clip_model": clip_model,
    }
    if clip_fingerprint is not None:  # absent from caches without embeddings (and from caches made before it)
        info["clip_fingerprint"] = clip_fingerprint
    members = {"json": json.dumps({**item.meta, "latent_cache": info}, sort_keys=True).encode(), LATENT_MEMBER: latents}
    if record.get("txt") is not None:
        members["txt"] = bytes(record["txt"]) if not isinstance(record["txt"], str) else record["txt"].encode()
    return members


@dataclass
class Encoders:
    vae: nn.Module  # encode(x) -> DiagonalGaussianDistribution
    vae_info: dict[str, Any]  # how the VAE was made, for the cached json
    clip: nn.Module | None  # FrozenOpenCLIPImageEmbedder, or None for no embedding
    clip_name: str | None
    # The embedder's fingerprint() (taken before any cast to the compute dtype); the trainer checks its own CLIP
    # tower against it before it uses the cached embeddings. Required with ``clip``.
    clip_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.clip is not None and self.clip_fingerprint is None:
            raise ValueError("Encoders with a clip embedder need its clip_fingerprint (clip.fingerprint())")


@dataclass(frozen=True)
class CacheSettings:
    """How one shard is cached: the clip cut (centred window and crop whatever ``clip`` says), the frames per VAE
    forward, the device and compute dtype of the encoders, and the DataLoader processes that decode (0: in this
    process)."""

    clip: ClipSpec
    batch_size: int
    device: str
    dtype: torch.dtype
    workers: int


@torch.no_grad()
def encode_items(items: list[CacheInput], *, encoders: Encoders, settings: CacheSettings) -> list[bytes]:
    """The ``latents.safetensors`` bytes of each item; frames of several items share VAE forwards."""
    vae, clip, device, dtype = encoders.vae, encoders.clip, settings.device, settings.dtype
    frames = torch.cat([it.frames for it in items])  # (sum T, 3, H, W) uint8
    moments = []
    for chunk in frames.split(settings.batch_size):
        posterior = vae.encode(to_model_range(chunk.to(device), dtype=dtype))
        moments.append(torch.cat([posterior.mean, posterior.logvar], dim=1).float().cpu())  # (n, 2z, h, w)
    per_item = torch.cat(moments).split([it.frames.shape[0] for it in items])
    embeddings: list[torch.Tensor | None] = [None] * len(items)
    if clip is not None:
        cond = torch.stack([it.frames[0] for it in items])  # (B, 3, H, W) clean conditioning frames
        embeddings = list(clip(to_model_range(cond.to(device), dtype=dtype)).float().cpu()[:, None])  # B x (1, D)
    return [
        pack_latents(moments=m, cond_frame=it.frames[0], clip_image_embedding=e)
        for it, m, e in zip(items, per_item, embeddings, strict=True)
    ]


def cache_shard(
    url: str,
    out_path: Path,
    *,
    settings: CacheSettings,
    encoders: Encoders,
    counts: Counter[str],
    progress: Callable[[int], object] | None = None,
) -> int | None:
    """Cache one shard; returns samples written, or None when the shard could not be read at all.

    Skipped records are counted in ``counts`` by reason; ``progress(1)`` is called for every record encoded.
    """
    enc = encoders
    clip_spec = cache_clip_spec(settings.clip)
    micro = MicroCondConfig()
    pending: list[tuple[dict, CacheInput]] = []

    def flush(writer: ShardWriter) -> None:
        blobs = encode_items([it for _, it in pending], encoders=enc, settings=settings)
        for (record, item), blob in zip(pending, blobs, strict=True):
            members = cached_record_members(
                record,
                item,
                latents=blob,
                clip=clip_spec,
                micro=micro,
                vae=enc.vae_info,
                clip_model=enc.clip_name,
                clip_fingerprint=enc.clip_fingerprint,
            )
            writer.write(str(record["__key__"]), members)
        pending.clear()

    # batch_size=None: items come one by one, in shard order (see DecodedShard); decoding runs in the workers.
    loader = DataLoader(DecodedShard(url, clip_spec), batch_size=None, num_workers=settings.workers)
    try:
        with ShardWriter(out_path) as writer:
            for record, item, skip in loader:
                if skip is not None:
                    counts[skip[0]] += 1
                    where = f"shard {url}" + (f" key {record['__key__']}" if record is not None else "")
                    log.warning("%s: skipped: %s", where, skip[1])
                    if skip[0] == "missing_shard":
                        raise _Unreadable  # leave no (empty) output and no marker: a re-run tries again
                    continue
                if progress is not None:
                    progress(1)
                pending.append((record, item))
                if sum(it.frames.shape[0] for _, it in pending) >= settings.batch_size:
                    flush(writer)
            if pending:
                flush(writer)
    except _Unreadable:
        return None
    return writer.count


class _Unreadable(Exception):
    """The input shard could not be opened; abandons its output."""
