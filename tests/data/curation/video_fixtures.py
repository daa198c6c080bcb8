"""Small videos encoded on demand for the curation tests (cut, scan and clipping tests)."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def encode_frames(
    path: str | Path,
    frames: Sequence[np.ndarray],
    *,
    fps: float = 24.0,
    rotation_cw: int = 0,
    pix_fmt: str = "yuv420p",
    gop: int = 12,
    bframes: int | None = None,
    times_s: Sequence[float] | None = None,
    faststart: bool = False,
) -> Path:
    """Encode (H, W, 3) uint8 RGB ``frames`` with libx264 to ``path``. ``rotation_cw`` writes a display matrix (a
    phone video: players turn the frames clockwise by it); ``times_s`` gives each frame's time (variable frame
    rate); ``pix_fmt="yuv444p"`` allows odd sizes."""
    height, width = frames[0].shape[:2]
    rate = Fraction(fps).limit_denominator(1001)
    time_base = Fraction(1, 1000) if times_s is not None else 1 / rate
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = time_base
        opts = {"crf": "12", "preset": "veryfast", "g": str(gop), "keyint_min": str(gop)}
        if bframes is not None:
            opts["bf"] = str(bframes)
        stream.options = opts
        if rotation_cw:
            stream.set_display_rotation(-rotation_cw)  # PyAV takes counterclockwise degrees
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = int(round(times_s[i] / time_base)) if times_s is not None else i
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return Path(path)


def textured_frames(n: int, *, size: tuple[int, int] = (128, 96), seed: int = 0, step: int = 2) -> list[np.ndarray]:
    """``n`` frames (width, height = ``size``) of a smooth random texture panning ``step`` px a frame to the left:
    every frame differs from the next and none repeats, so decoded frames can be matched to source indices. Detail
    is in the brightness (8 px blobs), colour varies slowly (32 px), as in camera footage, so 4:2:0 chroma keeps it."""
    width, height = size
    total = width + n * step
    rng = np.random.default_rng(seed)

    def blobs(cell: int, channels: int) -> np.ndarray:
        coarse = rng.integers(0, 256, (height // cell + 2, total // cell + 2, channels), dtype=np.uint8)
        return cv2.resize(coarse, (total, height), interpolation=cv2.INTER_CUBIC).reshape(height, total, channels)

    big = (0.6 * blobs(8, 1) + 0.4 * blobs(32, 3)).astype(np.uint8)
    return [np.ascontiguousarray(big[:, i * step : i * step + width]) for i in range(n)]


def write_audio_only(path: Path | str) -> None:
    """An mp4 container with an AAC stream and no video stream."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
