"""Micro-conditioning values of a sample: ``fps_id`` from the clip's frame rate, ``motion_bucket_id`` from its motion.

fps_id
    ``fps_id = round(effective_fps) + fps_id_offset`` with ``effective_fps = native_fps / stride`` (the rate of
    the frames the model actually sees) and ``fps_id_offset = -1`` by default: the official streamlit demo sets
    ``fps_id = fps - 1`` and diffusers documents "SVD was conditioned on fps - 1" (RECIPE section 2). Set the
    offset to 0 to condition on the raw fps, as ``simple_video_sample.py`` effectively does with ``fps_id=6``.
    Values are floored at ``min_fps_id`` (0).

motion_bucket_id
    The paper conditions on "the input video's ... motion score" but never published how the optical-flow score
    becomes a bucket id (RECIPE section 2; open upstream issues). Ours is explicit and configurable. The score is
    read from the sample's json (``motion_score_key``, a dotted path such as ``"motion_score"`` or
    ``"flow.mean"``) and is what the curation writes (``data/curation/motion.py``): the mean Farneback flow
    magnitude between frames sampled at 4 fps, averaged down to a flow map with a 16-pixel short side, in pixels
    of that map per second. It does not depend on the video's resolution or frame rate; a pan of 1/16 of the
    frame's short side per second scores 1. ``MotionBucketMapping`` maps it:

    - ``kind="log"`` (default): ``bucket = round(offset + scale * log1p(score))``, which spreads out the many
      slow clips and compresses the few very fast ones;
    - ``kind="linear"``: ``bucket = round(offset + scale * score)``;

    clipped to ``[0, max_bucket]`` (255: the official sampling script warns above it). Our default is log with
    ``scale = 90``: static clips land at 0, a score of 1 (a slow drift) at 62, 3.1 (about a fifth of the frame
    per second, moderate motion) at the inference default 127, 8 at 198, and 16 (a whole short side per second)
    saturates at 255. Recalibrate from your data if you like (e.g. so the median score maps to 127) and keep
    the mapping with the checkpoint, since sampling must use the same one. A json without a motion score gets
    ``default_motion_bucket`` (127) and is reported as such so the stream can count it. Image samples get
    ``default_fps_id`` and ``default_motion_bucket``.

The inverses (``fps_from_id``, ``MotionBucketMapping.score``) say which fps and score a chosen id stands for.

elevation
    Multi-view orbits (the mv task, ``train/task_multiview.py``) condition on the camera elevation in degrees, read
    as is from the json's ``elevation`` (``elevation_for``); a sample carries it when its json has it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from data.errors import BadSample

S = TypeVar("S", bound=Mapping[str, Any])


@dataclass(frozen=True)
class MotionBucketMapping:
    """Motion score (16-px flow-map pixels per second, see above) -> ``motion_bucket_id`` in ``[0, max_bucket]``."""

    kind: Literal["linear", "log"] = "log"
    scale: float = 90.0
    offset: float = 0.0
    max_bucket: int = 255

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "log"):
            raise ValueError(f'kind must be "linear" or "log"; got {self.kind!r}')
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number (buckets per unit of score); got {self.scale}")
        if self.max_bucket < 1:
            raise ValueError(f"max_bucket must be >= 1 (SVD uses 255); got {self.max_bucket}")

    def bucket(self, score: float) -> int:
        """The bucket id of a motion score; negative or NaN scores count as no motion."""
        if math.isnan(score) or score <= 0:
            score = 0.0
        elif math.isinf(score):
            return self.max_bucket
        raw = self.offset + self.scale * (score if self.kind == "linear" else math.log1p(score))
        return int(min(self.max_bucket, max(0, round(raw))))

    def score(self, bucket: int) -> float:
        """The motion score a bucket id stands for (the inverse, exact at bucket centres inside the range)."""
        if not 0 <= bucket <= self.max_bucket:
            raise ValueError(f"bucket must be in [0, {self.max_bucket}]; got {bucket}")
        x = max(0.0, (bucket - self.offset) / self.scale)
        return x if self.kind == "linear" else math.expm1(x)


@dataclass(frozen=True)
class MicroCondConfig:
    fps_id_offset: int = -1
    min_fps_id: int = 0
    motion: MotionBucketMapping = field(default_factory=MotionBucketMapping)
    motion_score_key: str = "motion_score"
    default_motion_bucket: int = 127  # the inference default; used when a json has no motion score
    default_fps_id: int = 6  # images: the diffusers default fps 7 with the -1 convention

    def __post_init__(self) -> None:
        if not 0 <= self.default_motion_bucket <= self.motion.max_bucket:
            raise ValueError(
                f"default_motion_bucket must be in [0, {self.motion.max_bucket}]; got {self.default_motion_bucket}"
            )
        if not self.motion_score_key:
            raise ValueError('motion_score_key must name a json field, e.g. "motion_score"')


def fps_id_for(effective_fps: float, cfg: MicroCondConfig) -> int:
    """``round(effective_fps) + fps_id_offset``, floored at ``min_fps_id``."""
    if not (math.isfinite(effective_fps) and effective_fps > 0):
        raise ValueError(f"effective_fps must be a positive number; got {effective_fps}")
    return max(cfg.min_fps_id, round(effective_fps) + cfg.fps_id_offset)


def fps_from_id(fps_id: int, cfg: MicroCondConfig) -> int:
    """The (rounded) frame rate an ``fps_id`` stands for: the inverse of ``fps_id_for`` above the floor."""
    return fps_id - cfg.fps_id_offset


def lookup(meta: Mapping[str, Any], dotted_key: str) -> Any:
    """``meta["a"]["b"]`` for ``"a.b"``; None when any level is missing or not a mapping."""
    node: Any = meta
    for part in dotted_key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


ELEVATION_FIELD = "elevation"


def elevation_for(meta: Mapping[str, Any] | None) -> float | None:
    """The json's camera ``elevation`` in degrees; None when absent. ``BadSample("invalid_json")`` (the stream
    skips and counts it) when it is not a finite number."""
    value = meta.get(ELEVATION_FIELD) if meta is not None else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadSample("invalid_json", f"{ELEVATION_FIELD!r} must be a finite number of degrees; got {value!r}")
    return float(value)


def with_elevation(sample: S, meta: Mapping[str, Any] | None) -> S:
    """``sample`` with ``elevation`` set from the json when it has one."""
    elevation = elevation_for(meta)
    if elevation is not None:
        sample[ELEVATION_FIELD] = elevation  # type: ignore[index]
    return sample


def motion_bucket_for(meta: Mapping[str, Any] | None, cfg: MicroCondConfig) -> tuple[int, bool]:
    """``(motion_bucket_id, used_default)`` from a sample's json; the default when the score is absent or bad."""
    score = lookup(meta, cfg.motion_score_key) if meta is not None else None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        return cfg.default_motion_bucket, True
    return cfg.motion.bucket(float(score)), False
