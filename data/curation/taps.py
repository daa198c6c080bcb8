"""The frame-tap contract of the single decode pass (``scan.py``): every consumer of a raw video's frames (the cut
detectors, the motion annotator) is a tap, so each video is decoded exactly once however many consumers it has.

A tap asks for frames at a rate (``fps``; ``None`` = every decoded frame) and a size (``short_side``: frames are
resized, keeping the aspect ratio, so the shorter side has this many pixels; ``None`` = native size). For a rate
``r`` the scan delivers the first frame at or after each time ``k / r`` (k = 0, 1, ...), using the frames'
presentation timestamps, so variable-frame-rate videos are sampled in time, not by index. Frames arrive in display
orientation (rotation metadata applied) as (H, W, 3) uint8 RGB arrays, in increasing time order.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class FrameTap(Protocol):
    fps: float | None
    short_side: int | None

    def push(self, index: int, time_s: float, frame: np.ndarray) -> None:
        """One frame: ``index`` = the decoded frame's index in the video (0-based), ``time_s`` = its timestamp."""
        ...
