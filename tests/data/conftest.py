"""Fixtures for the data tests: tiny mp4s whose frames say which source frame they are."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable

import numpy as np
import pytest
import torch

# Frame i is flat grey at level GREY_BASE + GREY_STEP * i, so a decoded frame names its source index even after
# H.264, resizing and cropping (a step of 6 levels survives the codec's +-2 error).
GREY_BASE, GREY_STEP, MAX_INDEXED_FRAMES = 10, 6, 40


@functools.cache
def _make_mp4(num_frames: int, fps: int, width: int, height: int, faststart: bool) -> bytes:
    import av

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip.mp4")
        # faststart puts the moov index first, as web-served mp4s have it; it needs a real file to rewrite.
        options = {"movflags": "faststart"} if faststart else {}
        with av.open(path, mode="w", format="mp4", options=options) as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": "10", "preset": "ultrafast", "g": "8"}
            for i in range(num_frames):
                level = GREY_BASE + GREY_STEP * (i % MAX_INDEXED_FRAMES)
                pixels = np.full((height, width, 3), level, dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        with open(path, "rb") as f:
            return f.read()


@pytest.fixture(scope="session")
def make_mp4() -> Callable[..., bytes]:
    """``make_mp4(num_frames=40, fps=24, width=64, height=48, faststart=True) -> bytes`` (cached)."""

    def make(num_frames: int = 40, fps: int = 24, width: int = 64, height: int = 48, faststart: bool = True) -> bytes:
        return _make_mp4(num_frames, fps, width, height, faststart)

    return make


def _frame_index(frame: torch.Tensor) -> int:
    assert frame.dtype == torch.uint8, f"decoded frames are uint8 in [0, 255]; got {frame.dtype}"
    level = float(frame.float().mean())
    return round((level - GREY_BASE) / GREY_STEP)


@pytest.fixture(scope="session")
def frame_index() -> Callable[[torch.Tensor], int]:
    """Source index of a decoded (3, H, W) uint8 frame from a ``make_mp4`` video."""
    return _frame_index
