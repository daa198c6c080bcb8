"""Camera-motion ground truth made exactly from real footage, and the demo's synthetic pans and zooms: what
``tests/data/curation/test_camera_motion.py`` and ``scripts/eval_curation.py`` score ``camera_motion.py`` on.

The calibration set (``../shared/calibration``) has no labelled pans or zooms, so they are derived from its real
clips of a static camera, whose own motion (hands moving bottles, an exposure change, cars passing close) stays in
them:

- a **pan / tilt**: a crop window of 55% of the source's height slides left, right, up or down over the real
  frames at a known speed (window short sides per second), resized to the output size;
- a **zoom**: a centred crop window shrinks (zoom in) or grows (zoom out) exponentially at a known log-scale rate
  per second, resized back;
- a **static** shot: a fixed crop window.

Each at two speeds (``PAN_SPEEDS``, ``ZOOM_SPEEDS``), two output sizes and two frame rates (the source's and half of
it, every second frame). Only the frames the motion tap samples (4 fps) are rendered. Static real shots: the static
clip of ``motion/`` and 2-second windows of the single-shot ``cuts/`` clips (passing cars, hands, exposure changes;
windows lie inside a shot of ``cuts/truth.json``). Synthetic: ``data/demo_scenes.py`` scenes with ``pan`` and
``zoom``, a shape moving against the camera's pan.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data.curation.camera_motion import CameraMotionConfig, camera_fields
from data.curation.motion import MotionConfig, MotionTap, sample_indices

PAN_SPEEDS = (0.08, 0.25)  # window short sides per second
ZOOM_SPEEDS = (0.1, 0.3)  # log scale per second
SECONDS = 2.5
SIZES = ((384, 216), (192, 108))  # output (width, height)
# Static-camera footage (file, first frame): hands and an exposure change; cars passing close (frames 103-113).
PAN_SOURCES = (("cuts/cuts_06_single_shot_hands.mp4", 40), ("cuts/cuts_01_single_shot_vehicles.mp4", 90))
STATIC_SHOTS = ("cuts/cuts_01_single_shot_vehicles.mp4", "cuts/cuts_06_single_shot_hands.mp4")
STATIC_CLIPS = ("motion/motion_1_static_nasa.mp4",)
WINDOW_S = 2.0
STATIC_SHORT_SIDE = 180  # static clips are read at this size (memory); the flow runs at 64 px anyway
# (label, camera tx, ty, zoom) per unit speed, in camera_motion.py's convention.
DIRECTIONS = {
    "pan_left": (-1.0, 0.0, 0.0),
    "pan_right": (1.0, 0.0, 0.0),
    "tilt_up": (0.0, 1.0, 0.0),
    "tilt_down": (0.0, -1.0, 0.0),
    "zoom_in": (0.0, 0.0, 1.0),
    "zoom_out": (0.0, 0.0, -1.0),
}


@dataclass(frozen=True)
class Shot:
    """A clip with known camera motion: ``frames`` (N, H, W, 3) uint8 at ``times`` (s), the label and the true
    camera motion (tx, ty per second in short sides, zoom in log scale per second), ``kind`` its category."""

    name: str
    kind: str  # "derived", "static_real" or "synthetic"
    label: str
    truth: tuple[float, float, float]
    frames: np.ndarray
    times: np.ndarray
    group: str = ""  # derived shots: source, frame rate and size (one static shot and its moves per group)
    speed: float = 0.0  # derived shots: the move's speed (PAN_SPEEDS or ZOOM_SPEEDS)


def read_video(
    path: str | Path, start: int = 0, seconds: float | None = None, *, short_side: int | None = None
) -> tuple[np.ndarray, float]:
    """Frames from ``start`` on, ``seconds`` of them (all to the end when None), as (N, H, W, 3) uint8 RGB (shrunk to
    ``short_side`` when given and smaller), and the stream's frame rate."""
    import av

    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        count = None if seconds is None else int(math.ceil(seconds * fps)) + 1
        for i, frame in enumerate(container.decode(stream)):
            if i >= start:
                rgb = frame.to_ndarray(format="rgb24")
                scale = 1.0 if short_side is None else min(1.0, short_side / min(rgb.shape[:2]))
                if scale < 1.0:
                    rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                frames.append(rgb)
            if count is not None and len(frames) >= count:
                break
    if not frames:
        raise ValueError(f"{path}: no frames from {start}")
    return np.stack(frames), fps


def _window(label: str, speed: float, t: float, src: tuple[int, int], aspect: float) -> tuple[float, float, float]:
    """The crop window (x0, y0, height) in source pixels at time ``t`` for a ``label`` move at ``speed``."""
    w_src, h_src = src
    if label.startswith("zoom"):
        h_big = 0.95 * min(h_src, w_src / aspect)
        h = h_big * math.exp(-speed * t if label == "zoom_in" else speed * (t - SECONDS))
        return (w_src - aspect * h) / 2, (h_src - h) / 2, h
    h = 0.55 * h_src
    w = aspect * h
    vx, vy, _ = DIRECTIONS.get(label, (0.0, 0.0, 0.0))
    travel = speed * h * SECONDS
    # Camera right = window moves right; camera up = window moves up (image y grows downwards).
    x0 = (w_src - w - vx * travel) / 2 + vx * speed * h * t
    y0 = (h_src - h + vy * travel) / 2 - vy * speed * h * t
    return x0, y0, h


def crop(frame: np.ndarray, window: tuple[float, float, float], size: tuple[int, int]) -> np.ndarray:
    """The sub-pixel crop ``window`` = (x0, y0, height) of ``frame``, resized to ``size`` = (width, height)."""
    x0, y0, h = window
    k = size[1] / h  # output pixels per source pixel
    if k < 0.75:  # pre-shrink so the linear warp does not alias
        pre = cv2.resize(frame, None, fx=1.5 * k, fy=1.5 * k, interpolation=cv2.INTER_AREA)
        f = pre.shape[1] / frame.shape[1]
        frame, x0, y0, k = pre, x0 * f, y0 * f, k / f
    m = np.float32([[k, 0, -x0 * k], [0, k, -y0 * k]])
    return cv2.warpAffine(frame, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def derived_shots(folder: str | Path) -> Iterator[Shot]:
    """Pans, tilts, zooms and static crops of the real clips ``PAN_SOURCES`` (module docstring)."""
    for source, first in PAN_SOURCES:
        frames, fps = read_video(Path(folder) / source, first, SECONDS)
        for step in (1, 2):
            idx = np.arange(0, min(len(frames), int(SECONDS * fps) + 1), step)
            times = idx / fps
            keep = idx[sample_indices(times, MotionConfig().fps)]
            for size in SIZES:
                moves = [("static", 0.0)]
                moves += [(lab, v) for lab in DIRECTIONS if not lab.startswith("zoom") for v in PAN_SPEEDS]
                moves += [(lab, v) for lab in ("zoom_in", "zoom_out") for v in ZOOM_SPEEDS]
                for label, speed in moves:
                    src = (frames.shape[2], frames.shape[1])
                    out = [crop(frames[i], _window(label, speed, i / fps, src, size[0] / size[1]), size) for i in keep]
                    truth = tuple(speed * c for c in DIRECTIONS.get(label, (0.0, 0.0, 0.0)))
                    group = f"{Path(source).stem}@{fps / step:g}fps_{size[0]}x{size[1]}"
                    shot = Shot(f"{group}_{label}_{speed:g}", "derived", label, truth, np.stack(out), keep / fps,
                                group, speed)  # type: ignore[arg-type]  # fmt: skip
                    yield shot


def static_shots(folder: str | Path) -> Iterator[Shot]:
    """The static real shots: ``STATIC_CLIPS`` whole, and ``WINDOW_S`` windows inside the shots of the single-shot
    ``STATIC_SHOTS`` (``cuts/truth.json``)."""
    truth = json.loads((Path(folder) / "cuts" / "truth.json").read_text())
    for clip in STATIC_CLIPS:
        frames, fps = read_video(Path(folder) / clip, short_side=STATIC_SHORT_SIDE)
        yield Shot(Path(clip).stem, "static_real", "static", (0.0, 0.0, 0.0), frames, np.arange(len(frames)) / fps)
    for clip in STATIC_SHOTS:
        entry = truth[Path(clip).name]
        if entry.get("transitions"):
            raise ValueError(f"{clip} has transitions in cuts/truth.json; a static shot needs a single shot")
        frames, fps = read_video(Path(folder) / clip, short_side=STATIC_SHORT_SIDE)
        n = int(round(WINDOW_S * fps))
        for shot in entry["shots"]:
            for start in range(int(shot["start_frame"]), int(shot["end_frame"]) + 2 - n, n):
                name = f"{Path(clip).stem}[{start}:{start + n}]"
                times = np.arange(start, start + n) / fps
                yield Shot(name, "static_real", "static", (0.0, 0.0, 0.0), frames[start : start + n], times)


def measure(shot: Shot, motion: MotionConfig, camera: CameraMotionConfig) -> dict[str, float | str | None]:
    """The camera fields the curation would write for ``shot`` (its frames through a ``MotionTap``)."""
    tap = MotionTap(motion)
    for i in sample_indices(shot.times, motion.fps):
        tap.push(i, float(shot.times[i]), shot.frames[i])
    return camera_fields(tap.clip_camera(-math.inf, math.inf), camera)


# The demo's synthetic camera moves (data/demo_scenes.py): a pan follows the shapes' direction.
DEMO_MOVES = {
    "pan_right": {"pan": True, "direction": "to the right"},
    "pan_left": {"pan": True, "direction": "to the left"},
    "tilt_up": {"pan": True, "direction": "up"},
    "tilt_down": {"pan": True, "direction": "down"},
    "zoom_in": {"zoom": "in"},
    "zoom_out": {"zoom": "out"},
    "static": {},
}


# Frame rate per speed class: both inside the 4-fps flow's range (slow 0.19, fast 0.31 short sides per second).
DEMO_FPS = {"static": 24.0, "slow": 24.0, "fast": 8.0}


def demo_shots(seeds: range, *, seconds: float = 3.0, size: tuple[int, int] = (128, 96)) -> Iterator[Shot]:
    """The demo's synthetic scenes (mottled background, one moving shape) with every camera move (``DEMO_MOVES``) at
    both speeds, per seed; rendered at ``DEMO_FPS`` (the demo data's 24 fps puts fast pans beyond the flow's range,
    ``motion.py``)."""
    from data.demo_scenes import random_scene, render_scene

    for seed in seeds:
        for label, move in DEMO_MOVES.items():
            for speed in ("slow", "fast") if label != "static" else ("static",):
                n = int(round(seconds * DEMO_FPS[speed]))
                times = np.arange(n) / DEMO_FPS[speed]
                keep = sample_indices(times, MotionConfig().fps)
                spec = random_scene(np.random.default_rng(seed), num_frames=n, speed=speed, text=False, pan=False)
                spec = dataclasses.replace(spec, speed=speed, background="noise", shapes=spec.shapes[:1], **move)
                frames = render_scene(spec, size=size)[keep]
                yield Shot(f"demo{seed}_{label}_{speed}", "synthetic", label, (0.0, 0.0, 0.0), frames, times[keep])


def _ordered(groups: dict[str, dict[tuple[str, float], dict]]) -> bool:
    """Whether every derived group orders its moves by the fields (fast left < slow left < static < ...)."""
    chains = (("camera_tx", "pan_left", "pan_right"), ("camera_ty", "tilt_down", "tilt_up"),
              ("camera_zoom", "zoom_out", "zoom_in"))  # fmt: skip
    for g in groups.values():
        for key, neg, pos in chains:
            slow_fast = PAN_SPEEDS if key != "camera_zoom" else ZOOM_SPEEDS
            keys = [(neg, v) for v in reversed(slow_fast)] + [("static", 0.0)] + [(pos, v) for v in slow_fast]
            values = [g[k][key] for k in keys]
            if not all(a < b for a, b in zip(values, values[1:], strict=False)):
                return False
    return True


def camera_rows(
    folder: str | Path, motion: MotionConfig, camera: CameraMotionConfig, *, demo_seeds: range = range(6)
) -> list[tuple[Shot, dict]]:
    """Every shot (derived, static real, synthetic; pixels dropped) with the camera fields measured on it."""
    rows = []
    for shots in (derived_shots(folder), static_shots(folder), demo_shots(demo_seeds)):
        rows += [(dataclasses.replace(shot, frames=shot.frames[:0]), measure(shot, motion, camera)) for shot in shots]
    return rows


def summarize(rows: list[tuple[Shot, dict]]) -> dict[str, object]:
    """``scripts/eval_curation.py``'s camera figures from ``camera_rows``: label accuracy overall, per kind of shot
    (derived real pans and zooms, static real shots, synthetic demo scenes) and per true label, whether the numeric
    fields order every derived group's moves by speed, and the shots labelled wrong."""
    groups: dict[str, dict[tuple[str, float], dict]] = {}
    for shot, fields in rows:
        if shot.group:
            groups.setdefault(shot.group, {})[shot.label, shot.speed] = fields

    def accuracy(sel: list[tuple[Shot, dict]]) -> float | None:
        return round(sum(f["camera_motion"] == s.label for s, f in sel) / len(sel), 4) if sel else None

    kinds = ("derived", "static_real", "synthetic")
    return {
        "camera_accuracy": accuracy(rows),
        "camera_accuracy_per_kind": {k: accuracy([r for r in rows if r[0].kind == k]) for k in kinds},
        "camera_accuracy_per_label": {lab: accuracy([r for r in rows if r[0].label == lab]) for lab in DEMO_MOVES},
        "camera_order_ok": _ordered(groups),
        "camera_shots": len(rows),
        "camera_wrong": [f"{s.name}: {f['camera_motion']}" for s, f in rows if f["camera_motion"] != s.label],
    }


def score_camera(folder: str | Path, motion: MotionConfig, camera: CameraMotionConfig) -> dict[str, object]:
    """``summarize(camera_rows(...))``; empty when ``folder`` is not the calibration set (lacks ``cuts/truth.json``
    or one of the clips the shots are made of)."""
    needed = ["cuts/truth.json", *(p for p, _ in PAN_SOURCES), *STATIC_SHOTS, *STATIC_CLIPS]
    if not all((Path(folder) / p).is_file() for p in needed):
        return {}
    return summarize(camera_rows(folder, motion, camera))
