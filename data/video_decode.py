"""Decode one training clip from a sample's video bytes with decord, reading only the frames it uses.

A clip is ``num_frames`` frames taken every ``stride`` source frames, where ``stride = round(native_fps /
target_fps)`` (at least 1, at most ``max_stride``); its ``effective_fps = native_fps / stride`` is what
``data/micro_cond.py`` turns into ``fps_id``. The start is uniform (``rng``) or centred; only the chosen indices are
decoded with one ``get_batch`` call, then the short side is resized to cover the target and the clip cropped, all in
uint8 (``data.transforms.to_model_range`` maps to [-1, 1] on the trainer's device).

Failure modes, each mapped to a ``BadSample`` reason so the stream can skip and count it:

- empty bytes, or a reader that reports zero frames -> ``empty_video``;
- a truncated ISO-BMFF file (mp4/mov/m4v), caught by walking its top-level boxes *before* decord sees it ->
  ``corrupt_video``. decord opens a file cut after its ``moov`` index, over-reports ``len()`` from that index, and
  then raises or even segfaults in ``get_batch`` when it reaches the missing bytes, so a partial decode is never
  attempted: a truncated file is corrupt, not short;
- bytes that start like no known container (mp4/mov, mkv/webm, avi, flv, ogg, mpeg ps/ts) -> ``corrupt_video``
  without calling decord, whose failed opens leak memory and print the bytes to stderr;
- anything decord cannot open or read (no video stream, a broken index, a failed seek) -> ``corrupt_video``;
- fewer frames than the clip spans -> ``too_few_frames`` with ``on_short="skip"``, or the last frame repeated with
  ``on_short="pad"`` (the stride, hence ``fps_id``, is kept).

Rotation: decord applies the display matrix of the mp4 track header (phone videos shot in portrait), so frames
come out in display orientation, as players show them (tested for 0/90/180/270 degrees).

Variable frame rate: decord's ``get_avg_fps`` is an average and indices are frame numbers, so a VFR clip is sampled
every ``stride`` frames, not at exact timestamps. Screen recordings and phone videos can be VFR; curation that
re-encodes to constant frame rate (as video2dataset can) avoids the drift.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack

from data.errors import BadSample
from data.transforms import CropMode, check_size, resize_and_crop

_BMFF_MEDIA_BOXES = (b"moov", b"mdat", b"moof")  # a cut one of these loses frames
# Box types an mp4/mov/3gp file can start with (QuickTime files may open with moov, mdat, wide or free).
_BMFF_FIRST_BOXES = (b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")


@dataclass(frozen=True)
class ClipSpec:
    """What clip to cut from a video. ``size`` is (H, W); ``target_fps=None`` keeps the native rate."""

    num_frames: int = 14
    target_fps: float | None = None
    size: tuple[int, int] = (256, 384)
    start: Literal["random", "center"] = "random"
    crop: CropMode = "center"
    on_short: Literal["skip", "pad"] = "skip"
    max_stride: int | None = None

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1 (SVD uses 14, SVD-XT 25); got {self.num_frames}")
        if self.target_fps is not None and not (math.isfinite(self.target_fps) and self.target_fps > 0):
            raise ValueError(f"target_fps must be a positive number or None (native fps); got {self.target_fps}")
        if self.start not in ("random", "center"):
            raise ValueError(f'start must be "random" or "center"; got {self.start!r}')
        if self.crop not in ("random", "center"):
            raise ValueError(f'crop must be "random" or "center"; got {self.crop!r}')
        if self.on_short not in ("skip", "pad"):
            raise ValueError(f'on_short must be "skip" or "pad"; got {self.on_short!r}')
        if self.max_stride is not None and self.max_stride < 1:
            raise ValueError(f"max_stride must be >= 1 or None (unbounded); got {self.max_stride}")
        object.__setattr__(self, "size", check_size(tuple(self.size)))


@dataclass(frozen=True)
class DecodedClip:
    frames: torch.Tensor  # (T, 3, H, W) uint8 in [0, 255]; frames[0] is the conditioning frame
    native_fps: float
    stride: int
    effective_fps: float  # native_fps / stride: the rate the model is told (fps_id)
    frame_indices: tuple[int, ...]  # source frame of each output frame (padding repeats the last one)
    num_padded: int  # output frames that repeat the last real frame (on_short="pad")

    @classmethod
    def from_frames(
        cls, frames: torch.Tensor, *, native_fps: float, stride: int, indices: Sequence[int], num_padded: int
    ) -> DecodedClip:
        """The clip of ``frames`` cut at source ``indices``; ``effective_fps`` is ``native_fps / stride``."""
        return cls(
            frames=frames,
            native_fps=native_fps,
            stride=stride,
            effective_fps=native_fps / stride,
            frame_indices=tuple(indices),
            num_padded=num_padded,
        )


def stride_for(native_fps: float, spec: ClipSpec) -> int:
    """Source frames between two clip frames for ``spec.target_fps`` (1 when the target is None or faster)."""
    if spec.target_fps is None:
        return 1
    stride = max(1, round(native_fps / spec.target_fps))
    return min(stride, spec.max_stride) if spec.max_stride is not None else stride


def clip_span(num_frames: int, stride: int) -> int:
    """Source frames a clip of ``num_frames`` frames ``stride`` apart spans: fewer is ``too_few_frames``."""
    return (num_frames - 1) * stride + 1


def clip_indices(
    num_available: int, *, stride: int, spec: ClipSpec, rng: np.random.Generator | None
) -> tuple[list[int], int]:
    """Source frame indices of one clip and how many of them are padding. Raises ``too_few_frames``."""
    span = clip_span(spec.num_frames, stride)
    if num_available >= span:
        if spec.start == "center":
            start = (num_available - span) // 2
        else:
            if rng is None:
                raise ValueError('start="random" needs rng=np.random.default_rng(seed); pass one or use "center"')
            start = int(rng.integers(0, num_available - span + 1))
        return [start + i * stride for i in range(spec.num_frames)], 0
    if spec.on_short == "skip":
        raise BadSample(
            "too_few_frames", f"{num_available} frames < {span} needed ({spec.num_frames} frames at stride {stride})"
        )
    real = list(range(0, num_available, stride))[: spec.num_frames]
    num_padded = spec.num_frames - len(real)
    return real + [real[-1]] * num_padded, num_padded


def container_kind(data: bytes) -> str | None:
    """The container format from the first bytes (mp4, matroska, avi, flv, ogg, mpeg, mpegts), or None."""
    head = data[:12]
    if head[4:8] in _BMFF_FIRST_BOXES:
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # mkv and webm
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return "mpeg"  # program stream or a raw H.264/HEVC elementary stream
    for offset in (0, 4):  # transport stream: 188-byte packets, or 192 with a timecode prefix (m2ts)
        packet = 188 + offset
        if (
            len(data) > offset
            and data[offset] == 0x47
            and (len(data) <= offset + packet or data[offset + packet] == 0x47)
        ):
            return "mpegts"
    return None


def bmff_truncation(data: bytes) -> str | None:
    """Why an ISO-BMFF (mp4/mov) file is incomplete, or None when its top-level boxes hold the whole movie.

    Only the top-level box headers are read (a handful of boxes), so this is free next to decoding. Files that
    do not start with an mp4/mov box (webm, mkv, avi) are left to decord and return None. Bytes after a
    complete ``moov`` and ``mdat`` that do not form a media box (trailing junk some downloaders leave, a cut
    ``udta``/``free``) are tolerated: every frame is still there and ffmpeg plays such files.
    """
    if len(data) < 8 or data[4:8] not in _BMFF_FIRST_BOXES:
        return None
    pos, end, seen = 0, len(data), set()
    while pos < end:
        complete = {b"moov", b"mdat"} <= seen
        if end - pos < 8:
            return None if complete else f"file ends inside a box header at byte {pos}"
        size, kind, header = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8], 8
        if size == 1 and end - pos >= 16:  # 64-bit size follows the type
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:  # the box runs to the end of the file
            size = end - pos
        if size < header or pos + size > end:
            if complete and kind not in _BMFF_MEDIA_BOXES:
                return None
            return f"file ends inside box {kind.decode('latin-1')!r} at byte {pos}: needs {pos + size}, has {end}"
        seen.add(kind)
        pos += size
    return None if b"moov" in seen else "no moov box (the index is missing or the file was cut before it)"


@functools.cache
def quiet_ffmpeg() -> None:
    """Silence decord's FFmpeg log (once per process): it prints a line for every bad file, and the callers
    already report each skipped input once, with its source."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


@functools.cache
def keep_decode_buffers() -> bool:
    """Make glibc keep freed multi-MB buffers in the heap instead of unmapping them; call once per worker process.

    Every clip allocates and frees the same buffers (decord's frames, the resize's scratch and output, some 20 MB
    for 14 frames at 320x576). By default glibc serves those with fresh mmaps or trims them from the heap top, so
    each clip page-faults and zero-fills them again: about 25% of a clip's time here, and more right after anything
    that frees a lot (measured by ``scripts/bench_data.py --keep-decode-buffers``). With allocations below 32 MB
    served from the heap and no trimming below 256 MB free, the buffers are reused and resident memory settles at
    the working set. Process-wide, so it belongs in a DataLoader ``worker_init_fn``, not in library calls. Returns
    False (and changes nothing) where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)) and bool(mallopt(_M_TRIM_THRESHOLD, 256 * 2**20))


def first_line(exc: BaseException) -> str:
    """``TypeName: last line of the message`` (at most 200 characters of it): one log line for a decoder error."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1][:200] if text else ''}"


def decode_clip(data: bytes, spec: ClipSpec, *, rng: np.random.Generator | None = None) -> DecodedClip:
    """Decode ``spec.num_frames`` frames of ``data`` (an encoded video) into a (T, 3, H, W) uint8 clip.

    ``rng`` drives the random start and crop; it is required when either is random. Raises ``BadSample`` with
    ``empty_video``, ``corrupt_video`` or ``too_few_frames`` (see the module docstring).
    """
    if not data:
        raise BadSample("empty_video", "zero-length video bytes")
    if container_kind(data) is None:
        # Never hand decord bytes no demuxer would take: each failed open leaks about 50 KB inside decord and
        # prints the raw bytes to stderr as if they were a file name.
        raise BadSample("corrupt_video", f"unrecognised container (first bytes {data[:8]!r})")
    problem = bmff_truncation(data)
    if problem is not None:
        raise BadSample("corrupt_video", f"truncated or malformed mp4: {problem}")
    import decord  # imported lazily: nothing at import time, and workers import it after fork

    quiet_ffmpeg()
    reader = None
    try:
        try:
            # A reader per sample, deleted below: long-lived decord readers leak memory.
            reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
            num_available = len(reader)
            native_fps = float(reader.get_avg_fps())
        except Exception as exc:  # decord raises DECORDError, RuntimeError or others depending on where it fails
            raise BadSample("corrupt_video", f"cannot open: {first_line(exc)}") from exc
        if num_available <= 0:
            raise BadSample("empty_video", "the video stream has no frames")
        if not (math.isfinite(native_fps) and native_fps > 0):
            raise BadSample("corrupt_video", f"unusable frame rate {native_fps}")
        stride = stride_for(native_fps, spec)
        indices, num_padded = clip_indices(num_available, stride=stride, spec=spec, rng=rng)
        unique = sorted(set(indices))
        try:
            # (U, h, w, 3) uint8, only the frames we use. DLPack hands decord's buffer to torch without the copy
            # that asnumpy() makes (7.7 MB for 14 frames of 320x576); torch frees it through decord's deleter.
            batch = from_dlpack(reader.get_batch(unique).to_dlpack())
        except Exception as exc:
            raise BadSample(
                "corrupt_video", f"cannot decode frames {unique[0]}..{unique[-1]}: {first_line(exc)}"
            ) from exc
    finally:
        del reader
    if batch.ndim != 4 or batch.shape[0] != len(unique) or batch.shape[-1] != 3 or batch.dtype != torch.uint8:
        raise BadSample(
            "corrupt_video", f"decoder returned {batch.dtype} {tuple(batch.shape)} for {len(unique)} frames"
        )
    # A channels-last view, no copy: the uint8 resize reads decord's buffer directly.
    frames = batch.permute(0, 3, 1, 2)  # (U, h, w, 3) -> (U, 3, h, w)
    frames = resize_and_crop(frames, size=spec.size, crop=spec.crop, rng=rng)  # (U, 3, H, W) uint8
    if len(unique) != len(indices):  # padding repeats frames: resize each once, then repeat the small ones
        position = {index: i for i, index in enumerate(unique)}
        frames = frames[torch.tensor([position[i] for i in indices])]
    return DecodedClip.from_frames(frames, native_fps=native_fps, stride=stride, indices=indices, num_padded=num_padded)
