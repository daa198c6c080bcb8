"""Global motion score of a clip: Farneback optical flow at 4 fps on small frames (RECIPE section 6 says 2 fps; see
"Range" for why our default is 4).

The unit
    **Pixels per second on a map whose short side is 16 pixels** ("16-px-map px/s"). For each pair of consecutive
    samples (taken at ``fps`` = 4, so normally 0.25 s apart) the dense Farneback flow is computed on grey frames
    resized to ``short_side`` (64) pixels, the flow field is area-averaged down to a ``flow_short_side`` (16) pixel
    map and its vectors rescaled to that map's pixels, the per-cell magnitudes are averaged over the map and divided
    by the pair's time gap. A clip's score is the mean over the pairs inside it. So a shot that pans by one frame
    height per second scores 16; a score of 1 means content moves 1/16 of the frame's short side per second.

    Because displacements are measured in units of the frame's short side and divided by real time, the score does
    not depend on the video's resolution, on the resolution the flow is computed at (up to flow accuracy), on the
    native frame rate, or on small jitter of the sample times (a 25 fps video sampled "at 2 fps" gives pairs 0.52 s
    apart). Area-averaging the vector field (not the magnitudes) to 16 px is the recipe's "flow maps downscaled to
    a 16 px shortest side": it suppresses sensor noise and small flicker, which average out within a cell.

Range: at 2 fps Farneback follows displacements up to about an eighth of the short side per sample pair (OpenCV's
pyramid stops at 32 px). A global pan is measured to within 1% up to 0.25 short sides/s (score 4, checked at
several resolutions and frame rates in the tests); beyond that the flow loses track and motion is under-estimated
(a pan of 0.5 short sides/s scores about 2.4), so very fast clips do not rank above moderately fast ones. At 4 fps
the range doubles (a pan of 0.5 short sides/s scores 8.0, exactly), and the demo's static < slow < fast scenes are
ordered for every seed, where at 2 fps a quarter of the seeds rank fast below slow. Motion costs about 1 ms per
pair, so 4 fps adds ~2 ms per second of video, against ~70 ms to decode that second of 720p. Our default is
therefore ``fps=4``; set ``motion.fps=2`` for the paper's setting.

Calibration (``data/demo_scenes.py`` scenes at 24 fps, 128x96, 6 seeds; only the shapes move and they cover part
of the frame, so a scene scores well below its shapes' speed)::

    fps=4 (default):  static 0.00-0.03   slow 0.3-1.3 (mean 0.9)   fast 1.8-5.5 (mean 2.8)
    fps=2 (paper):    static 0.00-0.01   slow 0.3-1.6 (mean 0.9)   fast 0.9-2.1 (mean 1.3)

The score becomes ``motion_bucket_id`` through ``data/micro_cond.py`` (default: ``round(90 * log1p(score))``, so
3.1 maps to the inference default 127 and 16, a whole short side per second, to 255).

Scan use: a ``MotionTap`` is one of ``scan.py``'s frame taps; it keeps one small grey frame and a list of
``(t_prev, t_cur, score)`` pairs for the whole video, and ``clip_score(start_s, end_s)`` averages the pairs lying
inside a clip, so pairs that straddle a cut never count. ``motion_score`` does the same for frames outside a scan.

Camera motion: the same flow map of every pair is fitted with a global camera model (``camera_motion.py``), so the
annotator also writes ``camera_tx``, ``camera_ty``, ``camera_zoom`` and the label ``camera_motion`` without a second
flow; ``MotionTap.clip_camera`` gives a clip's pair fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from data.curation.annotators import Annotator, ClipContext, Option, round_score
from data.curation.camera_motion import FIELDS as CAMERA_FIELDS
from data.curation.camera_motion import (
    CameraMotionConfig,
    CameraPair,
    camera_fields,
    camera_pair,
    fit_camera,
    texture_weights,
)

# Two samples closer than this (seconds) count as the same time when choosing frames at ``fps``.
_TIME_EPS = 1e-3


@dataclass(frozen=True)
class MotionConfig:
    """Farneback parameters: OpenCV's example values with its recommended ``poly_n=7, poly_sigma=1.5`` pairing
    (a smoother polynomial fit, more robust on compressed frames). OpenCV never builds a pyramid level with a side
    below 32 px, so on 64-px frames ``levels`` is effectively 2 (64 and 32 px) whatever is asked."""

    fps: float = 4.0  # the recipe's 2 fps under-reads fast motion (module docstring, Range)
    short_side: int = 64  # frames are resized to this short side before the flow is computed
    flow_short_side: int = 16  # the flow map is area-averaged down to this short side
    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 7
    poly_sigma: float = 1.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number (the recipe uses 2); got {self.fps}")
        if self.flow_short_side < 1 or self.short_side < self.flow_short_side:
            raise ValueError(
                f"need 1 <= flow_short_side <= short_side; got flow_short_side={self.flow_short_side}, "
                f"short_side={self.short_side} (the recipe averages the flow down to 16 px)"
            )
        if not 0 < self.pyr_scale < 1:
            raise ValueError(f"pyr_scale must be in (0, 1); got {self.pyr_scale}")
        if self.levels < 1 or self.winsize < 3 or self.iterations < 1 or self.poly_n not in (5, 7):
            raise ValueError("need levels >= 1, winsize >= 3, iterations >= 1 and poly_n in (5, 7)")


def _resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    if min(h, w) == short_side:
        return image
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (width, height)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp)


def to_grey(frame: np.ndarray, cfg: MotionConfig) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (h, w) uint8 grey with short side ``cfg.short_side``."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frames must be (H, W, 3) uint8 RGB; got {frame.shape} {frame.dtype}")
    grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    return _resize_short_side(grey, cfg.short_side)


def pair_flow(prev_grey: np.ndarray, cur_grey: np.ndarray, cfg: MotionConfig) -> np.ndarray:
    """The flow map from ``prev_grey`` to ``cur_grey``: Farneback at the frames' size, the vector field
    area-averaged to the ``flow_short_side`` map, as (h16, w16, 2) float64 in that map's pixels (not per second)."""
    flow = cv2.calcOpticalFlowFarneback(
        prev_grey, cur_grey, None, cfg.pyr_scale, cfg.levels, cfg.winsize, cfg.iterations, cfg.poly_n,
        cfg.poly_sigma, 0,
    )  # fmt: skip
    # (h, w, 2) in frame pixels -> (h16, w16, 2) in 16-px-map pixels.
    small = _resize_short_side(flow, cfg.flow_short_side) * (cfg.flow_short_side / min(flow.shape[:2]))
    return small.astype(np.float64)


def _magnitude(small: np.ndarray) -> float:
    """Mean vector length of a ``pair_flow`` map: the pair's motion in map pixels (not per second)."""
    return float(np.sqrt((small**2).sum(axis=-1)).mean())


class MotionTap:
    """A ``FrameTap`` (``taps.py``) that records the motion between consecutive 2-fps samples of a whole video."""

    def __init__(self, cfg: MotionConfig | None = None) -> None:
        self.cfg = cfg or MotionConfig()
        self.fps: float | None = self.cfg.fps
        self.short_side: int | None = self.cfg.short_side
        self._prev: tuple[float, np.ndarray] | None = None
        self._pairs: list[tuple[float, float, float]] = []  # (t_prev, t_cur, 16-px-map px/s)
        self._camera: list[CameraPair] = []  # the same pairs' camera fits (camera_motion.py)

    def push(self, index: int, time_s: float, frame: np.ndarray) -> None:
        grey = to_grey(frame, self.cfg)
        prev = self._prev
        self._prev = (time_s, grey)
        if prev is None:
            return
        t_prev, prev_grey = prev
        dt = time_s - t_prev
        if dt <= 0 or prev_grey.shape != grey.shape:
            # Out-of-order or duplicate timestamps, or a resolution change mid-stream: restart the pair chain.
            return
        small = pair_flow(prev_grey, grey, self.cfg)
        self._pairs.append((t_prev, time_s, _magnitude(small) / dt))
        fit = fit_camera(small, texture_weights(prev_grey, small.shape[:2]))
        self._camera.append(camera_pair(t_prev, time_s, fit))

    @property
    def pairs(self) -> list[tuple[float, float, float]]:
        """``(t_prev, t_cur, score)`` of every sample pair so far, ``score`` in 16-px-map pixels per second."""
        return list(self._pairs)

    def clip_score(self, start_s: float, end_s: float) -> float | None:
        """Mean score of the pairs with both times in ``[start_s, end_s)``; None when the clip holds no pair."""
        inside = [s for t0, t1, s in self._pairs if start_s <= t0 and t1 < end_s]
        return float(np.mean(inside)) if inside else None

    def clip_camera(self, start_s: float, end_s: float) -> list[CameraPair]:
        """The camera fits of the pairs with both times in ``[start_s, end_s)`` (``camera_motion.py``)."""
        return [p for p in self._camera if start_s <= p.t0 and p.t1 < end_s]


def sample_indices(times_s: Sequence[float], fps: float) -> list[int]:
    """Indices of the first frame at or after each ``times_s[0] + k / fps``, the scan's sampling rule."""
    chosen: list[int] = []
    if not len(times_s):
        return chosen
    t0, k = float(times_s[0]), 0
    for i, t in enumerate(times_s):
        if t + _TIME_EPS >= t0 + k / fps:
            chosen.append(i)
            k = math.floor((t + _TIME_EPS - t0) * fps) + 1
    return chosen


def motion_score(frames: np.ndarray, times_s: Sequence[float], cfg: MotionConfig | None = None) -> float | None:
    """The motion score of one clip given as (N, H, W, 3) uint8 frames and their timestamps (any frame rate: frames
    are sampled at ``cfg.fps`` like the scan does). None when fewer than two samples."""
    cfg = cfg or MotionConfig()
    if len(frames) != len(times_s):
        raise ValueError(f"got {len(frames)} frames but {len(times_s)} timestamps; pass one time per frame")
    tap = MotionTap(cfg)
    for i in sample_indices(times_s, cfg.fps):
        tap.push(i, float(times_s[i]), frames[i])
    return tap.clip_score(-math.inf, math.inf)


class MotionAnnotator(Annotator):
    """``motion_score``: the mean of the video's ``MotionTap`` pairs inside the clip (``annotate.motion``); and from
    the same flow the camera fields ``camera_tx``, ``camera_ty``, ``camera_zoom`` (numbers) and the label
    ``camera_motion`` (``camera_motion.py``; thresholds ``annotate.camera_motion``)."""

    name = "motion"
    options = (
        Option("motion", MotionConfig, factory=MotionConfig),
        Option("camera_motion", CameraMotionConfig, factory=CameraMotionConfig),
    )
    needs = "scan"
    fields = ("motion_score", *CAMERA_FIELDS)

    def tap(self) -> MotionTap:
        return MotionTap(self.cfg.motion)

    def annotate(self, clip: ClipContext) -> None:
        tap = clip.taps[self.name]
        assert isinstance(tap, MotionTap)
        start, end = clip.record["start_s"], clip.record["end_s"]
        clip.record["motion_score"] = round_score(tap.clip_score(start, end))
        clip.record.update(camera_fields(tap.clip_camera(start, end), self.cfg.camera_motion))
