"""Keyframe-aware clipping (RECIPE section 6): scenes become clips cut by stream copy where the source allows it,
so most clips are written without decoding or re-encoding anything.

Where a stream copy can start and end is read from the packets alone (``copy_points``, no decoding):

- a copy starts at a *clean* keyframe: every packet before it in decode order shows an earlier frame and every
  packet from it on a later or equal one (so no leading B-frame of an open GOP refers back past the cut);
- a copy ends after any decode-order prefix that holds exactly the first frames in display order (after every
  frame for streams without B-frames, after each mini-GOP with them), so no kept B-frame refers to a dropped frame.

``plan_clips`` turns a ``CutResult`` into ``ClipSpan`` s. Per scene ``[start, end)`` (native frame indices):

1. ``trim_seconds`` are dropped on each side that touches a transition (not at the video's first or last frame),
   against cut detection a frame or two off; where a clean keyframe lies inside those frames the scene is cut at
   it instead (encoders put a keyframe at a hard cut, which confirms the cut and lets the clip be copied).
2. Scenes longer than ``max_seconds`` are split into pieces of at most ``max_seconds``, each cut at the latest clean
   keyframe that leaves at least ``min_seconds`` before it (at the length limit when there is none).
3. Each piece snaps for copying: its start moves forward to the first clean keyframe at or after it, its end back
   to the last copy end at or before it, so a clip never crosses the cut it was cut at. ``copy_ends=None`` treats
   only clean keyframes (and the last frame) as ends, which is safe for any stream; pass ``copy_points(path).ends``
   for frame-accurate ends.
4. Mode ``copy`` keeps the snapped span (dropped if shorter than ``min_seconds``); ``reencode`` keeps the exact
   span; ``auto`` copies when the snapped span is at least ``min_seconds`` long and keeps at least
   ``copy_min_fraction`` of the piece, and re-encodes the exact span otherwise. Spans under ``min_seconds`` drop.

``write_clip`` writes one span to an mp4, atomically (temporary name in the same folder, then ``os.replace``):

- copy: the video packets of the span are remuxed with timestamps moved to start at 0; audio is dropped; the
  rotation (display matrix) travels with the stream parameters, so players and decord still show the clip upright.
- re-encode: frames are decoded from the keyframe before the span, those in it are turned into display orientation
  (no rotation tag in the output), cropped by one row / column where the size is odd (yuv420p needs even sizes),
  and encoded with libx264, yuv420p, ``reencode_crf``, at the source's average frame rate (a VFR source comes out
  at constant rate, frames in order). Pixels move as yuv420p planes, with no RGB round trip.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

from data.curation.probe import PacketIndex, VideoInfo, packet_index
from data.curation.transitions import CutResult
from data.video_decode import ClipSpec, clip_span, stride_for

ClipMode = Literal["auto", "copy", "reencode"]


@dataclass(frozen=True)
class ClippingConfig:
    """``min_frames(fps)`` is the longer of ``min_seconds`` and what one training clip spans in a video at that
    frame rate: ``train_frames`` frames at ``train_fps`` (the stride ``data.video_decode`` takes, round(fps /
    train_fps)), so no written clip is later skipped as ``too_few_frames``. The defaults cover Stage III (14 frames
    at 7 fps: 53 frames, 2.12 s, of a 25 fps video); SVD-XT (25 frames at 7 fps, 3.9 s at 25 fps) needs
    ``train_frames=25``; ``train_fps=null`` means training at the native rate."""

    min_seconds: float = 2.0
    max_seconds: float = 60.0
    trim_seconds: float = 0.1  # dropped next to each transition
    mode: ClipMode = "auto"
    copy_min_fraction: float = 0.5  # auto: a copy must keep at least this share of the scene piece
    reencode_crf: int = 18
    reencode_preset: str = "veryfast"
    train_frames: int = 14  # frames of a training clip (the stages' stage.num_frames: 14; SVD-XT 25)
    train_fps: float | None = 7.0  # the training stages' data.target_fps (Stage III: 7); None = native rate
    train_max_stride: int | None = None  # the training stages' data.max_stride

    def __post_init__(self) -> None:
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError(f"need 0 < min_seconds <= max_seconds; got {self.min_seconds}, {self.max_seconds}")
        if self.trim_seconds < 0 or not 0 <= self.copy_min_fraction <= 1:
            raise ValueError(f"need trim_seconds >= 0 and copy_min_fraction in [0, 1]; got {self}")
        if self.mode not in ("auto", "copy", "reencode"):
            raise ValueError(f'mode must be "auto", "copy" or "reencode"; got {self.mode!r}')
        _ = self.training_clip  # validates train_frames, train_fps, train_max_stride

    @property
    def training_clip(self) -> ClipSpec:
        try:
            return ClipSpec(num_frames=self.train_frames, target_fps=self.train_fps, max_stride=self.train_max_stride)
        except ValueError as e:
            raise ValueError(f"clipping.train_frames / train_fps / train_max_stride: {e}") from e

    def min_frames(self, fps: float) -> int:
        """The shortest clip in frames at ``fps``: ``min_seconds`` rounded up (a float's rounding error aside), or
        the frames one training clip spans at that rate, whichever is more."""
        spec = self.training_clip
        return max(1, math.ceil(self.min_seconds * fps - 1e-6), clip_span(spec.num_frames, stride_for(fps, spec)))


@dataclass(frozen=True)
class ClipSpan:
    """Frames ``[start_frame, end_frame)`` of the source, from ``start_s`` to ``end_s`` (time of the first frame
    after the clip); ``copy`` = written by stream copy; ``scene`` = index into ``CutResult.scenes``."""

    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    copy: bool
    scene: int = -1

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame


@dataclass(frozen=True)
class ClipWriteResult:
    method: Literal["copy", "reencode"]
    num_frames: int
    fps: float
    width: int  # display size of the written clip
    height: int


@dataclass(frozen=True)
class CopyPoints:
    """Frame indices where a stream copy can start (clean keyframes) and end (exclusive), from the packets."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    times_s: tuple[float, ...]  # presentation time of every frame, relative to the first


def copy_points_of(index: PacketIndex) -> CopyPoints:
    """``CopyPoints`` from a packet index (see the module docstring for the rules)."""
    pts = index.pts
    n = len(pts)
    if n == 0:
        return CopyPoints((), (), ())
    prefix_max = np.maximum.accumulate(pts)
    suffix_min = np.minimum.accumulate(pts[::-1])[::-1]
    # a decode-order prefix [0, d] holds exactly the d + 1 earliest frames when all later packets show later frames
    closed = np.r_[prefix_max[:-1] < suffix_min[1:], True]
    ends = tuple(int(d) + 1 for d in np.nonzero(closed)[0])
    before_closed = np.r_[True, closed[:-1]]
    clean = index.keyframe & before_closed & (suffix_min == pts)
    starts = tuple(int(d) for d in np.nonzero(clean)[0])  # decode position d = frame index when the prefix closes
    frame_pts = index.frame_pts
    times = tuple(float(t) for t in (frame_pts - frame_pts[0]) * float(index.time_base))
    return CopyPoints(starts, ends, times)


def copy_points(path: str | os.PathLike[str]) -> CopyPoints:
    """Demux ``path`` (no decoding) for where stream copies may start and end."""
    return copy_points_of(packet_index(path))


def keyframe_times(path: str | os.PathLike[str]) -> list[float]:
    """Times (s, relative to the first frame) of the clean keyframes a stream copy can start at; demux only."""
    points = copy_points(path)
    return [points.times_s[i] for i in points.starts]


def _trimmed(scene: tuple[int, int], n: int, trim: int, keys: Sequence[int]) -> tuple[int, int]:
    """Drop ``trim`` frames next to transitions, unless a keyframe lies in those frames: encoders put one at a hard
    cut, so a keyframe there confirms the cut and the clip is cut at it (inside the scene, never across)."""
    start, end = scene
    if start > 0:
        i = bisect_left(keys, start)
        start = keys[i] if i < len(keys) and keys[i] <= start + trim else start + trim
    if end < n:
        j = bisect_right(keys, end)
        end = keys[j - 1] if j > 0 and keys[j - 1] >= end - trim else end - trim
    return start, end


def _split(start: int, end: int, max_len: int, min_len: int, keys: Sequence[int]) -> list[tuple[int, int]]:
    pieces, pos = [], start
    while end - pos > max_len:
        lo, hi = bisect_left(keys, pos + min_len), bisect_right(keys, pos + max_len)
        cut = keys[hi - 1] if hi > lo else pos + max_len
        pieces.append((pos, cut))
        pos = cut
    pieces.append((pos, end))
    return pieces


def plan_clips(
    cuts: CutResult,
    info: VideoInfo,
    keyframe_times: Sequence[float],
    cfg: ClippingConfig,
    *,
    frame_times: Sequence[float] | None = None,
    copy_ends: Sequence[int] | None = None,
) -> list[ClipSpan]:
    """Clips from the scenes of ``cuts`` (rules in the module docstring). ``frame_times`` (s, per frame, e.g.
    ``ScanStats.frame_times_s``) maps frames to times for VFR sources; without it frame i is at i / fps."""
    n = cuts.num_frames
    times = np.asarray(frame_times, np.float64)[:n] if frame_times is not None else np.arange(n) / info.fps
    if len(times) < n:
        raise ValueError(f"frame_times has {len(times)} entries for {n} frames")

    def time_of(frame: int) -> float:
        return float(times[frame]) if frame < n else (float(times[-1]) + 1.0 / info.fps if n else 0.0)

    # keyframe times -> frame indices (the frame at that time, within half a frame interval)
    keys = sorted({int(i) for i in np.searchsorted(times, np.asarray(keyframe_times) - 0.5 / info.fps) if i < n})
    ends = sorted(set(copy_ends) if copy_ends is not None else keys) + [n]
    min_len = cfg.min_frames(info.fps)
    max_len = max(min_len, int(cfg.max_seconds * info.fps + 1e-6))
    trim = int(round(cfg.trim_seconds * info.fps))
    spans: list[ClipSpan] = []
    for scene_index, scene in enumerate(cuts.scenes):
        start, end = _trimmed(scene, n, trim, keys)
        if end - start < min_len:
            continue
        for a, b in _split(start, end, max_len, min_len, keys):
            i, j = bisect_left(keys, a), bisect_right(ends, b)
            ca, cb = (keys[i] if i < len(keys) else n), (ends[j - 1] if j > 0 else 0)
            can_copy = cb - ca >= min_len
            if cfg.mode == "copy" or (cfg.mode == "auto" and can_copy and cb - ca >= cfg.copy_min_fraction * (b - a)):
                if can_copy:
                    spans.append(ClipSpan(ca, cb, time_of(ca), time_of(cb), True, scene_index))
            elif b - a >= min_len:
                spans.append(ClipSpan(a, b, time_of(a), time_of(b), False, scene_index))
    return spans


def _tmp_path(dst: Path) -> Path:
    return dst.with_name(f".{dst.stem}.tmp{os.getpid()}{dst.suffix or '.mp4'}")


def _pts_range(span: ClipSpan, info: VideoInfo) -> tuple[int, int | None, int]:
    """The span's first and end presentation timestamps in the stream's time base (None: to the end), and half a
    frame interval in ticks, so times that are a rounding off still pick the right frames."""
    tb = info.time_base
    start = info.start_pts + int(round(span.start_s / tb))
    end = None if span.end_frame >= info.num_frames else info.start_pts + int(round(span.end_s / tb))
    return start, end, max(0, int(0.5 / (info.fps * tb)))


def _write_copy(src: str, span: ClipSpan, tmp: Path, info: VideoInfo) -> int:
    start_pts, end_pts, tol = _pts_range(span, info)
    written, first = 0, None
    with av.open(src, mode="r") as inp:
        stream = inp.streams.video[0]
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "faststart"}) as out:
            ostream = out.add_stream_from_template(stream)
            inp.seek(start_pts, stream=stream, backward=True, any_frame=False)
            for packet in inp.demux(stream):
                if packet.pts is None:
                    continue
                if first is None:  # the span's keyframe; a seek can land on packets before it
                    if not (packet.is_keyframe and packet.pts >= start_pts - tol):
                        continue
                    first = packet.pts
                if end_pts is not None and packet.pts >= end_pts - tol:
                    continue
                packet.pts -= first
                if packet.dts is not None:
                    packet.dts -= first
                packet.stream = ostream
                out.mux(packet)
                written += 1
                if written >= span.num_frames:
                    break
    return written


def _yuv_planes(frame: av.VideoFrame) -> list[np.ndarray]:
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    return [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes]


def _write_reencode(src: str, span: ClipSpan, tmp: Path, info: VideoInfo, cfg: ClippingConfig) -> tuple[int, int, int]:
    k = -(info.rotation // 90) % 4
    width, height = info.width // 2 * 2, info.height // 2 * 2  # display size, cropped to even
    coded_w, coded_h = (height, width) if k % 2 else (width, height)
    rate = Fraction(info.fps).limit_denominator(1001)
    written = 0
    start_pts, end_pts, tol = _pts_range(span, info)
    with av.open(src, mode="r") as inp:
        stream = inp.streams.video[0]
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "faststart"}) as out:
            ostream = out.add_stream("libx264", rate=rate)
            ostream.width, ostream.height, ostream.pix_fmt = width, height, "yuv420p"
            ostream.options = {"crf": str(cfg.reencode_crf), "preset": cfg.reencode_preset}
            stream.thread_type = "AUTO"
            inp.seek(start_pts, stream=stream, backward=True, any_frame=False)
            for frame in inp.decode(stream):
                if frame.pts is None or frame.pts < start_pts - tol:
                    continue
                if (end_pts is not None and frame.pts >= end_pts - tol) or written >= span.num_frames:
                    break
                y, u, v = _yuv_planes(frame)
                y, u, v = y[:coded_h, :coded_w], u[: coded_h // 2, : coded_w // 2], v[: coded_h // 2, : coded_w // 2]
                if k:
                    y, u, v = (np.rot90(p, k) for p in (y, u, v))
                i420 = np.concatenate([np.ascontiguousarray(p).reshape(-1) for p in (y, u, v)])
                out_frame = av.VideoFrame.from_ndarray(i420.reshape(height * 3 // 2, width), format="yuv420p")
                out_frame.pts, out_frame.time_base = written, 1 / rate
                out.mux(ostream.encode(out_frame))
                written += 1
            out.mux(ostream.encode(None))
    return written, width, height


def write_clip(
    src_path: str | os.PathLike[str],
    span: ClipSpan,
    dst_path: str | os.PathLike[str],
    *,
    info: VideoInfo,
    cfg: ClippingConfig,
) -> ClipWriteResult:
    """Write ``span`` of ``src_path`` to ``dst_path`` (mp4) by stream copy (``span.copy``) or re-encoding."""
    dst = Path(dst_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(dst)
    src = os.fspath(src_path)
    try:
        if span.copy:
            written = _write_copy(src, span, tmp, info)
            result = ClipWriteResult("copy", written, info.fps, info.width, info.height)
        else:
            written, width, height = _write_reencode(src, span, tmp, info, cfg)
            rate = float(Fraction(info.fps).limit_denominator(1001))
            result = ClipWriteResult("reencode", written, rate, width, height)
        if written == 0:
            raise ValueError(f"no frames written for frames {span.start_frame}..{span.end_frame} of {src}")
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return result
