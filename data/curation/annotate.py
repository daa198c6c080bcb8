"""One raw video -> annotated clips: probe, one decode pass (the cut cascade and every annotator's scan tap),
keyframe-aware clipping, then each registered annotator (``annotators.py``: motion, text area, captions, CLIP scores)
on each clip, from the clip's first/middle/last frames or its video's taps.

``Annotators`` holds the built annotators (with their models); build it once per process. Every failure is an input
problem (``CurationSkip``) or an annotator problem (``annotator_error``): counted, logged in one line naming the
video, never raised to the run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.curation.annotators import Annotator, ClipContext, registered
from data.curation.clipping import ClipSpan, ClipWriteResult, copy_points, copy_points_of, plan_clips, write_clip
from data.curation.config import AnnotateConfig
from data.curation.cuts import CutCascade
from data.curation.errors import CurationSkip
from data.curation.inputs import RawVideo
from data.curation.keyframes import first_middle_last, read_frames
from data.curation.probe import notes_for, probe_video
from data.curation.scan import scan_video

log = logging.getLogger(__name__)
THUMB_SHORT_SIDE = 96


@dataclass
class Annotators:
    """The annotators a process runs, built once from the config: the enabled registered ones, in registry order."""

    cfg: AnnotateConfig
    items: list[Annotator] = field(default_factory=list)

    @classmethod
    def build(cls, cfg: AnnotateConfig) -> Annotators:
        return cls(cfg, [annotator(cfg) for annotator in registered() if annotator.enabled(cfg)])


@dataclass
class Clip:
    key: str
    mp4: bytes
    record: dict[str, Any]
    thumb: np.ndarray  # (h, w, 3) uint8, the middle frame at THUMB_SHORT_SIDE


@dataclass
class VideoOutcome:
    clips: list[Clip] = field(default_factory=list)
    skips: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)
    problems: list[dict[str, str]] = field(default_factory=list)  # {"source", "reason", "detail"}

    def skip(self, raw: RawVideo, reason: str, detail: str) -> None:
        self.skips[reason] += 1
        self.problems.append({"source": raw.source, "reason": reason, "detail": detail})
        log.warning("skipped %s: %s%s", raw.source, reason, f" ({detail})" if detail else "")


def thumbnail(frame: np.ndarray, short_side: int = THUMB_SHORT_SIDE) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(np.ascontiguousarray(frame), size, interpolation=cv2.INTER_AREA)


def _clip_record(
    raw: RawVideo, key: str, index: int, span: ClipSpan, written: ClipWriteResult, method_note: list[str]
) -> dict[str, Any]:
    return {
        "key": key,
        "source": raw.source,
        "video_key": raw.key,
        "clip_index": index,
        "start_s": round(span.start_s, 6),
        "end_s": round(span.end_s, 6),
        "start_frame": span.start_frame,
        "end_frame": span.end_frame,
        "duration_s": round(span.end_s - span.start_s, 6),
        "num_frames": written.num_frames,
        "fps": round(float(written.fps), 6),
        "width": written.width,
        "height": written.height,
        "cut_method": written.method,
        "notes": method_note,
    }


def _annotate_clip(
    annotators: Annotators, record: dict[str, Any], clip_path: str, raw: RawVideo, taps: dict[str, Any]
) -> np.ndarray:
    """Fill the clip's annotations into ``record``; returns the middle frame's thumbnail."""
    frames = read_frames(clip_path, list(first_middle_last(record["num_frames"])))
    clip = ClipContext(raw, record, frames, taps=taps)
    if raw.caption:
        record["caption"] = raw.caption
        clip.captions["source"] = raw.caption
    record["captions"] = clip.captions
    for annotator in annotators.items:
        annotator.annotate(clip)
    if "caption" not in record and clip.captions:
        record["caption"] = next(iter(clip.captions.values()))
    return thumbnail(frames[1])


def _materialise(raw: RawVideo, tmpdir: str) -> str:
    if raw.path is not None:
        return raw.path
    assert raw.data is not None
    path = os.path.join(tmpdir, f"source.{raw.ext}")
    with open(path, "wb") as f:
        f.write(raw.data)
    return path


def curate_video(raw: RawVideo, annotators: Annotators) -> VideoOutcome:
    """Cut and annotate one raw video. Never raises for bad input: see ``VideoOutcome.skips``."""
    out = VideoOutcome()
    if raw.problem is not None:
        out.skip(raw, "unreadable", raw.problem)
        return out
    cfg = annotators.cfg
    with tempfile.TemporaryDirectory(prefix="curate-") as tmpdir:
        try:
            path = _materialise(raw, tmpdir)
            info = probe_video(path)
            min_frames = cfg.clipping.min_frames(info.fps)  # plan_clips' shortest clip
            if info.num_frames < min_frames:
                raise CurationSkip(
                    "too_short", f"{info.num_frames} frames ({info.duration_s:.2f} s), minimum clip {min_frames}"
                )
            notes = list(notes_for(info))
            out.notes.update(notes)
            cascade = CutCascade(cfg.cuts)
            taps = {a.name: a.tap() for a in annotators.items if a.needs == "scan"}
            stats = scan_video(path, info, [*cascade.taps, *taps.values()], threads=cfg.decode_threads)
            if stats.frames_decoded < 2:
                reason = "undecodable" if stats.frames_decoded == 0 else "single_frame"
                raise CurationSkip(reason, stats.error or f"{stats.frames_decoded} frame(s) decoded")
            if not stats.complete:  # a truncated or damaged stream: the clips come from the part that decoded
                out.notes["truncated"] += 1
                notes.append("truncated")
                log.warning("%s: decoding stopped after %d frames (%s)", raw.source, stats.frames_decoded, stats.error)
            cuts = cascade.result(info)
            points = copy_points(path) if info.packets is None else copy_points_of(info.packets)  # no second demux
            keyframes = [points.times_s[i] for i in points.starts]
            spans = plan_clips(
                cuts, info, keyframes, cfg.clipping, frame_times=stats.frame_times_s, copy_ends=points.ends
            )
            if not spans and stats.frames_decoded < min_frames:  # a cut-off file: too little of it decoded
                raise CurationSkip("too_short", f"{stats.frames_decoded} frames decoded, minimum clip {min_frames}")
            if not spans:
                scene_s = [round((b - a) / info.fps, 2) for a, b in cuts.scenes]
                raise CurationSkip("no_clips", f"scenes of {scene_s} s, minimum clip {min_frames / info.fps:.2f} s")
        except CurationSkip as e:
            out.skip(raw, e.reason, e.detail)
            return out
        for i, span in enumerate(spans):
            key = f"{raw.key}_{i:04d}"
            clip_path = os.path.join(tmpdir, f"clip_{i:04d}.mp4")
            try:
                written = write_clip(path, span, clip_path, info=info, cfg=cfg.clipping)
                if written.method == "reencode":
                    out.notes["reencoded"] += 1
                record = _clip_record(raw, key, i, span, written, notes)
                thumb = _annotate_clip(annotators, record, clip_path, raw, taps)
                record["source_meta"] = raw.source_meta
                out.clips.append(Clip(key, Path(clip_path).read_bytes(), record, thumb))
            except CurationSkip as e:
                out.skip(raw, e.reason, f"clip {i}: {e.detail}")
            except Exception as e:  # noqa: BLE001 - one bad clip must not stop the run; the reason is kept
                last = traceback.format_exception_only(type(e), e)[-1].strip()
                out.skip(raw, "annotator_error", f"clip {i}: {last}")
    return out


def clip_members(clip: Clip) -> dict[str, bytes]:
    """The clip's members in the video2dataset layout (``KEY.mp4``, ``KEY.json``, ``KEY.txt``)."""
    members = {"mp4": clip.mp4, "json": (json.dumps(clip.record, sort_keys=True) + "\n").encode("utf-8")}
    caption = clip.record.get("caption")
    if caption:
        members["txt"] = caption.encode("utf-8")
    return members
