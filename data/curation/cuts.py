"""Cascaded cut detection (RECIPE section 6, paper App C): PySceneDetect detectors at different frame rates and
thresholds, fed by the single decode pass, so both hard cuts and slow transitions are found.

Each ``DetectorSpec`` (``scene_detectors.py``) becomes a ``FrameTap`` that hands its frames straight to a scenedetect
detector's ``process_frame`` (BGR for the detectors that care); a detector running at ``fps`` sees each sampled frame
as one step, and its cuts are mapped back to the native index of the sampled frame. The default cascade, tuned on the
demo raw videos (fast scenes there move 1/25 of the frame each frame, pan over stripes and have shapes leave the
frame):

1. ``adaptive`` (AdaptiveDetector, brightness only) at every frame, short side 32: hard cuts, at their exact frame.
   It divides a frame's change by its neighbours', so motion and pans, which change every frame, do not look like
   cuts; a plain ContentDetector cannot separate them here (a fast pan over stripes scored 49 at the native rate,
   a cut between two dim static scenes 41). Hue is left out because it is noise on grey, desaturated areas: with
   it, codec noise on a grey background fired a cut in a slow scene.
2. ``color_histogram`` (``ColorHistogramDetector``, a scenedetect ``SceneDetector``) at 4 fps, short side 64:
   crossfades and fades, and cuts between scenes of equal brightness. A 0.5 s crossfade changes each frame by a few
   percent, too little for a per-frame detector, but four times a second it is a jump; a colour histogram hardly
   moves when things move. Demo (40 videos): in-scene change <= 0.19, transitions >= 0.2. On real footage in-shot
   change goes well past 0.2 (a car filling the frame, an exposure drop, flicker), which the threshold cannot
   separate from a crossfade; the confirmation below does. scenedetect's own HistogramDetector looks at luma only
   and missed crossfades between a grey and a green scene.
3. ``threshold`` (ThresholdDetector) at every frame, short side 32: fades to and from black (mean level below 12 of
   255, scenedetect's default). The demo's 0.5 s fades dip to about 15 and are found by (2); 12 stays below the
   level of real night scenes.

On 100 demo raw videos (seeds 0-24, 377 transitions) the cascade finds all but one (a crossfade between two grey
scenes) within 2 frames, with one spurious transition (a fast scene whose shapes leave the frame).

Detections of all detectors within ``merge_window_s`` of each other are one transition, located on a per-frame
signal recorded in the same pass (``SignalTap``: RGB histograms and mean level). Within ``max_transition_s`` of the
detections (never past the middle to a neighbouring transition):

- a cut is one frame that carries at least half of the change while its neighbours hardly change: the transition
  is that frame, with an empty span;
- otherwise the span starts at the first frame that has moved ``span_fraction`` of the way away from the frames
  before and ends after the last frame still that far from the frames after; the anchors then move next to the
  span and it is measured again (so a scene's own drift, a pan, is not taken for the fade). The span holds the
  frames of neither scene, so clips can leave them out; it is a ``fade`` when it gets darker than ``fade_level`` of
  both sides (through black), else a ``crossfade``;
- where the signal does not move (two shots with the same colours) the detector's own frames are used.

``Transition.frame`` is the first frame of the new scene: a cut's frame, or in a span the first frame closer to the
frames after than to those before. Gradual transitions whose spans touch are one (both halves of a slow fade), and
exact detections further apart than the merge window stay apart (a flash just before a cut).

``CutConfig.detector`` adds or swaps in TransNetV2 (``transnet.py``): ``combined`` joins both detectors' transitions
(``_union``). Whatever the detector, every transition is then confirmed on the same signal
(``shot_signal.rejection``): the pictures before and after must differ, the earlier picture must not come back right
after a cut, and a crossfade must progress steadily. On the calibration set's real footage this removes all 10
false transitions of the cascade (cars passing, flicker, an exposure drop, a static near-black shot, a fade found
twice) and keeps all 21 real ones.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from data.curation.probe import VideoInfo
from data.curation.scan import scan_video
from data.curation.scene_detectors import DEFAULT_DETECTORS, DetectorSpec, DetectorTap
from data.curation.shot_signal import SignalTap, hist_distance, rejection
from data.curation.taps import FrameTap
from data.curation.transitions import CutResult, Transition, TransitionKind, scenes_between
from data.curation.transnet import TransNetConfig, TransNetTap

# cascade: the three PySceneDetect detectors (paper); transnetv2: the learned detector (transnet.py); combined: the
# transitions of both, one where they overlap. Every detector's transitions go through the same confirmation.
CutDetector = Literal["cascade", "transnetv2", "combined"]
CUT_DETECTORS: tuple[str, ...] = CutDetector.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class CutConfig:
    detector: CutDetector = "cascade"
    detectors: tuple[DetectorSpec, ...] = DEFAULT_DETECTORS
    transnet: TransNetConfig = field(default_factory=TransNetConfig)
    merge_window_s: float = 0.5  # detections closer than this are one transition
    max_transition_s: float = 1.0  # how far before/after a detection the span search looks (anchor distance)
    span_fraction: float = 0.15  # share of the change that marks a frame as part of the transition
    min_signal_change: float = 0.05  # below this histogram change the span signal is not trusted
    cut_max_frames: int = 2  # transitions spanning at most this many frames are cuts
    fade_level: float = 0.5  # a span darker than this share of both anchors' levels is a fade (through black)
    # Confirmation (``CutCascade._rejection``): a transition whose content before and after is the same picture is
    # an in-shot event. Structure similarity = correlation of 32x18 grey thumbnails (brightness and contrast
    # normalised). Real and synthetic footage: true cuts, crossfades and fades <= 0.74 (calibration: a cut between
    # two views of one street 0.73; demo: cuts between static striped scenes at 128x96 up to 0.71); cars passing in
    # front of a static camera 0.97, a static near-black shot 1.0, an auto-exposure drop 0.84.
    same_shot_similarity: float = 0.8
    return_s: float = 0.5  # a cut whose earlier picture comes back within this time was an occlusion or a flash
    # A gradual transition moves steadily from one picture to the other: its progress (histogram distance to the
    # frames before minus that to the frames after) changes monotonically; net change / total variation is 0.87-1.0
    # on real and synthetic crossfades, 0.22 on hologram flicker, which goes back and forth. (Fades through black
    # are not held to it: their histograms dip and rise by nature, 0.5-0.6.)
    min_monotonicity: float = 0.5

    def __post_init__(self) -> None:
        if self.detector not in CUT_DETECTORS:
            raise ValueError(f"annotate.cuts.detector must be one of {CUT_DETECTORS}; got {self.detector!r}")
        if not self.detectors:
            raise ValueError("the cascade needs at least one detector")
        if self.merge_window_s < 0 or self.max_transition_s <= 0 or not 0 < self.span_fraction < 1:
            raise ValueError(f"need merge_window_s >= 0, max_transition_s > 0, 0 < span_fraction < 1; got {self}")
        if not (0 < self.same_shot_similarity <= 1 and self.return_s >= 0 and 0 <= self.min_monotonicity <= 1):
            raise ValueError(
                f"need 0 < same_shot_similarity <= 1 (1 turns the check off), return_s >= 0 and 0 <= min_monotonicity "
                f"<= 1; got {self.same_shot_similarity}, {self.return_s}, {self.min_monotonicity}"
            )


@dataclass
class _Group:
    """Detections merged into one transition: (first, last possible frame, detector name) each."""

    found: list[tuple[int, int, str]]

    @property
    def lo(self) -> int:
        return min(lo for lo, _, _ in self.found)

    @property
    def hi(self) -> int:
        return max(hi for _, hi, _ in self.found)

    @property
    def frame(self) -> int:
        """The most precise detection (an every-frame detector's, if one fired); the earliest among equals."""
        return min(self.found, key=lambda f: (f[1] - f[0], f[1]))[1]


def _split_at_exact(g: _Group, window: float) -> list[_Group]:
    """A chain of detections can link two exact (every-frame) detections further apart than ``window`` through a
    coarse one between them (a flash, then a cut 0.7 s later, and a 4-fps detection spanning the gap): those are two
    transitions. Each detection goes to the nearest exact anchor (0 for a range that holds it)."""
    anchors: list[int] = []
    for lo, hi, _ in sorted(g.found):
        if lo == hi and (not anchors or lo - anchors[-1] > window):
            anchors.append(lo)
    if len(anchors) < 2:
        return [g]
    parts: list[list[tuple[int, int, str]]] = [[] for _ in anchors]
    for det in g.found:
        distance = [0 if det[0] <= a <= det[1] else min(abs(det[0] - a), abs(det[1] - a)) for a in anchors]
        parts[int(np.argmin(distance))].append(det)
    return [_Group(p) for p in parts if p]


class CutCascade:
    """The detectors of ``cfg`` as taps for ``scan_video``; ``result(info)`` after the scan gives the transitions.
    ``info`` here (or ``begin(info)``, which ``scan_video`` calls on each tap) is only needed to drive the taps by
    hand, without ``scan_video``."""

    def __init__(self, cfg: CutConfig | None = None, info: VideoInfo | None = None) -> None:
        self.cfg, self.info = cfg or CutConfig(), info
        use_cascade = self.cfg.detector in ("cascade", "combined")
        self.detector_taps = [DetectorTap(spec) for spec in self.cfg.detectors] if use_cascade else []
        self.learned = TransNetTap(self.cfg.transnet) if self.cfg.detector in ("transnetv2", "combined") else None
        every_frame = [s.short_side for s in self.cfg.detectors if s.fps is None and use_cascade]
        self.signal = SignalTap(min(every_frame) if every_frame else self.cfg.transnet.short_side)
        self._result: CutResult | None = None
        if info is not None:
            for tap in self.detector_taps:
                tap.begin(info)

    @property
    def taps(self) -> list[FrameTap]:
        return [*self.detector_taps, *([self.learned] if self.learned is not None else []), self.signal]

    def result(self, info: VideoInfo | None = None) -> CutResult:
        """Merge, locate, classify and confirm the detections, after the scan (the first call does the work)."""
        info = info or self.info
        if info is None:
            raise ValueError("pass the VideoInfo the scan used: cascade.result(info)")
        if self._result is None:
            self._result = self._compute(info.fps)
        return self._result

    def _compute(self, fps: float) -> CutResult:
        n, cfg = len(self.signal.levels), self.cfg
        for tap in self.detector_taps:
            tap.finish()
        found = self._locate_all(self._groups(fps, n), n, fps) if self.detector_taps else []
        if self.learned is not None:
            found = _union(found, [t for t in self.learned.transitions() if t.frame < n], fps * cfg.merge_window_s)
        kept, rejected = [], []
        for t in found:
            why = rejection(
                t, self.signal, fps=fps, same_shot_similarity=cfg.same_shot_similarity, return_s=cfg.return_s,
                min_monotonicity=cfg.min_monotonicity,
            )  # fmt: skip
            if why is None:
                kept.append(t)
            else:
                rejected.append((t, why))
        return CutResult(scenes=scenes_between(kept, n), transitions=kept, num_frames=n, rejected=rejected)

    def _locate_all(self, groups: list[_Group], n: int, fps: float) -> list[Transition]:
        """Locate each group's transition; gradual transitions whose spans overlap or touch (a slow fade out and in,
        found by two detectors more than ``merge_window_s`` apart) become one group, located again over both. A cut
        is never merged: a flash just before a real cut must not swallow it."""
        while True:
            transitions = []
            for i, g in enumerate(groups):
                left = 0 if i == 0 else (groups[i - 1].hi + g.lo + 1) // 2
                right = n - 1 if i == len(groups) - 1 else (g.hi + groups[i + 1].lo) // 2
                transitions.append(self._locate(g, left, right, fps))
            touching = [
                i for i, (t, u) in enumerate(itertools.pairwise(transitions))
                if t.kind != "cut" and u.kind != "cut" and t.end_frame >= u.start_frame - 1
            ]  # fmt: skip
            if not touching:
                return transitions
            i = touching[0]
            groups = [*groups[:i], _Group(groups[i].found + groups[i + 1].found), *groups[i + 2 :]]

    def _groups(self, fps: float, n: int) -> list[_Group]:
        found = sorted((lo, hi, t.spec.name) for t in self.detector_taps for lo, hi in t.detections if 0 < hi < n)
        window = self.cfg.merge_window_s * fps
        groups: list[_Group] = []
        for det in found:
            if groups and det[0] - groups[-1].hi <= window:
                groups[-1].found.append(det)
            else:
                groups.append(_Group([det]))
        return [part for g in groups for part in _split_at_exact(g, window)]

    def _locate(self, g: _Group, left: int, right: int, fps: float) -> Transition:
        cfg = self.cfg
        reach = int(round(cfg.max_transition_s * fps))
        a, b = max(left, g.lo - reach), min(right, g.hi + reach)
        names = tuple(sorted({name for _, _, name in g.found}))
        hists = np.asarray(self.signal.hists[a : b + 1], np.float32)
        if b - a < 6:
            return Transition(g.frame, g.frame, g.frame, "cut", names)
        # change of each frame from the previous one; the largest inside the detected frames is a cut candidate
        step = np.r_[0.0, hist_distance(hists[1:], hists[:-1])]
        core = np.arange(max(g.lo, a + 1), min(g.hi, b) + 1) - a
        jump = int(core[np.argmax(step[core])]) if len(core) else g.frame - a
        d_before, d_after = hist_distance(hists, hists[:3].mean(0)), hist_distance(hists, hists[-3:].mean(0))
        peak = max(d_before.max(), d_after.max())
        if peak < cfg.min_signal_change:  # the colours do not change: trust the detector's frames
            if g.hi - g.lo <= cfg.cut_max_frames:
                return Transition(g.frame, g.frame, g.frame, "cut", names)
            return Transition(g.frame, g.lo, g.hi, "crossfade", names)
        around = np.r_[step[max(jump - 2, 1) : jump], step[jump + 1 : jump + 3]]
        if step[jump] >= 0.5 * peak and (len(around) == 0 or around.max() <= 0.25 * step[jump]):
            # one frame carries most of the change and its neighbours hardly change: a cut, not a fade's middle
            return Transition(a + jump, a + jump, a + jump, "cut", names)
        start, end = self._span(hists)
        closer = np.nonzero(hist_distance(hists[start : end + 1], hists[-3:].mean(0))
                            < hist_distance(hists[start : end + 1], hists[:3].mean(0)))[0]  # fmt: skip
        frame = start + int(closer[0]) if len(closer) else (start + end) // 2
        levels = np.asarray(self.signal.levels[a : b + 1])
        if end - start <= cfg.cut_max_frames:
            kind: TransitionKind = "cut"
        elif levels[start:end].min() < cfg.fade_level * min(levels[:3].mean(), levels[-3:].mean()):
            kind = "fade"
        else:
            kind = "crossfade"
        return Transition(a + frame, a + start, a + end, kind, names)

    def _span(self, hists: np.ndarray) -> tuple[int, int]:
        """[start, end) of the frames that belong to neither anchor, indices into ``hists``. Refined by moving the
        anchors next to the span found, so slow drift (motion, pans) inside a scene is not taken for the fade."""
        lo, hi = 0, len(hists) - 1
        start, end = lo, hi + 1
        margin = 3
        for _ in range(4):
            window = hists[lo : hi + 1]
            d_before = hist_distance(window, window[:margin].mean(0))
            d_after = hist_distance(window, window[-margin:].mean(0))
            frac = self.cfg.span_fraction
            new_start = lo + int(np.argmax(d_before >= frac * d_before.max()))
            new_end = lo + len(window) - int(np.argmax(d_after[::-1] >= frac * d_after.max()))
            new_end = max(new_end, new_start)
            if (new_start, new_end) == (start, end):
                break
            start, end = new_start, new_end
            lo, hi = max(lo, start - 2 * margin), min(hi, end - 1 + 2 * margin)
        return start, end


def _union(a: list[Transition], b: list[Transition], window: float) -> list[Transition]:
    """The transitions of two detectors as one list: two whose spans overlap, or whose frames are within ``window``
    frames, are one transition over both spans (so clips leave out every frame either detector saw mixed), of the
    kind and at the frame of the one with the longer span, with both detectors' names."""
    out: list[Transition] = []
    for t in sorted([*a, *b], key=lambda t: (t.start_frame, t.frame)):
        last = out[-1] if out else None
        if last is None or (t.start_frame >= last.end_frame and abs(t.frame - last.frame) > window):
            out.append(t)
            continue
        start, end = min(last.start_frame, t.start_frame), max(last.end_frame, t.end_frame)
        longer = max(last, t, key=lambda x: x.end_frame - x.start_frame)
        frame = longer.frame
        names = tuple(sorted({*last.detectors, *t.detectors}))
        out[-1] = Transition(frame, start, end, longer.kind, names)
    return out


def detect_cuts(path: str, info: VideoInfo, cfg: CutConfig | None = None, *, threads: int = 0) -> CutResult:
    """Cut detection alone: one scan with only the cascade's taps (the pipeline adds its own taps instead)."""
    cascade = CutCascade(cfg)
    scan_video(path, info, cascade.taps, threads=threads)
    return cascade.result(info)
