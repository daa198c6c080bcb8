"""Camera motion of a clip from the motion annotator's optical flow (``motion.py``): a global camera model fitted to
each sample pair's flow map, its median over the clip, and a label.

The model
    Per pair of 4-fps samples the Farneback flow, area-averaged to the 16-px map ``motion.py`` already makes for the
    motion score, is fitted with a similarity motion about the frame centre, ``flow(p) = t + s * (p - c) +
    r * perp(p - c)`` (translation ``t``, divergence ``s``, roll ``r``), in units of the frame's short side. The fit
    is robust to moving foreground: it starts from the (texture-weighted) median flow and reweights every cell with
    Tukey's biweight of its residual (scale from the residuals' median absolute value), so cells that move unlike
    the majority (a hand, a passing car, a moving shape) get no weight; each cell is also weighted by how much
    texture it has (``texture_weights``: flat cells have unreliable flow), and the outer ring of cells, where content
    enters and leaves the frame, is left out.

The fields (all per second, independent of resolution and frame rate; the clip's value is the median over its
pairs, so a car that fills the frame for two pairs does not move the camera)
    ``camera_tx``  horizontal camera motion, frame short sides per second; > 0: the camera pans RIGHT (the image
                   content moves left).
    ``camera_ty``  vertical camera motion, short sides per second; > 0: the camera tilts UP (content moves down).
    ``camera_zoom`` log of the image scale change per second; > 0: zoom IN (content grows away from the centre),
                   0.1 = the content grows 10.5% per second.
    ``camera_motion`` the label: ``static``, ``pan_left``, ``pan_right``, ``tilt_up``, ``tilt_down``, ``zoom_in``,
                   ``zoom_out``. Rule: each component is divided by its threshold (``min_pan`` for tx and ty,
                   ``min_zoom`` for zoom, ``CameraMotionConfig``); when no ratio reaches 1 the clip is ``static``,
                   otherwise the largest ratio names the label (mixed motion gets its dominant component).

Calibration (``data/curation/camera_truth.py``; ``scripts/eval_curation.py`` reports it per kind and label). Shots:
104 pans, tilts, zooms and static crops derived from two static-camera calibration clips (hands moving bottles and
an exposure change; cars passing close), at 0.08 and 0.25 short sides/s and 0.1 and 0.3 log-scale/s, at two sizes
and two frame rates; 14 static real shots (the static clip, 2-s windows of the cars and hands clips); 78 demo scenes
(6 seeds; one textured shape moving against the camera's pan). Measured at the defaults::

    static shots (real and derived)   |tx|, |ty| <= 0.003    |zoom| <= 0.006
    slowest derived pan / tilt        |tx| or |ty| >= 0.046 (true 0.08: flat walls read as still, pulling it down)
    slowest derived zoom              |zoom| >= 0.084 (true 0.1)
    labels right: derived 104/104, static real 14/14, demo 76/78 (two fast demo pans whose shape hides the
    background's motion read static; none is labelled the wrong way)

so ``min_pan = 0.03`` and ``min_zoom = 0.04`` leave a factor of ten to static shots and about 1.5 to 2 to the
slowest moves. Every derived group orders its moves by the fields (fast left < slow left < static < slow right <
fast right; zoom out < static < zoom in).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

LABELS = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out")
FIELDS = ("camera_tx", "camera_ty", "camera_zoom", "camera_motion")
_TUKEY_C = 4.685  # the biweight's 95%-efficiency constant, in units of the residual scale
_ITERATIONS = 6
_TEXTURE_FULL = 8.0  # structure-tensor strength (see texture_weights) from which a cell counts fully


@dataclass(frozen=True)
class CameraMotionConfig:
    """Label thresholds (``annotate.camera_motion``). A clip is ``static`` when ``|camera_tx|`` and ``|camera_ty|``
    are below ``min_pan`` and ``|camera_zoom|`` below ``min_zoom``; ``min_pairs`` sample pairs are needed for any
    camera field (fewer: the fields are null)."""

    min_pan: float = 0.03  # short sides per second (a frame height in 33 s); calibration in the module docstring
    min_zoom: float = 0.04  # log scale per second (4% per second)
    min_pairs: int = 2

    def __post_init__(self) -> None:
        for name in ("min_pan", "min_zoom"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"camera_motion.{name} must be a positive number; got {value}")
        if self.min_pairs < 1:
            raise ValueError(f"camera_motion.min_pairs must be >= 1; got {self.min_pairs}")


class CameraPair(NamedTuple):
    """The camera fit of one sample pair, per second, in the fields' convention (module docstring)."""

    t0: float
    t1: float
    tx: float
    ty: float
    zoom: float


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres relative to the frame centre, in short sides: (h, w) each."""
    short = min(h, w)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return (xs + 0.5 - w / 2) / short, (ys + 0.5 - h / 2) / short


def texture_weights(grey: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Per cell of a (h, w) map: how well flow can be measured there, from the grey frame's structure tensor
    (area-averaged over the cell): its smaller eigenvalue's square root (Sobel units on 0-255 grey), divided by
    ``_TEXTURE_FULL`` and capped at 1. Flat cells (a plain wall, black) and cells with a single edge direction (the
    aperture problem) get little weight: Farneback fills them with near-zero or smoothed flow."""
    import cv2

    g = grey.astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    size = (shape[1], shape[0])
    a, b, c = (
        cv2.resize(m, size, interpolation=cv2.INTER_AREA).astype(np.float64) for m in (gx * gx, gy * gy, gx * gy)
    )
    smaller = (a + b) / 2 - np.sqrt(((a - b) / 2) ** 2 + c * c)
    return np.clip(np.sqrt(np.maximum(smaller, 0.0)) / _TEXTURE_FULL, 0.0, 1.0)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    if cum[-1] <= 0:
        return float(np.median(values))
    return float(values[order][np.searchsorted(cum, cum[-1] / 2)])


def fit_camera(flow: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """Robust similarity fit of a (h, w, 2) flow map in map pixels: ``(tx, ty, s, r)`` of the CONTENT motion, in
    short sides per pair (``tx``, ``ty``), scale and roll per pair (``s``, ``r``; see the module docstring)."""
    h, w = flow.shape[:2]
    x, y = _grid(h, w)
    short = min(h, w)
    inner = (slice(1, h - 1), slice(1, w - 1)) if min(h, w) > 4 else (slice(None), slice(None))
    u = flow[..., 0][inner].ravel() / short
    v = flow[..., 1][inner].ravel() / short
    x, y = x[inner].ravel(), y[inner].ravel()
    prior = np.ones_like(x) if weights is None else np.asarray(weights, np.float64)[inner].ravel()
    # Rows: u = tx + s*x - r*y ; v = ty + s*y + r*x.
    a = np.zeros((2 * x.size, 4))
    a[: x.size, 0], a[: x.size, 2], a[: x.size, 3] = 1.0, x, -y
    a[x.size :, 1], a[x.size :, 2], a[x.size :, 3] = 1.0, y, x
    b = np.concatenate([u, v])
    params = np.array([_weighted_median(u, prior), _weighted_median(v, prior), 0.0, 0.0])
    for _ in range(_ITERATIONS):
        res = np.hypot(*(a @ params - b).reshape(2, -1))
        scale = max(1.4826 * float(np.median(res)), 1e-4)
        z = res / (_TUKEY_C * scale)
        wt = prior * np.where(z < 1, (1 - z * z) ** 2, 0.0)
        if wt.sum() <= 1e-9:
            break
        sw = np.sqrt(np.concatenate([wt, wt]))
        params = np.linalg.lstsq(a * sw[:, None], b * sw, rcond=None)[0]
    tx, ty, s, r = (float(p) for p in params)
    return tx, ty, s, r


def camera_pair(t0: float, t1: float, fit: tuple[float, float, float, float]) -> CameraPair:
    """A pair's content-motion fit (``fit_camera``) as camera motion per second (the fields' signs)."""
    dt = t1 - t0
    tx, ty, s, _ = fit
    return CameraPair(t0, t1, -tx / dt, ty / dt, math.log(max(1.0 + s, 1e-3)) / dt)


def camera_label(tx: float, ty: float, zoom: float, cfg: CameraMotionConfig) -> str:
    """The label of a clip's camera motion (module docstring: the largest threshold ratio, or static)."""
    ratios = {
        "pan_right" if tx > 0 else "pan_left": abs(tx) / cfg.min_pan,
        "tilt_up" if ty > 0 else "tilt_down": abs(ty) / cfg.min_pan,
        "zoom_in" if zoom > 0 else "zoom_out": abs(zoom) / cfg.min_zoom,
    }
    label, ratio = max(ratios.items(), key=lambda kv: kv[1])
    return label if ratio >= 1.0 else "static"


def camera_fields(pairs: Sequence[CameraPair], cfg: CameraMotionConfig) -> dict[str, float | str | None]:
    """The record fields of a clip from its pairs: medians and label; all null with fewer than ``min_pairs``."""
    if len(pairs) < cfg.min_pairs:
        return dict.fromkeys(FIELDS)
    tx, ty, zoom = (float(np.median([getattr(p, k) for p in pairs])) for k in ("tx", "ty", "zoom"))
    return {
        "camera_tx": round(tx, 6),
        "camera_ty": round(ty, 6),
        "camera_zoom": round(zoom, 6),
        "camera_motion": camera_label(tx, ty, zoom, cfg),
    }
