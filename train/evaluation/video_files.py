"""Reading evaluation videos from files: folders of generated mp4/gif, UCF-101 .avi files.

``read_clip`` cuts a clip from a file with the training decoder (``data.video_decode.decode_clip``: decord, the same
frame selection, cover-resize and crop) and falls back to PyAV when decord cannot read the file (some AVI/Xvid files,
GIFs). ``read_video`` returns every frame of a file, for generated clips that are evaluated whole.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from data.errors import BadSample
from data.transforms import resize_and_crop
from data.video_decode import ClipSpec, DecodedClip, clip_indices, decode_clip, stride_for

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".gif")


def list_videos(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Video files under ``folder`` (sorted by path); ValueError when there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of videos")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise ValueError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {root}; the video set is empty")
    if any(p.suffix.lower() == ".mp4" for p in files) and any(p.suffix.lower() == ".gif" for p in files):
        # scripts/sample.py and the SampleVideos callback write each video twice, as .mp4 and .gif.
        stems = {p.with_suffix("") for p in files if p.suffix.lower() == ".mp4"}
        files = [p for p in files if not (p.suffix.lower() == ".gif" and p.with_suffix("") in stems)]
    return files


def _read_gif(path: Path) -> tuple[np.ndarray, float]:
    from PIL import Image, ImageSequence

    with Image.open(path) as gif:
        frames = [np.asarray(f.convert("RGB"), dtype=np.uint8) for f in ImageSequence.Iterator(gif)]
        duration_ms = float(gif.info.get("duration") or 0.0)
    return np.stack(frames), (1000.0 / duration_ms if duration_ms > 0 else float("nan"))


def _read_pyav(path: Path) -> tuple[np.ndarray, float]:
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except (av.FFmpegError, IndexError) as exc:
        raise ValueError(f"cannot read {path} with PyAV: {exc}") from exc
    if not frames:
        raise ValueError(f"{path} has no video frames")
    return np.stack(frames), float(rate) if rate else float("nan")


def read_video(path: str | os.PathLike[str]) -> tuple[torch.Tensor, float]:
    """Every frame of a video file as uint8 (T, 3, H, W) and its frame rate (NaN when the file has none)."""
    path = Path(path)
    array, fps = _read_gif(path) if path.suffix.lower() == ".gif" else _read_pyav(path)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous(), fps  # (T, H, W, 3) -> (T, 3, H, W)


def read_clip(path: str | os.PathLike[str], spec: ClipSpec, *, rng: np.random.Generator | None = None) -> DecodedClip:
    """A clip as ``decode_clip`` cuts it (frames, stride, resize and crop of ``spec``); decord first, then PyAV.

    Raises ``BadSample("too_few_frames")`` for a video shorter than the clip with ``spec.on_short="skip"``.
    """
    path = Path(path)
    if path.suffix.lower() != ".gif":
        try:
            return decode_clip(path.read_bytes(), spec, rng=rng)
        except BadSample as exc:
            if exc.reason != "corrupt_video":
                raise
    frames, fps = read_video(path)
    if not fps > 0:
        fps = spec.target_fps or 1.0  # no rate in the file: take frames as they come (stride 1)
    stride = stride_for(fps, spec)
    indices, num_padded = clip_indices(len(frames), stride=stride, spec=spec, rng=rng)
    clip = resize_and_crop(frames[torch.tensor(indices)], size=spec.size, crop=spec.crop, rng=rng)
    return DecodedClip.from_frames(clip, native_fps=fps, stride=stride, indices=indices, num_padded=num_padded)


def iter_file_clips(
    paths: Sequence[Path], spec: ClipSpec, *, seed: int = 0, skipped: Counter[str] | None = None
) -> Iterator[torch.Tensor]:
    """``read_clip(path, spec).frames`` of each file in order; a file that is too short (``on_short="skip"``) or
    unreadable is skipped and counted in ``skipped`` (reason -> count). File i's random start (``start="random"``)
    is drawn from a generator seeded with (seed, i)."""
    for i, path in enumerate(paths):
        try:
            yield read_clip(path, spec, rng=np.random.default_rng([seed, i])).frames
        except (BadSample, ValueError) as exc:
            if skipped is not None:
                skipped[exc.reason if isinstance(exc, BadSample) else "unreadable"] += 1


def iter_video_files(
    paths: Sequence[Path], *, size: tuple[int, int] | None = None, num_frames: int | None = None
) -> Iterator[torch.Tensor]:
    """uint8 (T, 3, H, W) of each file, whole (or its first ``num_frames``), cover-resized and centre-cropped to
    ``size`` when given. Raises ValueError for a file with too few frames."""
    for path in paths:
        frames, _ = read_video(path)
        if num_frames is not None:
            if len(frames) < num_frames:
                raise ValueError(f"{path} has {len(frames)} frames, fewer than the {num_frames} evaluated")
            frames = frames[:num_frames]
        yield resize_and_crop(frames, size=size) if size is not None else frames


def iter_shard_clips(
    urls: Sequence[str],
    *,
    num_frames: int,
    size: tuple[int, int],
    target_fps: float | None = None,
    seed: int = 0,
) -> Iterator[torch.Tensor]:
    """uint8 (T, 3, H, W) clips from WebDataset shards through the training stream (one pass, no shuffle, centred
    clips and crops), so evaluation sees clips cut exactly as training does. Bad samples are skipped and counted by
    the stream; image samples (1 frame) are dropped when ``num_frames`` > 1."""
    from data.loader import DatasetConfig, build_stream
    from data.sources import SourceSpec
    from data.stream import StreamConfig

    config = DatasetConfig(
        sources=[SourceSpec(list(urls))],
        clip=ClipSpec(num_frames=num_frames, target_fps=target_fps, size=size, start="center", crop="center"),
        stream=StreamConfig(seed=seed, shuffle_buffer=0, passes=1),
        require_json="never",
    )
    for sample in build_stream(config, rank=0, world_size=1).iter_worker(0, num_workers=1):
        frames = sample.get("frames")
        if frames is not None and frames.shape[0] == num_frames:
            yield frames
