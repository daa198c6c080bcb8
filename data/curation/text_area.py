"""Text area of a clip: the fraction of the frame covered by detected text, on its first, middle and last frames.

The paper runs CRAFT and drops clips whose text boxes exceed 7% of the frame (RECIPE section 6, "OCR"). We use the
PP-OCRv4 text *detector* (a DB segmentation network, the role CRAFT plays there) whose ONNX weights ship inside the
``rapidocr_onnxruntime`` wheel, so nothing is downloaded. Its pre- and post-processing are rapidocr's own classes
(``DBPostProcess``) with rapidocr's default settings: the frame (BGR, as the model was trained) is resized so its
short side is ``short_side`` (736, rapidocr's ``limit_side_len``) and both sides are multiples of 32, normalised
with mean = std = 0.5; the probability map is thresholded at 0.3, candidate boxes whose mean probability is below
0.5 are dropped and the rest are expanded ("unclipped") by ratio 1.6 as DB does. Unlike rapidocr, which only ever
enlarges small images, large frames are shrunk to the same short side too, so the cost per frame is bounded (a
1080p frame costs what a 720p one does). We run the ONNX session ourselves so the thread count is ours
(``intra_op_threads``, default 1: the pipeline parallelises over clips).

The per-frame value is the area of the *union* of the boxes (polygons rasterised on a frame-sized mask, so
overlapping boxes count once) over the frame area, in [0, 1]. The clip value is the **maximum** over the three
frames (``clip_text_area``): a title card or subtitle shown on any of them is what the filter is after, and a mean
would let text on one frame in three slip under the threshold. ``short_side`` trades speed for recall of small
text: a 16:9 frame runs at 736x1312, about 135 ms on one CPU thread; 480 takes about 55 ms.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


def default_model_path() -> str:
    """The PP-OCRv4 detection model inside the installed ``rapidocr_onnxruntime`` package."""
    import rapidocr_onnxruntime

    return os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models", "ch_PP-OCRv4_det_infer.onnx")


@dataclass(frozen=True)
class TextAreaConfig:
    model_path: str | None = None  # None = the detector shipped with rapidocr_onnxruntime
    # Frames are resized so the short side is min(short_side, max(the frame's own, min_short_side)), rounded to a
    # multiple of 32: large frames shrink to short_side; frames are never enlarged beyond min_short_side (enlarging
    # adds cost, not text). At 320 a 720p subtitle line (~5% of the height) is ~16 px tall, well inside what the
    # detector finds, for ~25 ms a frame (480: ~55 ms, 736: ~135 ms); the filter targets large text areas.
    short_side: int = 320
    min_short_side: int = 320
    max_long_side: int = 2048  # caps the long side of very wide or tall frames
    thresh: float = 0.3  # probability threshold of the DB map
    box_thresh: float = 0.5  # minimum mean probability inside a box
    unclip_ratio: float = 1.6
    max_candidates: int = 1000
    min_box_side: int = 3  # boxes with a side of at most this many frame pixels are noise (rapidocr's filter)
    intra_op_threads: int = 1

    def __post_init__(self) -> None:
        if not (32 <= self.short_side <= self.max_long_side and self.min_short_side >= 32):
            raise ValueError(
                f"need 32 <= short_side <= max_long_side and min_short_side >= 32 (the detector works on multiples "
                f"of 32); got short_side={self.short_side}, max_long_side={self.max_long_side}, "
                f"min_short_side={self.min_short_side}"
            )
        if not (0 < self.thresh < 1 and 0 < self.box_thresh < 1):
            raise ValueError(f"thresh and box_thresh must be in (0, 1); got {self.thresh}, {self.box_thresh}")
        if self.intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1; got {self.intra_op_threads}")


class TextAreaDetector:
    """Loads the detector once; ``detector(frames)`` -> one text-area fraction per (H, W, 3) uint8 RGB frame."""

    def __init__(self, cfg: TextAreaConfig | None = None) -> None:
        import onnxruntime as ort
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

        self.cfg = cfg = cfg or TextAreaConfig()
        path = cfg.model_path or default_model_path()
        if not os.path.isfile(path):
            raise ValueError(f"text detector model {path!r} not found; install rapidocr_onnxruntime or set model_path")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._post = DBPostProcess(
            thresh=cfg.thresh, box_thresh=cfg.box_thresh, max_candidates=cfg.max_candidates,
            unclip_ratio=cfg.unclip_ratio, score_mode="fast", use_dilation=True,
        )  # fmt: skip

    def _preprocess(self, frame: np.ndarray) -> np.ndarray:
        """(H, W, 3) RGB uint8 -> (1, 3, h32, w32) float32 BGR in [-1, 1], short side ~``cfg.short_side``."""
        h, w = frame.shape[:2]
        target = min(self.cfg.short_side, max(min(h, w), self.cfg.min_short_side))
        scale = min(target / min(h, w), self.cfg.max_long_side / max(h, w))
        size = (max(32, round(w * scale / 32) * 32), max(32, round(h * scale / 32) * 32))  # cv2: (width, height)
        interp = cv2.INTER_AREA if size[0] < w else cv2.INTER_LINEAR
        bgr = cv2.cvtColor(cv2.resize(np.ascontiguousarray(frame), size, interpolation=interp), cv2.COLOR_RGB2BGR)
        x = (bgr.astype(np.float32) / 255.0 - 0.5) / 0.5
        return x.transpose(2, 0, 1)[None]

    def boxes(self, frame: np.ndarray) -> list[np.ndarray]:
        """The detected text boxes of one RGB frame: (4, 2) int32 corner arrays in frame pixels (x, y)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be (H, W, 3) uint8 RGB; got {frame.shape} {frame.dtype}")
        h, w = frame.shape[:2]
        prob = self._session.run(None, {self._input: self._preprocess(frame)})[0]  # (1, 1, h32, w32) probability
        boxes, _ = self._post(prob, (h, w))
        keep = []
        for box in boxes:
            side_a, side_b = np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[1] - box[2])
            if min(side_a, side_b) > self.cfg.min_box_side:
                keep.append(box.astype(np.int32))
        return keep

    def area_fraction(self, frame: np.ndarray) -> float:
        """Area of the union of the frame's text boxes over the frame area, in [0, 1]."""
        return union_area_fraction(self.boxes(frame), frame.shape[:2])

    def __call__(self, frames: np.ndarray | Sequence[np.ndarray]) -> list[float]:
        return [self.area_fraction(frame) for frame in frames]


def union_area_fraction(boxes: Sequence[np.ndarray], shape: tuple[int, int]) -> float:
    """Fraction of an (H, W) frame covered by the union of polygons ((K, 2) integer x, y corners)."""
    if not len(boxes):
        return 0.0
    mask = np.zeros(shape, np.uint8)
    for box in boxes:  # one call per polygon: a single fillPoly over several polygons un-fills their overlaps
        cv2.fillPoly(mask, [np.asarray(box, np.int32).reshape(-1, 1, 2)], 1)
    return float(mask.mean())


def clip_text_area(fractions: Sequence[float]) -> float:
    """The clip's text area: the maximum over its (first, middle, last) frame fractions; 0 for no frames."""
    return float(max(fractions, default=0.0))
