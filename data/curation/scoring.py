"""Score the curation against labelled footage: cuts, text area and motion order (``scripts/eval_curation.py``).

The labelled folder has the layout of the project's calibration set (``cuts/``, ``text/``, ``motion/``, each with a
``truth.json``; any of the three may be absent). The truth format, as the README documents it:

- ``cuts/truth.json``: ``{file: {fps, frame_count, transitions: [{kind: cut|crossfade|fade, start_frame,
  end_frame}], in_shot_events: [{start_frame, end_frame, what}]}}``. ``start_frame`` is the last unmodified frame of
  the outgoing shot, ``end_frame`` the first unmodified frame of the incoming one (a cut: ``end_frame = start_frame
  + 1``). ``in_shot_events`` mark strong change inside a shot (occlusions, flashes, exposure changes): no boundary.
- ``text/truth.json``: ``{file: {has_text, text_area_fraction, ...}}`` for still images.
- ``motion/truth.json``: ``{order_slow_to_fast: [file, ...]}`` for single-shot clips.

Matching rules (``match_transitions``): a detection at frame ``p`` (the first frame of the new shot,
``Transition.frame``) hits a cut when ``|p - end_frame| <= tolerance`` (2 frames) and a gradual transition (crossfade
or fade) when ``start_frame < p <= end_frame``; each transition takes at most one detection and each detection hits
at most one transition (the closest pairs are matched first). Every detection left over is a *false transition*:
inside a shot, inside an ``in_shot_event``, or a second detection of one transition (a fade split in two), since
each of them splits a shot and loses the frames around it.

Text: an image *has text* when its text area exceeds ``text_threshold``, by default the absolute ``text_area`` bound
of the ``high_quality`` filter set (the strictest text rule the curation applies, ``conf/curate/filters/``), so the
accuracy says how often that filter would decide right.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.curation.config import AnnotateConfig
from data.curation.cuts import detect_cuts
from data.curation.motion import MotionConfig, MotionTap
from data.curation.probe import probe_video
from data.curation.scan import scan_video
from data.curation.text_area import TextAreaDetector

CUT_TOLERANCE = 2  # frames either side of a cut's end_frame that still hit it
GRADUAL_KINDS = ("crossfade", "fade")


@dataclass(frozen=True)
class TransitionMatch:
    """The outcome of matching one video's detections (frames) against its labelled transitions."""

    hits: list[tuple[int, int]]  # (truth index, detection index)
    missed: list[int]  # truth indices without a detection
    false: list[int]  # detection indices that hit no transition


def _hit_distance(p: int, gt: Mapping[str, Any], tolerance: int) -> float | None:
    """How far detection ``p`` is from transition ``gt`` (None: it does not hit it)."""
    start, end = int(gt["start_frame"]), int(gt["end_frame"])
    if gt["kind"] == "cut":
        return float(abs(p - end)) if abs(p - end) <= tolerance else None
    if gt["kind"] not in GRADUAL_KINDS:
        raise ValueError(f"transition kind must be cut, crossfade or fade; got {gt['kind']!r}")
    return abs(p - (start + end) / 2) / max(end - start, 1) if start < p <= end else None


def match_transitions(
    detections: Sequence[int], truth: Sequence[Mapping[str, Any]], *, tolerance: int = CUT_TOLERANCE
) -> TransitionMatch:
    """One-to-one matching of detected boundary frames to labelled transitions (module docstring for the rules)."""
    pairs = []
    for i, gt in enumerate(truth):
        for j, p in enumerate(detections):
            d = _hit_distance(int(p), gt, tolerance)
            if d is not None:
                pairs.append((d, i, j))
    hits, used_truth, used_det = [], set(), set()
    for _, i, j in sorted(pairs):
        if i not in used_truth and j not in used_det:
            hits.append((i, j))
            used_truth.add(i)
            used_det.add(j)
    missed = [i for i in range(len(truth)) if i not in used_truth]
    false = [j for j in range(len(detections)) if j not in used_det]
    return TransitionMatch(sorted(hits), missed, false)


def where_in_truth(frame: int, entry: Mapping[str, Any]) -> str:
    """A short description of where a false detection lies: inside an in-shot event (its ``what``), or a shot."""
    for event in entry.get("in_shot_events", ()):
        if int(event["start_frame"]) - CUT_TOLERANCE <= frame <= int(event["end_frame"]) + CUT_TOLERANCE:
            return f"in-shot event: {event.get('what', '?')}"
    for gt in entry.get("transitions", ()):
        if int(gt["start_frame"]) - CUT_TOLERANCE <= frame <= int(gt["end_frame"]) + CUT_TOLERANCE:
            return f"second detection of the {gt['kind']} at {gt['start_frame']}-{gt['end_frame']}"
    return "inside a shot"


def prf(hits: int, detections: int, truths: int) -> dict[str, float]:
    """Precision, recall and F1 (1.0 where nothing was there to find or to be wrong about)."""
    precision = hits / detections if detections else 1.0
    recall = hits / truths if truths else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-a between two rankings of the same items (1 = same order, -1 = reversed)."""
    n = len(a)
    if n != len(b) or n < 2:
        raise ValueError(f"need two sequences of equal length >= 2; got {len(a)} and {len(b)}")
    s = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i in range(n) for j in range(i + 1, n))
    return float(s) / (n * (n - 1) / 2)


def load_truth(folder: str | Path, part: str) -> dict[str, Any] | None:
    """``<folder>/<part>/truth.json``, or None when the folder has no such part."""
    path = Path(folder) / part / "truth.json"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclass
class CutScore:
    per_file: dict[str, dict[str, Any]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)  # per kind
    truths: Counter[str] = field(default_factory=Counter)
    detections: int = 0
    false: list[str] = field(default_factory=list)  # "file frame: where"
    video_s: float = 0.0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        total = prf(sum(self.hits.values()), self.detections, sum(self.truths.values()))
        return {
            "cut_precision": round(total["precision"], 4),
            "cut_recall": round(total["recall"], 4),
            "cut_f1": round(total["f1"], 4),
            "recall_per_kind": {k: round(self.hits[k] / n, 4) for k, n in sorted(self.truths.items())},
            "transitions": sum(self.truths.values()),
            "detections": self.detections,
            "false_transitions": len(self.false),
            "false_transition_list": self.false,
            "cut_s_per_video_s": round(self.wall_s / self.video_s, 4) if self.video_s else None,
        }


def score_cuts(folder: str | Path, detect: Callable[[Path], Sequence[int]]) -> CutScore | None:
    """Run ``detect(path) -> boundary frames`` on every video of ``<folder>/cuts`` and match against the truth."""
    truth = load_truth(folder, "cuts")
    if truth is None:
        return None
    score = CutScore()
    for name, entry in sorted(truth.items()):
        path = Path(folder) / "cuts" / name
        start = time.perf_counter()
        found = [int(p) for p in detect(path)]
        score.wall_s += time.perf_counter() - start
        score.video_s += int(entry["frame_count"]) / float(entry["fps"])
        transitions = entry.get("transitions", [])
        match = match_transitions(found, transitions)
        score.detections += len(found)
        for gt in transitions:
            score.truths[gt["kind"]] += 1
        for i, _ in match.hits:
            score.hits[transitions[i]["kind"]] += 1
        score.false += [f"{name} {found[j]}: {where_in_truth(found[j], entry)}" for j in match.false]
        score.per_file[name] = {
            "transitions": len(transitions),
            "hits": len(match.hits),
            "missed": [f"{transitions[i]['kind']}@{transitions[i]['end_frame']}" for i in match.missed],
            "false": [found[j] for j in match.false],
        }
    return score


def score_text(folder: str | Path, area: Callable[[np.ndarray], float], threshold: float) -> dict[str, Any] | None:
    """Text area of every image of ``<folder>/text``: accuracy of ``area > threshold`` against ``has_text``, and the
    area error on the images with text."""
    import cv2

    truth = load_truth(folder, "text")
    if truth is None:
        return None
    rows, right, errors, start = {}, 0, [], time.perf_counter()
    for name, entry in sorted(truth.items()):
        bgr = cv2.imread(str(Path(folder) / "text" / name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read image {Path(folder) / 'text' / name}")
        found = float(area(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        ok = (found > threshold) == bool(entry["has_text"])
        right += ok
        if entry["has_text"]:
            errors.append(found - float(entry["text_area_fraction"]))
        rows[name] = {
            "has_text": bool(entry["has_text"]),
            "truth": entry["text_area_fraction"],
            "found": found,
            "ok": ok,
        }
    return {
        "text_accuracy": round(right / len(truth), 4) if truth else None,
        "text_threshold": threshold,
        "text_area_mae": round(float(np.mean(np.abs(errors))), 4) if errors else None,
        "text_area_bias": round(float(np.mean(errors)), 4) if errors else None,
        "text_s_per_image": round((time.perf_counter() - start) / max(len(truth), 1), 4),
        "per_image": rows,
    }


def score_motion(folder: str | Path, motion: Callable[[Path], float | None]) -> dict[str, Any] | None:
    """Motion score of every clip of ``<folder>/motion``; right when it sorts them as ``order_slow_to_fast``."""
    truth = load_truth(folder, "motion")
    if truth is None:
        return None
    order = list(truth["order_slow_to_fast"])
    scores = {name: motion(Path(folder) / "motion" / name) for name in order}
    values = [-math.inf if scores[n] is None else float(scores[n]) for n in order]
    return {
        "motion_order_ok": all(a < b for a, b in zip(values, values[1:], strict=False)),
        "motion_kendall_tau": round(kendall_tau(values, list(range(len(order)))), 4) if len(order) > 1 else None,
        "motion_scores": {n: None if scores[n] is None else round(float(scores[n]), 4) for n in order},
    }


def text_area_bound(filter_file: str | Path) -> float:
    """The absolute ``text_area`` bound (``max``) of a filter-set file (``conf/curate/filters/<set>.yaml``)."""
    import yaml

    with open(filter_file, encoding="utf-8") as f:
        specs = yaml.safe_load(f)
    bounds = [f["max"] for f in specs.get("filters", []) if f.get("field") == "text_area" and f.get("max") is not None]
    if not bounds:
        raise ValueError(f"{filter_file} has no absolute text_area bound (max); pass the threshold explicitly")
    return float(bounds[0])


def _motion_of_file(cfg: MotionConfig) -> Callable[[Path], float | None]:
    def score(path: Path) -> float | None:
        tap = MotionTap(cfg)
        scan_video(path, probe_video(path), [tap], threads=1)
        return tap.clip_score(-math.inf, math.inf)

    return score


def evaluate(folder: str | Path, cfg: AnnotateConfig, *, text_threshold: float) -> dict[str, Any]:
    """Every figure of ``scripts/eval_curation.py`` for the labelled ``folder`` under the annotation config ``cfg``:
    cuts with ``cfg.cuts``, text with ``cfg.text``, motion with ``cfg.motion`` and, unless that is already the
    paper's rate, at 2 fps too (keys suffixed ``_2fps``)."""
    out: dict[str, Any] = {"folder": str(folder), "detector": cfg.cuts.detector}
    cuts = score_cuts(
        folder, lambda p: [t.frame for t in detect_cuts(p, probe_video(p), cfg.cuts, threads=1).transitions]
    )
    if cuts is not None:
        out.update(cuts.summary())
        out["cuts_per_file"] = cuts.per_file
    if cfg.text_area and (Path(folder) / "text" / "truth.json").is_file():
        out.update(score_text(folder, TextAreaDetector(cfg.text).area_fraction, text_threshold) or {})
    motion = score_motion(folder, _motion_of_file(cfg.motion))
    if motion is not None:
        out.update(motion)
        if cfg.motion.fps != 2:
            paper = score_motion(folder, _motion_of_file(dataclasses.replace(cfg.motion, fps=2.0)))
            out.update({f"{k}_2fps": v for k, v in (paper or {}).items()})
    return out
