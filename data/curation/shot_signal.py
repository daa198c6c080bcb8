"""The per-frame signal shot detection keeps from the single decode pass, and the confirmation of transitions on it.

``SignalTap`` records, for every frame, RGB histograms, the mean level and a small grey thumbnail. The cascade
(``cuts.py``) locates transition spans on the histograms; every detector's transitions are then *confirmed*
(``rejection``), since real footage changes a lot inside a shot (cars passing the lens, flicker, exposure): a
transition separates two different pictures, the earlier picture does not come back right after a cut, and a
crossfade moves steadily from one picture to the other. The thresholds are ``CutConfig``'s, where their comments
say what they separate on real and synthetic footage.
"""

from __future__ import annotations

import cv2
import numpy as np

from data.curation.transitions import Transition

_HIST_BINS = 16  # per RGB channel, for the span signal
_THUMB_SIZE = (32, 18)  # (width, height) of the grey thumbnails that confirm transitions (aspect squashed)
_FLAT_STD = 2.0  # grey levels: a thumbnail this uniform (black, a flat colour) has no structure to correlate
_FLAT_LEVEL = 10.0  # grey levels: two flat thumbnails closer than this are one picture (black and near-black)
_EDGE = 3  # frames averaged on each side of a transition for its before and after pictures


class SignalTap:
    """Every frame's RGB histograms (16 bins a channel, float16), mean level and a 32x18 grey thumbnail, for locating
    transition spans and confirming them. Memory: about 680 bytes a frame (some 75 MB for an hour at 30 fps).
    Per-channel histograms located the demo fades more closely than a joint 4x4x4 one (fewer frames off), since
    brightness ramps move them bin by bin; the thumbnail keeps the layout of the picture, which histograms lose."""

    fps = None

    def __init__(self, short_side: int) -> None:
        self.short_side = short_side
        self.hists: list[np.ndarray] = []
        self.levels: list[float] = []
        self.thumbs: list[np.ndarray] = []

    def push(self, index: int, time_s: float, frame: np.ndarray) -> None:
        hist = np.concatenate([cv2.calcHist([frame], [c], None, [_HIST_BINS], [0, 256]) for c in range(3)])
        self.hists.append((hist.reshape(-1) / (frame.shape[0] * frame.shape[1])).astype(np.float16))
        self.levels.append(float(frame.mean()))
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        self.thumbs.append(cv2.resize(grey, _THUMB_SIZE, interpolation=cv2.INTER_AREA))


def _mean_thumb(thumbs: list[np.ndarray], a: int, b: int) -> np.ndarray | None:
    """Mean of thumbnails ``[a, b)`` (clipped to the video), float32; None when that leaves none."""
    a, b = max(a, 0), min(b, len(thumbs))
    return np.mean(np.asarray(thumbs[a:b], np.float32), 0) if b > a else None


def _similarity(x: np.ndarray, y: np.ndarray) -> float:
    """Correlation of two grey thumbnails, so a change of brightness or contrast alone leaves it at 1. A flat
    thumbnail (black) has no structure: two flat ones are the same picture when their levels are close."""
    mx, my = float(x.mean()), float(y.mean())
    x, y = x - mx, y - my
    sx, sy = float(np.sqrt((x * x).mean())), float(np.sqrt((y * y).mean()))
    if sx < _FLAT_STD or sy < _FLAT_STD:
        return 1.0 if sx < _FLAT_STD and sy < _FLAT_STD and abs(mx - my) < _FLAT_LEVEL else 0.0
    return float((x * y).mean() / (sx * sy))


def hist_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Total variation between normalised per-channel histograms, averaged over the 3 channels: 0 .. 1."""
    return 0.5 * np.abs(x - y).sum(-1) / 3


def rejection(
    t: Transition,
    signal: SignalTap,
    *,
    fps: float,
    same_shot_similarity: float,
    return_s: float,
    min_monotonicity: float,
) -> str | None:
    """Why ``t`` is no transition (None when it is confirmed): the picture before it is the picture after it, the
    earlier picture comes back soon after a cut (something passed in front of the camera, a flash), or a crossfade
    goes back and forth (flicker). ``same_shot_similarity=1`` turns the checks off."""
    thumbs, n = signal.thumbs, len(signal.thumbs)
    if same_shot_similarity >= 1 or n < 2:
        return None
    s, e = (t.frame, t.frame) if t.start_frame == t.end_frame else (t.start_frame, t.end_frame)
    before, after = _mean_thumb(thumbs, s - _EDGE, s), _mean_thumb(thumbs, e, e + _EDGE)
    if before is None or after is None:
        return None
    similarity = _similarity(before, after)
    if similarity >= same_shot_similarity:
        return f"same picture before and after (similarity {similarity:.2f})"
    if t.kind == "cut":
        reach = int(round(return_s * fps))
        back = [_similarity(before, thumbs[k].astype(np.float32)) for k in range(e + 1, min(n, e + 1 + reach))]
        ahead = [_similarity(after, thumbs[k].astype(np.float32)) for k in range(max(0, s - 1 - reach), s - 1)]
        best = max(back + ahead, default=-1.0)
        return (
            f"the picture returns within {return_s:g} s (similarity {best:.2f})"
            if best >= same_shot_similarity
            else None
        )
    mono = _monotonicity(signal, s, e) if t.kind == "crossfade" else 1.0  # a fade dips and rises by nature
    return f"the change goes back and forth (monotonicity {mono:.2f})" if mono < min_monotonicity else None


def _monotonicity(signal: SignalTap, s: int, e: int) -> float:
    """Net change over total variation of the progress (histogram distance to the frames before ``s`` minus that to
    the frames from ``e``) over the frames ``s - 1 .. e``: 1 for a steady change, near 0 for back and forth."""
    first = max(s - _EDGE, 0)
    hists = np.asarray(signal.hists[first : e + _EDGE], np.float32)
    lo = s - first
    if lo == 0 or len(hists) - lo < _EDGE:
        return 1.0  # at the very start or end of the video: no picture on one side to measure against
    a, b = hists[:lo].mean(0), hists[-_EDGE:].mean(0)
    inside = hists[lo - 1 : len(hists) - _EDGE + 1]
    progress = hist_distance(inside, a) - hist_distance(inside, b)
    steps = float(np.abs(np.diff(progress)).sum())
    return float((progress[-1] - progress[0]) / steps) if steps > 1e-6 else 1.0
