"""Does a generated demo video keep the conditioning frame's object, one object of the same size moving smoothly?

The demo's image-to-video sample starts from frame 0 of a clip of the demo-data generator (``data/demo_data.py``),
so the scene is known: its shapes, colours, sizes and motion. ``clip_truth`` renders the clip's frames the sample
stands for (every ``stride``-th frame, resized and cropped like the training frames) and picks the object to
track: the largest shape whose colour no other shape and not the background has.

Per frame, the object mask is the pixels within ``colour_threshold`` (RGB distance) of the object's colour at any
shade in ``[SHADE_MIN, 1]`` (the generator's textures darken a shape to 0.55 of its colour). Its connected components
(8-connected) smaller than ``speck_fraction`` of frame 0's mask are specks and leave the mask; what stays gives the
area, the centroid and the number of components. A decoder shifts colours (the demo's tiny VAE turns yellow
orange), so a generated video is masked with the object's colour as its own frame 0 shows it: the median, over the
object's known frame-0 footprint, of the pixel divided by the clip's texture shade there (``observed_colour``). Its
distance from the generator's colour is reported as ``colour_shift``.

Criteria (``CoherenceCriteria``; issue 16): every frame's area within +-``area_tolerance`` of frame 0's; one object
in every frame; a smooth path, the largest second difference of the centroid ``|c[t+1] - 2 c[t] + c[t-1]|`` at
most ``max_jerk`` of the frame's short side; frame 0 shows the object where the conditioning frame has it; and,
where the clip moves, the object moves along the clip's direction by at least ``min_motion`` of the clip's
displacement (so a frozen video does not pass). The rendered clip itself must meet them (``check_video`` raises
otherwise: the clip, the stride or the frame count is unfit for the check).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.demo_data import GENERATOR_VERSION, clip_scene
from data.demo_scenes import COLORS, SceneSpec, ShapeSpec, render_scene
from data.transforms import resize_and_crop

SHADE_MIN = 0.5  # darkest shade of a shape's colour the mask accepts (textures go down to 0.55)


@dataclass(frozen=True)
class CoherenceCriteria:
    colour_threshold: float = 60.0  # RGB distance to the shaded object colour
    speck_fraction: float = 0.1  # components below this fraction of frame 0's mask are specks
    area_tolerance: float = 0.25  # every frame's area within +-25% of frame 0's
    max_components: int = 1
    max_jerk: float = 0.05  # largest centroid second difference, as a fraction of the short side
    max_start_offset: float = 0.1  # frame-0 centroid vs the conditioning frame's, fraction of the short side
    max_start_area_ratio: float = 2.0  # frame-0 area within [1/r, r] of the conditioning frame's
    min_motion: float = 0.25  # displacement along the clip's direction, fraction of the clip's displacement


@dataclass(frozen=True)
class FrameFigures:
    area: int
    cx: float
    cy: float
    components: int


@dataclass(frozen=True)
class ClipRef:
    """One clip of a demo data set: the generator's seed and index, the clip's frame rate and size (W, H)."""

    seed: int
    index: int
    fps: float
    size: tuple[int, int]


@dataclass(frozen=True)
class ClipTruth:
    scene: SceneSpec
    shape: ShapeSpec  # the tracked object
    frames: np.ndarray  # (T, H, W, 3) uint8: the clip at the sample's stride and size
    stride: int


@dataclass
class CoherenceReport:
    frames: list[FrameFigures]
    reference: list[FrameFigures]  # the rendered clip
    colour: tuple[int, int, int]  # the generator's colour of the object
    observed_colour: tuple[int, int, int]  # frame 0's median inside the object's footprint
    figures: dict[str, Any]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> dict[str, Any]:
        """One JSON-able dict: the figures, the colours, pass/fail and why."""
        return {**self.figures, "colour": list(self.colour), "observed_colour": list(self.observed_colour),
                "passed": self.passed, "failures": self.failures}  # fmt: skip


def shaded_distance(frames: np.ndarray, colour: tuple[int, int, int] | np.ndarray) -> np.ndarray:
    """(..., 3) pixels -> RGB distance to the nearest shade ``s * colour``, ``s`` in ``[SHADE_MIN, 1]``."""
    c = np.asarray(colour, np.float32)
    p = frames.astype(np.float32)
    s = np.clip((p @ c) / float(c @ c), SHADE_MIN, 1.0)
    return np.linalg.norm(p - s[..., None] * c, axis=-1)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, areas) of the 8-connected components; areas[0] is the background."""
    import cv2  # imported here: nothing heavy at import time

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels, stats[:count, cv2.CC_STAT_AREA]


def measure(frames: np.ndarray, colour: Any, *, criteria: CoherenceCriteria) -> list[FrameFigures]:
    """Per-frame figures of the object mask of ``frames`` (T, H, W, 3) uint8 (see the module docstring)."""
    masks = shaded_distance(frames, colour) <= criteria.colour_threshold
    area0 = int(masks[0].sum())
    speck = max(2.0, criteria.speck_fraction * area0)
    out = []
    for mask in masks:
        labels, areas = _components(mask)
        kept = [i for i in range(1, len(areas)) if areas[i] >= speck]
        ys, xs = np.nonzero(np.isin(labels, kept))
        cx, cy = (float(xs.mean()), float(ys.mean())) if len(xs) else (float("nan"), float("nan"))
        out.append(FrameFigures(area=len(xs), cx=cx, cy=cy, components=len(kept)))
    return out


def path_figures(frames: list[FrameFigures]) -> dict[str, float]:
    """``max_jerk_px``: largest centroid second difference; ``line_residual_px``: largest distance from the
    least-squares constant-velocity path; ``displacement``: last minus first centroid (x, y)."""
    c = np.array([[f.cx, f.cy] for f in frames], np.float64)
    jerk = np.linalg.norm(c[2:] - 2 * c[1:-1] + c[:-2], axis=1) if len(c) > 2 else np.zeros(1)
    t = np.arange(len(c), dtype=np.float64)
    design = np.stack([np.ones_like(t), t], axis=1)
    if np.isfinite(c).all() and len(c) > 1:
        coef, *_ = np.linalg.lstsq(design, c, rcond=None)
        residual = float(np.linalg.norm(design @ coef - c, axis=1).max())
    else:
        residual = float("nan")
    return {"max_jerk_px": float(np.nanmax(jerk)) if np.isfinite(jerk).any() else float("nan"),
            "line_residual_px": residual, "displacement": (c[-1] - c[0]).tolist()}  # fmt: skip


def judge(frames: list[FrameFigures], reference: list[FrameFigures], *, short_side: int,
          criteria: CoherenceCriteria) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """(figures, failures) of ``frames`` against the criteria; ``reference`` (the rendered clip) gives the
    conditioning frame's object and the clip's motion."""
    area0 = frames[0].area
    ratios = [f.area / area0 if area0 else float("nan") for f in frames]
    path = path_figures(frames)
    expected = np.array(path_figures(reference)["displacement"])
    moved = np.array(path["displacement"])
    norm = float(np.linalg.norm(expected))
    along = float(moved @ expected / norm) if norm > 0 and np.isfinite(moved).all() else float("nan")
    start = float(np.hypot(frames[0].cx - reference[0].cx, frames[0].cy - reference[0].cy))
    figures = {
        "frames": len(frames),
        "area0": area0,
        "reference_area0": reference[0].area,
        "area_ratio_min": round(float(np.nanmin(ratios)), 4) if area0 else None,
        "area_ratio_max": round(float(np.nanmax(ratios)), 4) if area0 else None,
        "max_components": max(f.components for f in frames),
        "max_jerk_px": round(path["max_jerk_px"], 3),
        "line_residual_px": round(path["line_residual_px"], 3),
        "start_offset_px": round(start, 3),
        "displacement_px": [round(v, 3) for v in path["displacement"]],
        "expected_displacement_px": [round(float(v), 3) for v in expected],
        "motion_along_expected": round(along / norm, 4) if norm > 0 else None,
    }
    failures = []
    if not area0 or frames[0].components == 0:
        return figures, ["frame 0 shows no object of the object's colour"]
    tol = criteria.area_tolerance
    if not all(abs(r - 1.0) <= tol for r in ratios):
        failures.append(f"area ratio to frame 0 in [{figures['area_ratio_min']}, {figures['area_ratio_max']}], "
                        f"outside 1 +- {tol}")  # fmt: skip
    if figures["max_components"] > criteria.max_components:
        failures.append(f"{figures['max_components']} objects in a frame (at most {criteria.max_components})")
    if not path["max_jerk_px"] <= criteria.max_jerk * short_side:
        failures.append(f"centroid path not smooth: second difference {figures['max_jerk_px']} px > "
                        f"{criteria.max_jerk * short_side:.2f} px")  # fmt: skip
    if not start <= criteria.max_start_offset * short_side:
        failures.append(f"frame 0's object is {start:.1f} px from the conditioning frame's")
    r = criteria.max_start_area_ratio
    if not 1 / r <= area0 / max(reference[0].area, 1) <= r:
        failures.append(f"frame 0's object has {area0} px, the conditioning frame's {reference[0].area}")
    if norm > 0 and not along >= criteria.min_motion * norm:
        failures.append(f"moves {along:.1f} px along the clip's direction, less than {criteria.min_motion} of "
                        f"the clip's {norm:.1f} px")  # fmt: skip
    return figures, failures


def observed_colour(
    frame: np.ndarray, truth_frame: np.ndarray, colour: tuple[int, int, int], *, threshold: float
) -> tuple[int, int, int]:
    """The object's full-shade colour as ``frame`` shows it: the median of its pixels divided by the texture shade
    the clip has there, over the object's footprint in ``truth_frame``; ``colour`` when the footprint is empty."""
    footprint = shaded_distance(truth_frame, colour) <= threshold
    if not footprint.any():
        return colour
    c = np.asarray(colour, np.float32)
    shade = np.clip((truth_frame[footprint].astype(np.float32) @ c) / float(c @ c), SHADE_MIN, 1.0)
    median = np.median(frame[footprint].astype(np.float32) / shade[:, None], axis=0)
    return tuple(int(round(v)) for v in np.clip(median, 0, 255))  # type: ignore[return-value]


def tracked_shape(scene: SceneSpec) -> ShapeSpec:
    """The largest shape whose colour no other shape and not the background has."""
    colours = [s.color for s in scene.shapes]
    unique = [s for s in scene.shapes if colours.count(s.color) == 1 and s.color != scene.bg_color]
    if not unique:
        raise ValueError(f"no shape of its own colour to track in {scene}; pick another demo clip")
    return max(unique, key=lambda s: s.size)


def clip_truth(ref: ClipRef, *, size: tuple[int, int], stride: int, num_frames: int) -> ClipTruth:
    """Frames ``0, stride, ...`` of clip ``ref`` rendered at its own size, then resized and cropped to ``size``
    (W, H) as the training frames are."""
    scene = clip_scene(ref.seed, ref.index, fps=ref.fps)
    span = (num_frames - 1) * stride + 1
    if span > scene.num_frames:
        raise ValueError(f"clip {ref.index} has {scene.num_frames} frames, fewer than {num_frames} at stride {stride}")
    frames = render_scene(dataclasses.replace(scene, num_frames=span), size=ref.size)[::stride]
    x = resize_and_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), size=(size[1], size[0]))
    return ClipTruth(scene, tracked_shape(scene), x.permute(0, 2, 3, 1).numpy(), stride)


def check_video(frames: np.ndarray, truth: ClipTruth, *, criteria: CoherenceCriteria | None = None) -> CoherenceReport:
    """Judge ``frames`` (T, H, W, 3) uint8, a video generated from ``truth.frames[0]``."""
    criteria = criteria or CoherenceCriteria()
    if frames.ndim != 4 or len(frames) < 3:
        raise ValueError(f"video of shape {frames.shape}: need (T, H, W, 3) with T >= 3 frames for a path")
    if frames.shape[1:] != truth.frames.shape[1:] or len(frames) != len(truth.frames):
        raise ValueError(f"video is {frames.shape}, the clip truth {truth.frames.shape}: pass the sample's size and "
                         "frame count")  # fmt: skip
    colour = COLORS[truth.shape.color]
    short = min(frames.shape[1:3])
    reference = measure(truth.frames, colour, criteria=criteria)
    ref_figures, ref_failures = judge(reference, reference, short_side=short, criteria=criteria)
    if ref_failures:
        raise ValueError(f"the clip itself fails the check ({'; '.join(ref_failures)}): its object leaves the frame "
                         "or splits at this stride and length; use another clip or a higher --fps")  # fmt: skip
    observed = observed_colour(frames[0], truth.frames[0], colour, threshold=criteria.colour_threshold / 2)
    figures_list = measure(frames, observed, criteria=criteria)
    figures, failures = judge(figures_list, reference, short_side=short, criteria=criteria)
    figures["colour_shift"] = round(float(shaded_distance(np.asarray(observed, np.float32), colour)), 2)
    figures["stride"] = truth.stride
    figures["object"] = f"{truth.shape.color} {truth.shape.kind}"
    return CoherenceReport(figures_list, reference, colour, observed, figures, failures)


def locate_clip(demo_data: str | Path, *, key: str | None = None, image: str | Path | None = None) -> ClipRef:
    """The clip of a demo data set (``scripts/make_demo_data.py --out``) by shard key, or by a conditioning image
    ``clip_NNNNN.png`` (its pixels must be that clip's frame 0)."""
    root = Path(demo_data)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError(f"no manifest.json in {root}; pass the folder scripts/make_demo_data.py wrote")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("generator_version") != GENERATOR_VERSION:
        raise ValueError(f"{root} was written by generator version {manifest.get('generator_version')}, this code "
                         f"renders version {GENERATOR_VERSION}; rewrite it with scripts/make_demo_data.py")  # fmt: skip
    fps, size = float(manifest["fps"]), (int(manifest["size"][0]), int(manifest["size"][1]))
    if (key is None) == (image is None):
        raise ValueError("pass exactly one of key (a clip's shard key) and image (a conditioning clip_NNNNN.png)")
    if key is not None:
        generator = _generator_of_key(root, manifest, key)
        return ClipRef(int(generator["seed"]), int(generator["index"]), fps, size)
    match = re.fullmatch(r"clip_(\d+)\.png", Path(image).name)  # type: ignore[arg-type]
    if match is None:
        raise ValueError(f"{image} is not named clip_NNNNN.png; pass the clip's shard key instead")
    ref = ClipRef(int(manifest["seed"]), int(match.group(1)), fps, size)
    from PIL import Image

    with Image.open(image) as img:  # type: ignore[arg-type]
        pixels = np.asarray(img.convert("RGB"))
    first = render_scene(dataclasses.replace(clip_scene(ref.seed, ref.index, fps=fps), num_frames=1), size=size)[0]
    if pixels.shape != first.shape or np.abs(pixels.astype(int) - first).max() > 2:
        raise ValueError(f"{image} is not frame 0 of clip {ref.index} of {root}")
    return ref


def _generator_of_key(root: Path, manifest: dict[str, Any], key: str) -> dict[str, Any]:
    import webdataset as wds

    urls = [str(root / p) for p in manifest["shards"]["clips"]]
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        if sample["__key__"] == key:
            generator = json.loads(sample["json"])["generator"]
            if generator.get("kind") != "clip" or generator.get("version") != GENERATOR_VERSION:
                raise ValueError(f"{key}: generator {generator} is not a clip of version {GENERATOR_VERSION}")
            return generator
    raise ValueError(f"no clip with key {key!r} in {root}/clips")


def read_frames(path: str | Path) -> np.ndarray:
    """A GIF (PIL) or any video PyAV reads (mp4) -> (T, H, W, 3) uint8 RGB."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no video file at {path}")
    if path.suffix.lower() == ".gif":
        from PIL import Image, ImageSequence

        with Image.open(path) as img:
            return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(img)])
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
