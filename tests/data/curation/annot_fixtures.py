"""Frames with known content for the annotator tests: a textured pan with an exact velocity, demo scenes."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence

import cv2
import numpy as np

from data.demo_scenes import Speed, random_scene, render_scene

TEXTURE_SIZE = 1024  # texture pixels; one frame short side spans SHORT_SIDE_TEXELS of them
SHORT_SIDE_TEXELS = 256


@functools.cache
def _texture(seed: int) -> np.ndarray:
    """A (1024, 1024) uint8 grey texture with structure at several scales, as natural images have."""
    rng = np.random.default_rng(seed)
    tex = np.zeros((TEXTURE_SIZE, TEXTURE_SIZE), np.float32)
    for cell in (8, 16, 32, 64, 128):
        n = TEXTURE_SIZE // cell + 1
        noise = rng.random((n, n)).astype(np.float32)
        tex += cv2.resize(noise, (TEXTURE_SIZE, TEXTURE_SIZE), interpolation=cv2.INTER_CUBIC)
    tex -= tex.min()
    return (255.0 * tex / tex.max()).astype(np.uint8)


def pan_frames(
    times_s: Sequence[float], *, velocity: tuple[float, float], size: tuple[int, int], seed: int = 0
) -> np.ndarray:
    """(N, H, W, 3) uint8 frames of a camera panning over a texture at ``velocity`` = (vx, vy) in frame short sides
    per second; ``size`` = (width, height). Content is the same at every size, only sampled more finely."""
    width, height = size
    tex = _texture(seed)
    # Sample the texture 1:1 on a frame whose short side is SHORT_SIDE_TEXELS, then area-resize to ``size``.
    hi = (round(width * SHORT_SIDE_TEXELS / min(size)), round(height * SHORT_SIDE_TEXELS / min(size)))
    frames = []
    for t in times_s:
        ox = 64.0 + velocity[0] * t * SHORT_SIDE_TEXELS
        oy = 64.0 + velocity[1] * t * SHORT_SIDE_TEXELS
        m = np.float32([[1, 0, -ox], [0, 1, -oy]])  # texture -> frame: a pure (sub-pixel) translation
        grey = cv2.warpAffine(tex, m, hi, flags=cv2.INTER_LINEAR)
        if hi != (width, height):
            grey = cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA)
        frames.append(np.repeat(grey[..., None], 3, axis=-1))
    return np.stack(frames)


def demo_scene_frames(
    seed: int, *, speed: Speed, seconds: float, fps: float, size: tuple[int, int], text: bool = False
) -> np.ndarray:
    """A demo scene (``data/demo_scenes.py``); the same seed gives the same shapes and background for every speed."""
    spec = random_scene(np.random.default_rng(seed), num_frames=int(round(seconds * fps)), speed=speed, text=text)
    return render_scene(spec, size=size)


def indexed_mp4(num_frames: int, *, size: tuple[int, int], fps: float = 24.0) -> bytes:
    """An H.264 mp4 whose frame i is flat grey at level 10 + 6 * i (a decoded frame names its index) with a white
    top-left quadrant (shows the orientation); ``size`` = (width, height)."""
    from data.video_encode import encode_video

    width, height = size
    frames = []
    for i in range(num_frames):
        frame = np.full((height, width, 3), 10 + 6 * i, np.uint8)
        frame[: height // 2, : width // 2] = 255
        frames.append(frame)
    buf = io.BytesIO()
    encode_video(frames, buf, fps=fps, size=size, crf=10)
    return buf.getvalue()


def _boxes(data: bytes, start: int, end: int) -> dict[bytes, tuple[int, int]]:
    """The first box of each type in data[start:end]: type -> (payload start, end); trak boxes as b"trak<n>"."""
    out, pos, n = {}, start, 0
    while pos + 8 <= end:
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind == b"trak":
            kind, n = b"trak%d" % n, n + 1
        out.setdefault(kind, (pos + 8, pos + size))
        pos += size
    return out


def set_rotation(data: bytes, degrees_cw: int) -> bytes:
    """Write a phone-style display matrix (clockwise rotation) into the mp4's video track header (as in
    tests/data/test_video_decode.py)."""
    moov = _boxes(data, 0, len(data))[b"moov"]
    for kind, (a, b) in _boxes(data, *moov).items():
        if not kind.startswith(b"trak"):
            continue
        trak = _boxes(data, a, b)
        hdlr = _boxes(data, *trak[b"mdia"])[b"hdlr"]
        if data[hdlr[0] + 8 : hdlr[0] + 12] == b"vide":
            at = trak[b"tkhd"][0] + (4 + 32 + 16 if data[trak[b"tkhd"][0]] == 1 else 4 + 20 + 16)
            c, s = round(math.cos(math.radians(degrees_cw))), round(math.sin(math.radians(degrees_cw)))
            values = [c << 16, s << 16, 0, -s << 16, c << 16, 0, 0, 0, 1 << 30]
            patch = b"".join(v.to_bytes(4, "big", signed=True) for v in values)
            return data[:at] + patch + data[at + 36 :]
    raise AssertionError("no video track")
