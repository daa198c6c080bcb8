"""The single decode pass over a raw video: every ``FrameTap`` (``taps.py``) is fed from one PyAV decode.

Per decoded frame the scan works out which taps are due (rate sampling by presentation time, as ``taps.py``
specifies), converts the frame once per distinct target size among them, and pushes the same read-only array to each
(taps must not modify it). Frames no tap wants are never converted, so a frame costs its decode plus one small
conversion for the every-frame cut detectors.

- Times: ``time_s`` = (pts - first pts) * time_base, so the first frame is at 0 whatever the container's start
  offset; a frame without a timestamp gets the previous time plus 1 / fps.
- Size: the short side becomes the tap's ``short_side`` and the long side ``round(long * short_side / short)``, both
  rounded to even numbers (yuv420p needs them); frames are never upscaled (a ``short_side`` at or above the
  video's gives the native size, as does ``None``).
- Conversion: swscale's area filter scales the decoded frame to yuv420p at the target size (any input format, with
  its colour range), then OpenCV converts that small image to RGB (BT.601 limited range, FFmpeg's default for
  unlabelled video); colour is thus at half the target resolution, as in the source. Measured per 576x320 frame
  (one core): about 75 us, against about 95 us for an RGB area scale in swscale and 230 us for OpenCV's INTER_AREA
  on the planes (non-integer factor); one reformatter per size is kept, so its filter tables are built once.
  Native-size taps get the full RGB conversion.
- Rotation: frames are resized in coded orientation, then turned with ``np.rot90`` into display orientation.
- Setup: a tap with a ``begin(info)`` method (optional, beyond the ``FrameTap`` protocol) gets the ``VideoInfo``
  before the first frame; the cut detectors use it for the frame rate.
- Errors: decoding stops at the first packet that fails to demux or decode (a truncated or corrupt file); the
  decoder is flushed for the frames it still holds, and ``ScanStats`` says how far it got. Fewer frames than
  ``info.num_frames`` (packets lost at the end of a cut file) also count as an error. Nothing is raised.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from data.curation.probe import VideoInfo
from data.curation.taps import FrameTap


@dataclass
class ScanStats:
    """What one decode pass saw. ``frames_decoded`` frames were pushed (indices 0 .. frames_decoded - 1)."""

    frames_decoded: int = 0
    duration_s: float = 0.0  # time of the last frame + one frame interval
    decode_errors: int = 0
    error: str = ""  # the error that stopped the scan, if any
    wall_s: float = 0.0
    frame_times_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (frames_decoded,) float64

    @property
    def complete(self) -> bool:
        return self.decode_errors == 0


def target_size(info: VideoInfo, short_side: int | None) -> tuple[int, int]:
    """(width, height) in display orientation of frames delivered for ``short_side`` (see the module docstring)."""
    w, h = info.width, info.height
    if short_side is None or short_side >= min(w, h):
        return w, h
    if short_side < 2:
        raise ValueError(f"short_side must be >= 2 or None, got {short_side}")
    scale = short_side / min(w, h)
    even = lambda x: max(2, int(round(x * scale)) // 2 * 2)  # noqa: E731
    return even(w), even(h)


_PLANE_PATH_FACTOR = 12  # frames >= 12x the target size take the plane path (_from_planes): step >= 3


class _Converter:
    """Frame -> (H, W, 3) uint8 RGB at one target size, display orientation."""

    def __init__(self, info: VideoInfo, short_side: int | None) -> None:
        self.k = -(info.rotation // 90) % 4  # np.rot90 turns counterclockwise; rotation is clockwise
        w, h = target_size(info, short_side)
        self.native = (w, h) == (info.width, info.height)
        self.coded = (h, w) if self.k % 2 else (w, h)  # (width, height) before rotation
        self._scaler = VideoReformatter()  # keeps its SwsContext (filter tables) from frame to frame

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.native:
            rgb = self._scaler.reformat(frame, format="rgb24", threads=1).to_ndarray()
        elif frame.format.name == "yuv420p" and min(frame.width, frame.height) >= _PLANE_PATH_FACTOR * min(self.coded):
            # plane path: only where it samples sparsely (a 1280x720 frame for 32-px taps: 0.16 vs 0.42 ms)
            rgb = self._from_planes(frame)
        else:
            cw, ch = self.coded
            small = self._scaler.reformat(frame, width=cw, height=ch, format="yuv420p", interpolation="AREA", threads=1)
            rgb = cv2.cvtColor(small.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
        if self.k:
            rgb = np.ascontiguousarray(np.rot90(rgb, self.k))
        rgb.flags.writeable = False
        return rgb

    def _from_planes(self, frame: av.VideoFrame) -> np.ndarray:
        """Small frames straight from the decoder's planes: every ``step``-th sample of each plane (views, no copy),
        then an area resize and one colour conversion. Costs a fraction of swscale's full-frame area filter, which
        reads every pixel of an HD frame to make a 32-px one; the sparse sampling is a coarse low-pass that the
        cut detectors and flow, working at 32-64 px, do not notice."""
        cw, ch = self.coded
        planes = []
        for i, (pw, ph) in enumerate(((cw, ch), (cw // 2, ch // 2), (cw // 2, ch // 2))):
            plane = frame.planes[i]
            width, height = (frame.width, frame.height) if i == 0 else ((frame.width + 1) // 2, (frame.height + 1) // 2)
            full = np.frombuffer(plane, np.uint8).reshape(height, plane.line_size)[:, :width]
            step = max(1, min(width // (4 * pw), height // (4 * ph)))  # keep >= 4 samples per output pixel
            planes.append(
                cv2.resize(np.ascontiguousarray(full[::step, ::step]), (pw, ph), interpolation=cv2.INTER_AREA)
            )
        i420 = np.concatenate([planes[0].reshape(-1), planes[1].reshape(-1), planes[2].reshape(-1)])
        return cv2.cvtColor(i420.reshape(ch * 3 // 2, cw), cv2.COLOR_YUV2RGB_I420)


class _Schedule:
    """When a tap is due: the first frame at or after each k / fps (every frame for fps None)."""

    def __init__(self, tap: FrameTap) -> None:
        if tap.fps is not None and not tap.fps > 0:
            raise ValueError(f"a tap's fps must be positive or None, got {tap.fps}")
        self.tap, self.fps, self.next_k = tap, tap.fps, 0

    def due(self, t: float) -> bool:
        if self.fps is None:
            return True
        if t * self.fps < self.next_k - 1e-6:
            return False
        self.next_k = int(np.floor(t * self.fps + 1e-6)) + 1
        return True


def _decoded_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, stats: ScanStats
) -> Iterator[av.VideoFrame]:
    """Yield decoded frames until the end or the first error (recorded in ``stats``), then the flushed ones."""
    try:
        for packet in container.demux(stream):
            yield from packet.decode()
    except av.FFmpegError as exc:
        stats.decode_errors += 1
        lines = str(exc).strip().splitlines()
        stats.error = f"{type(exc).__name__}: {lines[-1][:200] if lines else ''}"
        try:
            yield from stream.decode(None)
        except av.FFmpegError:
            pass


def scan_video(
    path: str | os.PathLike[str],
    info: VideoInfo,
    taps: Sequence[FrameTap],
    *,
    threads: int = 0,
    progress: Callable[[int], object] | None = None,
) -> ScanStats:
    """Decode ``path`` once and feed ``taps``; ``threads`` = decoder threads (0 = FFmpeg's choice, 1 = none).

    ``progress(n)`` is called with the number of frames decoded since its last call (a tqdm ``update``).
    """
    for tap in taps:
        begin = getattr(tap, "begin", None)  # optional: taps that need the video's properties before frame 0
        if callable(begin):
            begin(info)
    schedules = [_Schedule(tap) for tap in taps]
    converters = {tap.short_side: _Converter(info, tap.short_side) for tap in taps}
    stats = ScanStats()
    times: list[float] = []
    start = time.perf_counter()
    reported = 0
    try:
        container = av.open(os.fspath(path), mode="r")
    except av.FFmpegError as exc:  # probe_video opened it, so the file changed or vanished since
        stats.decode_errors, stats.error = 1, f"cannot open: {type(exc).__name__}: {exc}"[:240]
        return stats
    with container:
        stream = container.streams.video[0]
        if threads != 1:
            stream.thread_type = "AUTO"  # frame + slice threads
        stream.codec_context.thread_count = threads
        tb = float(stream.time_base) if stream.time_base else 1.0 / info.fps
        first_pts: int | None = None
        t = -1.0 / info.fps
        for frame in _decoded_frames(container, stream, stats):
            if frame.pts is None:
                t += 1.0 / info.fps
            else:
                first_pts = frame.pts if first_pts is None else first_pts
                t = (frame.pts - first_pts) * tb
            index = len(times)
            times.append(t)
            cache: dict[int | None, np.ndarray] = {}
            for s in schedules:
                if s.due(t):
                    size = s.tap.short_side
                    array = cache.get(size)
                    if array is None:
                        array = cache[size] = converters[size](frame)
                    s.tap.push(index, t, array)
            if progress is not None and len(times) - reported >= 64:
                progress(len(times) - reported)
                reported = len(times)
    if progress is not None and len(times) > reported:
        progress(len(times) - reported)
    stats.frames_decoded = len(times)
    if not stats.error and len(times) < info.num_frames:  # the packets ran out early, or some gave no frame
        stats.decode_errors += 1
        stats.error = f"decoded {len(times)} of {info.num_frames} frames"
    stats.frame_times_s = np.asarray(times, np.float64)
    stats.duration_s = (times[-1] + 1.0 / info.fps) if times else 0.0
    stats.wall_s = time.perf_counter() - start
    return stats
