"""The PySceneDetect side of the cut cascade (``cuts.py``): what each detector is (``DetectorSpec``), our colour
histogram detector, and ``DetectorTap``, which feeds a scenedetect detector from the single decode pass and maps its
cuts back to native frame indices. Why each detector and threshold: ``cuts.py``'s docstring."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import cv2
import numpy as np
from scenedetect import FrameTimecode
from scenedetect.detector import FlashFilter, SceneDetector
from scenedetect.detectors import AdaptiveDetector, ContentDetector, HistogramDetector, ThresholdDetector

from data.curation.probe import VideoInfo

DetectorKind = Literal["content", "adaptive", "threshold", "histogram", "color_histogram"]
DETECTOR_KINDS: tuple[str, ...] = DetectorKind.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DetectorSpec:
    """One detector of the cascade. ``threshold`` is in the detector's own units: ``content`` the HSV change
    (0-255), ``adaptive`` the ratio to the neighbours' change, ``threshold`` the mean 8-bit level of a black frame,
    ``histogram`` 1 - correlation of luma histograms. ``fps`` None = every frame."""

    kind: DetectorKind
    fps: float | None
    threshold: float
    min_scene_len_s: float = 0.5
    short_side: int = 64
    min_content_val: float | None = None  # adaptive only: the HSV change a cut needs as well (None: scenedetect's 15)
    luma_only: bool = False  # content / adaptive: compare brightness only (hue is noise on grey, desaturated areas)

    def __post_init__(self) -> None:
        if self.kind not in DETECTOR_KINDS:
            raise ValueError(f"kind must be one of {DETECTOR_KINDS}; got {self.kind!r}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be positive or None (every frame); got {self.fps}")
        if self.min_scene_len_s < 0 or self.short_side < 8:
            raise ValueError(f"need min_scene_len_s >= 0 and short_side >= 8; got {self}")

    @property
    def name(self) -> str:
        return f"{self.kind}@{'native' if self.fps is None else f'{self.fps:g}fps'}"


DEFAULT_DETECTORS: tuple[DetectorSpec, ...] = (
    DetectorSpec("adaptive", None, 3.0, min_scene_len_s=0.5, short_side=32, luma_only=True),
    DetectorSpec("color_histogram", 4.0, 0.2, min_scene_len_s=1.0, short_side=64),
    DetectorSpec("threshold", None, 12.0, min_scene_len_s=0.5, short_side=32),
)


class ColorHistogramDetector(SceneDetector):
    """A cut where the joint RGB histogram (``bins`` per channel) of a frame differs from the previous frame's by at
    least ``threshold`` in total variation (half the L1 distance of the normalised histograms: 0 = same colours,
    1 = no colour in common), at most one cut per ``min_scene_len`` frames.

    scenedetect's HistogramDetector compares luma histograms only, so it misses transitions between scenes of equal
    brightness and different colour (a grey and a green background); the joint histogram sees both, and, like any
    histogram, hardly moves when things move inside the frame."""

    def __init__(self, threshold: float = 0.2, bins: int = 4, min_scene_len: int = 15) -> None:
        super().__init__()
        self.threshold, self.bins, self.min_scene_len = threshold, bins, min_scene_len
        self._last_hist: np.ndarray | None = None
        self._last_cut: FrameTimecode | None = None

    def process_frame(self, timecode: FrameTimecode, frame_img: np.ndarray) -> list[FrameTimecode]:
        hist = cv2.calcHist([frame_img], [0, 1, 2], None, [self.bins] * 3, [0, 256] * 3).reshape(-1)
        hist /= max(float(hist.sum()), 1.0)
        last, self._last_hist = self._last_hist, hist
        if self._last_cut is None:
            self._last_cut = timecode
        if last is None:
            return []
        score = 0.5 * float(np.abs(hist - last).sum())
        if self.stats_manager is not None:
            self.stats_manager.set_metrics(timecode, {"color_hist_tv": score})
        if score >= self.threshold and (timecode - self._last_cut) >= self.min_scene_len:
            self._last_cut = timecode
            return [timecode]
        return []

    def get_metrics(self) -> list[str]:
        return ["color_hist_tv"]


def _make_detector(spec: DetectorSpec, min_len: int) -> SceneDetector:
    if spec.kind == "content":
        return ContentDetector(
            threshold=spec.threshold, min_scene_len=min_len, luma_only=spec.luma_only,
            filter_mode=FlashFilter.Mode.SUPPRESS,
        )  # fmt: skip
    if spec.kind == "adaptive":
        extra = {} if spec.min_content_val is None else {"min_content_val": spec.min_content_val}
        return AdaptiveDetector(
            adaptive_threshold=spec.threshold, min_scene_len=min_len, luma_only=spec.luma_only, **extra
        )
    if spec.kind == "histogram":
        return HistogramDetector(threshold=spec.threshold, min_scene_len=min_len)
    if spec.kind == "color_histogram":
        return ColorHistogramDetector(threshold=spec.threshold, min_scene_len=min_len)
    return ThresholdDetector(threshold=spec.threshold, min_scene_len=min_len)


class DetectorTap:
    """A scenedetect detector as a ``FrameTap``; ``detections`` = (first, last) native frames that can hold each
    cut: the sampled frame itself at every frame, else the frames since the previous sample. The detector is built
    in ``begin(info)`` (``scan_video`` calls it), when the video's frame rate is known."""

    def __init__(self, spec: DetectorSpec) -> None:
        self.spec, self.fps, self.short_side = spec, spec.fps, spec.short_side
        self._detector: SceneDetector | None = None
        self._bgr = spec.kind in ("content", "adaptive", "histogram")  # the others do not depend on channel order
        self._indices: list[int] = []  # native index of each sample
        self.detections: list[tuple[int, int]] = []

    def begin(self, info: VideoInfo) -> None:
        self._rate = Fraction(self.spec.fps or info.fps).limit_denominator(1001)  # scenedetect wants a non-int rate
        self._detector = _make_detector(self.spec, max(1, int(round(self.spec.min_scene_len_s * float(self._rate)))))
        self._indices, self.detections = [], []

    def push(self, index: int, time_s: float, frame: np.ndarray) -> None:
        assert self._detector is not None, "begin(info) first (scan_video calls it)"
        self._indices.append(index)
        image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if self._bgr else frame
        cuts = self._detector.process_frame(FrameTimecode(len(self._indices) - 1, fps=self._rate), image)
        self._add(cuts)

    def finish(self) -> None:
        if self._indices and self._detector is not None:
            self._add(self._detector.post_process(FrameTimecode(len(self._indices) - 1, fps=self._rate)))

    def _add(self, cuts: list[FrameTimecode]) -> None:
        for cut in cuts:
            k = min(max(int(cut.frame_num), 0), len(self._indices) - 1)
            hi = self._indices[k]
            lo = hi if self.spec.fps is None or k == 0 else self._indices[k - 1] + 1
            self.detections.append((lo, hi))
