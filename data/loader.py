"""From shards to batches: the decode function, the ``ShardStream`` and the ``DataLoader``, built from config.

``DatasetConfig`` gathers the typed pieces (sources, clip spec, caption picker, micro-conditioning, stream
settings); ``build_stream`` wires ``decode_sample`` into a ``ShardStream``; ``build_dataloader`` adds the
collate that turns ``Sample`` dicts into a ``Batch`` and passes each sample's ``_stream`` info through, so the
trainer's ``StreamTracker`` sees positions and skip counters.
"""

from __future__ import annotations

import functools
import signal
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.utils.data import DataLoader

from data.batch import Batch, Sample
from data.captions import CaptionPicker
from data.micro_cond import MicroCondConfig
from data.sample_decode import decode_sample
from data.sources import DataSources, SourceSpec
from data.stream import ShardStream, StreamConfig
from data.stream_state import STREAM_KEY
from data.video_decode import ClipSpec, keep_decode_buffers


@dataclass
class DatasetConfig:
    """Everything that decides which samples a stage sees and how they are decoded."""

    sources: list[SourceSpec]
    clip: ClipSpec = field(default_factory=ClipSpec)
    captions: CaptionPicker = field(default_factory=CaptionPicker)
    micro: MicroCondConfig = field(default_factory=MicroCondConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    # Videos need their json (motion score, captions); img2dataset images may come with only a .txt.
    require_json: Literal["always", "video", "never"] = "video"


def build_stream(
    config: DatasetConfig, *, epoch: int = 0, rank: int | None = None, world_size: int | None = None
) -> ShardStream:
    """The stream of decoded samples for this rank (rank and world size default to torch.distributed / env)."""
    decode = functools.partial(
        decode_sample, clip=config.clip, captions=config.captions, micro=config.micro, require_json=config.require_json
    )
    return ShardStream(
        DataSources(config.sources), decode=decode, config=config.stream, epoch=epoch, rank=rank, world_size=world_size
    )


# Per-sample tensors that collate stacks when the samples carry them: decoded frames, or cached latents
# (data/latent_cache.py) with the clean conditioning frame and, optionally, its CLIP image embedding.
STACKED_FIELDS = ("frames", "latent_moments", "cond_frame", "clip_image_embedding")


def collate_samples(samples: list[Sample]) -> Batch:
    """Stack samples into a ``Batch``; every sample of a batch must have the same number of frames.

    ``frames``, ``latent_moments``, ``cond_frame`` and ``clip_image_embedding`` are stacked when present; all
    samples of a batch must carry the same ones (a batch cannot mix cached and uncached samples).
    """
    lengths = {int(s["image_only_indicator"].shape[0]) for s in samples}
    if len(lengths) != 1:
        raise ValueError(
            f"a batch mixes clips of {sorted(lengths)} frames; keep images and videos in separate sources of "
            "separate stages, or give ClipSpec.on_short='pad' so every clip has num_frames"
        )
    batch = Batch(
        image_only_indicator=torch.stack([s["image_only_indicator"] for s in samples]),
        fps_id=torch.tensor([s["fps_id"] for s in samples], dtype=torch.long),
        motion_bucket_id=torch.tensor([s["motion_bucket_id"] for s in samples], dtype=torch.long),
        caption=[s["caption"] for s in samples],
        key=[s["key"] for s in samples],
        shard=[s["shard"] for s in samples],
    )
    for name in STACKED_FIELDS:
        have = sum(name in s for s in samples)
        if have == 0:
            continue
        if have != len(samples):
            raise ValueError(
                f"{have} of {len(samples)} samples of a batch carry {name!r}: a batch cannot mix cached-latent and "
                "decoded samples (or samples with and without a CLIP embedding); give each its own source and stage"
            )
        shapes = sorted({tuple(s[name].shape) for s in samples})  # type: ignore[literal-required]
        if len(shapes) != 1:
            raise ValueError(f"a batch mixes {name!r} of shapes {shapes}; cache or decode all clips at one size")
        batch[name] = torch.stack([s[name] for s in samples])  # type: ignore[literal-required]
    carrying = [s["key"] for s in samples if "elevation" in s]
    if carrying and len(carrying) != len(samples):
        lacking = [s["key"] for s in samples if "elevation" not in s]
        raise ValueError(
            f"samples {lacking[:5]} have no 'elevation' in their json but {carrying[:5]} do: a batch cannot mix "
            "orbit records (elevation in degrees) and others; give the multiview stage only orbit shards"
        )
    if carrying:
        batch["elevation"] = torch.tensor([s["elevation"] for s in samples], dtype=torch.float32)
    if "clip_image_embedding" in batch:  # which CLIP made them, checked by the trainer before use
        batch["clip_fingerprint"] = [s["clip_fingerprint"] for s in samples]
    if "frames" not in batch and "latent_moments" not in batch:
        raise ValueError("samples carry neither 'frames' nor 'latent_moments'; is the decode function a data/ one?")
    if all(STREAM_KEY in s for s in samples):
        batch[STREAM_KEY] = [s[STREAM_KEY] for s in samples]  # type: ignore[literal-required]
    return batch


def build_dataloader(
    stream: ShardStream, *, batch_size: int, num_workers: int, pin_memory: bool = False, prefetch_factor: int = 2
) -> DataLoader:
    """An in-order DataLoader over the stream (in-order delivery is what makes the resume position exact)."""
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"need batch_size >= 1 and num_workers >= 0; got {batch_size} and {num_workers}")
    return DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_samples,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        in_order=True,
        worker_init_fn=_init_worker,
    )


def _init_worker(worker_id: int) -> None:
    # Reuse the per-clip decode buffers instead of page-faulting fresh ones (see keep_decode_buffers): workers only.
    keep_decode_buffers()
    # SLURM's preemption warning (--signal=USR1@...) may reach the whole process group: only the trainer acts on
    # it (train/preemption.py); its default action would kill the worker and crash the loader.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
