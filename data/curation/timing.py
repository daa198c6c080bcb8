"""Timing instrumentation of ``curate_video`` (``scripts/bench_curation.py``): the real pipeline runs, each part is
timed inside it, and everything is restored afterwards.

- ``StageClock``: seconds per stage name, summed until ``take()``.
- ``instrumented(clock)``: swaps the names ``data.curation.annotate`` calls (``TIMED_CALLS``, ``scan_video``,
  ``CutCascade``) for timing wrappers around the same objects; inside the single decode pass every tap's ``push`` is
  timed too (``tap:<detector>``, ``tap:signal``).
- ``timed_annotators(annotators, clock)``: the built annotators with their work timed under their registry names:
  a scan annotator's tap pushes (so ``motion`` is the motion tap's share of the decode pass), every other
  annotator's per-clip ``annotate`` calls.
- ``plain_decode``: the baseline, every frame decoded with the scan's decoder settings and nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import av
import numpy as np

import data.curation.annotate as annotate
from data.curation.annotate import Annotators
from data.curation.annotators import Annotator, ClipContext
from data.curation.probe import VideoInfo
from data.curation.scene_detectors import DetectorTap
from data.curation.shot_signal import SignalTap

# curate_video's module-level names that are timed, and the stage each one's time goes to.
TIMED_CALLS = {
    "probe_video": "probe",
    "copy_points_of": "clipping",  # the copy points from the packets probe_video demuxed
    "copy_points": "clipping",  # its fallback, which demuxes the file again
    "plan_clips": "clipping",
    "write_clip": "clipping",
    "read_frames": "keyframes",
}


def plain_decode(path: str, threads: int) -> int:
    """Decode every frame with the scan's decoder settings, converting nothing; returns the frame count."""
    count = 0
    with av.open(path, mode="r") as container:
        stream = container.streams.video[0]
        if threads != 1:
            stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        for packet in container.demux(stream):  # the last (empty) packet flushes the decoder
            count += len(packet.decode())
    return count


class StageClock:
    """Seconds per stage, summed over calls until ``take()``."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        return timed

    def take(self) -> dict[str, float]:
        out, self.seconds = dict(self.seconds), defaultdict(float)
        return out


class TimedTap:
    """A ``FrameTap`` forwarding to ``tap`` (and its optional ``begin``) that times each ``push`` as ``stage``."""

    def __init__(self, tap: Any, stage: str, clock: StageClock) -> None:
        self.tap, self.stage, self.clock = tap, stage, clock
        self.fps, self.short_side = tap.fps, tap.short_side

    def begin(self, info: VideoInfo) -> None:
        begin = getattr(self.tap, "begin", None)
        if callable(begin):
            begin(info)

    def push(self, index: int, time_s: float, frame: np.ndarray) -> None:
        start = time.perf_counter()
        self.tap.push(index, time_s, frame)
        self.clock.seconds[self.stage] += time.perf_counter() - start


def tap_stage(tap: Any) -> str:
    if isinstance(tap, DetectorTap):
        return f"tap:{tap.spec.name}"
    return "tap:signal" if isinstance(tap, SignalTap) else f"tap:{type(tap).__name__}"


class TimedAnnotator(Annotator):
    """A built annotator whose work is timed under its name (see the module docstring); the clip records are its."""

    def __init__(self, inner: Annotator, clock: StageClock) -> None:
        super().__init__(inner.cfg)
        self.inner, self.clock = inner, clock
        self.name, self.needs = inner.name, inner.needs  # type: ignore[misc]
        self._annotate = inner.annotate if inner.needs == "scan" else clock.wrap(inner.name, inner.annotate)

    def tap(self) -> Any:
        tap = self.inner.tap()
        return None if tap is None else TimedTap(tap, self.name, self.clock)

    def annotate(self, clip: ClipContext) -> None:
        if self.needs == "scan":  # the tap the pass filled is the timed wrapper; the annotator reads the real one
            clip = dataclasses.replace(clip, taps={**clip.taps, self.name: _inner(clip.taps[self.name])})
        self._annotate(clip)


def _inner(tap: Any) -> Any:
    return tap.tap if isinstance(tap, TimedTap) else tap


def timed_annotators(annotators: Annotators, clock: StageClock) -> Annotators:
    return Annotators(annotators.cfg, [TimedAnnotator(a, clock) for a in annotators.items])


@contextlib.contextmanager
def instrumented(clock: StageClock) -> Iterator[None]:
    """Swap the names ``curate_video`` calls for timing wrappers around the same objects; restored on exit."""
    names = [*TIMED_CALLS, "scan_video", "CutCascade"]
    missing = [n for n in names if not hasattr(annotate, n)]
    if missing:
        raise RuntimeError(f"data.curation.annotate no longer uses {missing}; update data/curation/timing.py")
    saved = {n: getattr(annotate, n) for n in names}

    def scan(path: Any, info: VideoInfo, taps: Any, **kwargs: Any) -> Any:
        timed = [t if isinstance(t, TimedTap) else TimedTap(t, tap_stage(t), clock) for t in taps]
        return clock.wrap("scan", saved["scan_video"])(path, info, timed, **kwargs)

    class Cascade(saved["CutCascade"]):  # type: ignore[misc, valid-type]
        def result(self, info: VideoInfo | None = None) -> Any:
            return clock.wrap("cut_result", super().result)(info)

    try:
        for name, stage in TIMED_CALLS.items():
            setattr(annotate, name, clock.wrap(stage, saved[name]))
        annotate.scan_video, annotate.CutCascade = scan, Cascade  # type: ignore[assignment, misc]
        yield
    finally:
        for name, value in saved.items():
            setattr(annotate, name, value)
