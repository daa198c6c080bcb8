"""Encode RGB frames as a yuv420p mp4 through PyAV, byte-identically from run to run (the demo data, test videos).

The colour conversion is done in numpy (BT.601 limited range), one encoder thread, and x264's macroblock-tree rate
control is off: the same frames give the same file on every machine and in every process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np


def default_codec() -> str:
    """``libx264`` when this PyAV build has it, else ``mpeg4``."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H * 3 // 2, W) uint8 planar I420, BT.601 limited range.

    Done in numpy rather than swscale, which PyAV runs with threads by default: one exact conversion everywhere.
    """
    rgb = frame.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    h, w = frame.shape[:2]
    sub = (rgb[0::2, 0::2] + rgb[1::2, 0::2] + rgb[0::2, 1::2] + rgb[1::2, 1::2]) * 0.25
    r, g, b = sub[..., 0], sub[..., 1], sub[..., 2]
    u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    planes = [np.clip(np.round(p), 0, 255).astype(np.uint8).reshape(-1) for p in (y, u, v)]
    return np.concatenate(planes).reshape(h * 3 // 2, w)


def encode_video(
    frames: Iterable[np.ndarray],
    file: str | os.PathLike[str] | BinaryIO,
    *,
    fps: float,
    size: tuple[int, int],
    codec: str | None = None,
    gop_seconds: float = 2.0,
    crf: int = 23,
) -> int:
    """Encode (H, W, 3) uint8 RGB frames as a yuv420p mp4 through PyAV; returns the number of frames written.

    One encoder thread and no macroblock-tree rate control: byte-identical files matter more here than compression.
    """
    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"size must have even width and height for yuv420p, got {width}x{height}")
    codec = codec or default_codec()
    rate = Fraction(fps).limit_denominator(1001)
    count = 0
    with av.open(file, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.gop_size = max(1, int(round(fps * gop_seconds)))
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            # mbtree off: with it on, identical input gave different bitstreams in about 1 of 5 test processes
            # (float propagation in x264's lookahead); without it, 0 of 40.
            stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0"}
        for frame in frames:
            if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                raise ValueError(f"frames must be ({height}, {width}, 3) uint8, got {frame.shape} {frame.dtype}")
            vf = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
            vf.pts = count
            vf.time_base = 1 / rate
            container.mux(stream.encode(vf))
            count += 1
        container.mux(stream.encode(None))
    return count
