"""What shot detection returns, whatever detector produced it (the cascade in ``cuts.py``, TransNetV2 in
``transnet.py``): transitions and the scenes between them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

TransitionKind = Literal["cut", "crossfade", "fade"]


@dataclass(frozen=True)
class Transition:
    """``frame`` = first frame of the new scene; ``[start_frame, end_frame)`` = frames of neither scene (empty for a
    cut); ``detectors`` = names of the detectors that fired (``DetectorSpec.name``, ``"transnetv2"``)."""

    frame: int
    start_frame: int
    end_frame: int
    kind: TransitionKind
    detectors: tuple[str, ...]


@dataclass(frozen=True)
class CutResult:
    scenes: list[tuple[int, int]]  # [start_frame, end_frame) of the parts between transitions, native indices
    transitions: list[Transition]
    num_frames: int  # frames the scan decoded (scenes cover [0, num_frames) minus the transition spans)
    rejected: list[tuple[Transition, str]] = field(default_factory=list)  # detections judged in-shot, and why


def scenes_between(transitions: Sequence[Transition], num_frames: int) -> list[tuple[int, int]]:
    """[start, end) of the parts of ``[0, num_frames)`` outside the transitions' spans (ordered by frame)."""
    scenes, pos = [], 0
    for t in transitions:
        if t.start_frame > pos:
            scenes.append((pos, t.start_frame))
        pos = max(pos, t.end_frame)
    if num_frames > pos:
        scenes.append((pos, num_frames))
    return scenes
