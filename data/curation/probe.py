"""Probe a raw video with PyAV before curating it: size, rotation, frame rate, frame count, and whether it decodes.

``probe_video`` opens the container, demuxes every packet of the first video stream (no decoding, so it costs file
I/O only) and decodes just the first frame. From the packets it takes the frame count and the timestamps; from the
first frame the coded size and the display rotation. Inputs that cannot be curated raise ``CurationSkip``:

- ``zero_length``: an empty file, or a video stream without a single packet;
- ``unreadable``: no demuxer accepts the bytes (garbage, or an mp4 cut before its ``moov`` index);
- ``no_video_stream``: a container with only audio / subtitle / data streams;
- ``undecodable``: packets exist but none of the first ones decodes (corrupt payload, an mp4 cut right after its
  index, a codec this FFmpeg build cannot decode);
- ``single_frame``: one frame, i.e. a still image in a video container.

Definitions (all in display terms, what a player shows):

- ``num_frames`` counts the demuxed video packets that carry a timestamp, one frame each (true for H.264, HEVC,
  VP8/9, AV1, MPEG-4 part 2 in mp4/mkv/webm). It is not the header's count, which mkv/webm lack and an edited mp4
  can get wrong. A file truncated inside its data has fewer decodable frames than packets; ``scan_video`` reports
  what actually decoded.
- ``fps`` = (num_frames - 1) / (last - first presentation timestamp): the mean frame interval, exact for constant
  frame rate; ``duration_s`` = num_frames / fps. ``vfr`` is True when any interval between consecutive timestamps
  differs from the median by more than 10% (plus one tick of the stream's time base, so millisecond timestamps of a
  29.97 fps webm do not count). In a file with fewer packets than its header lists (cut inside its data), both
  come from the packets before the last incomplete group of reordered frames.
- ``rotation`` is the clockwise angle (0/90/180/270) a player turns the decoded frames by, as in the legacy
  ``rotate`` tag phones write; it comes from the display matrix FFmpeg attaches to decoded frames (the mp4 track
  header's matrix), falling back to the ``rotate`` tag. ``width``/``height`` are the display size (swapped for 90 /
  270), ``coded_width``/``coded_height`` the size of the decoded frames.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from data.curation.errors import CurationSkip, NoteReason
from data.video_decode import first_line

_VFR_TOLERANCE = 0.1  # relative deviation of one frame interval from the median that makes a stream VFR
_MAX_PROBE_PACKETS = 256  # packets tried for a first decoded frame before calling the stream undecodable


@dataclass(frozen=True)
class PacketIndex:
    """The video stream's packets in decode (demux) order, from demuxing only: one frame each."""

    pts: np.ndarray  # (N,) int64 presentation timestamps, decode order
    keyframe: np.ndarray  # (N,) bool
    time_base: Fraction

    @property
    def frame_pts(self) -> np.ndarray:
        """Presentation timestamps in display order: frame i of the video has ``frame_pts[i]``."""
        return np.sort(self.pts, kind="stable")


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` learned about a raw video (definitions in the module docstring)."""

    width: int  # display size, after rotation
    height: int
    coded_width: int  # decoded frame size, before rotation
    coded_height: int
    rotation: int  # clockwise degrees a player rotates frames by: 0, 90, 180 or 270
    fps: float  # average frame rate from the timestamps
    num_frames: int  # demuxed packets with a timestamp
    duration_s: float  # num_frames / fps
    codec: str  # FFmpeg decoder name, e.g. "h264"
    vfr: bool  # frame intervals vary by more than 10%
    has_audio: bool
    time_base: Fraction = Fraction(1, 1)  # of the video stream's timestamps
    start_pts: int = 0  # first presentation timestamp, in time_base units
    # The packets probing demuxed, kept so that clipping need not demux the file again (None: not known).
    packets: PacketIndex | None = field(default=None, compare=False, repr=False)


def _open(path: str | os.PathLike[str]) -> av.container.InputContainer:
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise CurationSkip("unreadable", first_line(exc)) from exc
    if size == 0:
        raise CurationSkip("zero_length", "empty file")
    try:
        return av.open(os.fspath(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise CurationSkip("unreadable", first_line(exc)) from exc


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise CurationSkip("no_video_stream", f"streams: {', '.join(kinds)}")
    return container.streams.video[0]


def _scan_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, *, decode_first: bool
) -> tuple[PacketIndex, av.VideoFrame | None, str]:
    """One demux pass: every packet's timestamp and keyframe flag, and (``decode_first``) the first decoded frame,
    trying at most ``_MAX_PROBE_PACKETS`` packets. Returns (index, first frame or None, last decode error)."""
    pts, key = [], []
    frame: av.VideoFrame | None = None
    error, tried = "no frame decoded", 0
    try:
        for packet in container.demux(stream):
            if packet.pts is None:  # the demuxer's end-of-stream flush packet, or a packet without a timestamp
                continue
            pts.append(packet.pts)
            key.append(packet.is_keyframe)
            if decode_first and frame is None and tried < _MAX_PROBE_PACKETS:
                tried += 1
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    error, frames = first_line(exc), []
                frame = frames[0] if frames else None
    except av.FFmpegError as exc:
        error = first_line(exc)  # a file cut inside its data: the packets before the cut are still an index
    if decode_first and frame is None and pts:
        try:  # short streams: a frame-threaded decoder hands out its first frames only when flushed
            frames = stream.decode(None)
            frame = frames[0] if frames else None
        except av.FFmpegError as exc:
            error = first_line(exc)
    index = PacketIndex(np.asarray(pts, np.int64), np.asarray(key, bool), Fraction(stream.time_base or Fraction(1, 1)))
    return index, frame, f"{error} (after {tried} packets)"


def packet_index(path: str | os.PathLike[str]) -> PacketIndex:
    """Demux (do not decode) the first video stream of ``path``; raises ``CurationSkip`` like ``probe_video``."""
    with _open(path) as container:
        return _scan_packets(container, _video_stream(container), decode_first=False)[0]


def _rotation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> int:
    try:
        ccw = int(round(frame.rotation))  # counterclockwise, in [-180, 180]; 0 without a display matrix
    except (AttributeError, ValueError, TypeError):
        ccw = 0
    if ccw == 0:
        tag = stream.metadata.get("rotate")  # legacy tag: clockwise degrees
        try:
            return int(round(float(tag) / 90)) * 90 % 360 if tag is not None else 0
        except ValueError:
            return 0
    return int(round(-ccw / 90)) * 90 % 360


def _is_vfr(pts: np.ndarray, median: float) -> bool:
    if len(pts) < 3:
        return False
    deviation = np.abs(np.diff(pts) - median)
    return bool(np.any(deviation > _VFR_TOLERANCE * median + 1))


def _gapless_pts(index: PacketIndex) -> np.ndarray:
    """Display-order timestamps of the longest decode-order prefix that holds exactly the earliest frames and is
    followed by more packets. A file cut inside its data can end on a frame whose reordered neighbours (B-frames)
    were lost: counting it would read a gap of several frames as a variable frame rate and lower the fps."""
    pts = index.pts
    closed = np.maximum.accumulate(pts)[:-1] < np.minimum.accumulate(pts[::-1])[::-1][1:]
    ends = np.nonzero(closed)[0]
    return np.sort(pts[: ends[-1] + 1]) if len(ends) and ends[-1] >= 1 else index.frame_pts


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Probe ``path`` (see the module docstring); raises ``CurationSkip`` for inputs that cannot be curated."""
    with _open(path) as container:
        stream = _video_stream(container)
        index, frame, error = _scan_packets(container, stream, decode_first=True)
        n = len(index.pts)
        if n == 0:
            raise CurationSkip("zero_length", "the video stream has no packets")
        if frame is None:
            raise CurationSkip("undecodable", error)
        if n == 1:
            raise CurationSkip("single_frame", "one frame: a still image in a video container")
        tb, pts = index.time_base, index.frame_pts
        if n < (stream.frames or 0):  # cut off inside its data: rate and VFR from the frames read without a gap
            pts = _gapless_pts(index)
        span = int(pts[-1] - pts[0])
        median = float(np.median(np.diff(pts)))
        if span <= 0 or median <= 0:
            raise CurationSkip("undecodable", f"{n} frames share one timestamp")
        fps = (len(pts) - 1) / float(span * tb)
        rotation = _rotation(frame, stream)
        coded_w, coded_h = frame.width, frame.height
        width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
        return VideoInfo(
            width=width,
            height=height,
            coded_width=coded_w,
            coded_height=coded_h,
            rotation=rotation,
            fps=fps,
            num_frames=n,
            duration_s=n / fps,
            codec=stream.codec_context.name,
            vfr=_is_vfr(pts, median),
            has_audio=bool(container.streams.audio),
            time_base=tb,
            start_pts=int(pts[0]),
            packets=index,
        )


def notes_for(info: VideoInfo) -> list[NoteReason]:
    """The corrections curation applies to this video, for the report."""
    notes: list[NoteReason] = []
    if info.rotation:
        notes.append("rotated")
    if info.vfr:
        notes.append("variable_frame_rate")
    if info.width % 2 or info.height % 2:
        notes.append("odd_resolution")
    return notes
