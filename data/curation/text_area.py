"""Text area of a clip: the fraction of the frame covered by detected text, on its first, middle and last frames.

The paper runs CRAFT and drops clips whose text boxes exceed 7% of the frame (RECIPE section 6, "OCR"). We use the
PP-OCRv4 text *detector* (a DB segmentation network, the role CRAFT plays there) whose ONNX weights ship inside the
``rapidocr_onnxruntime`` wheel, so nothing is downloaded. The post-processing is rapidocr's ``DBPostProcess`` with
its default settings: the probability map is thresholded at 0.3, candidate boxes whose mean probability is below 0.5
are dropped and the rest are expanded ("unclipped") by ratio 1.6 as DB does. We run the ONNX session ourselves so
the thread count is ours (``intra_op_threads``, default 1: the pipeline parallelises over clips).

Resolution follows the text, not the frame: the frame (BGR, normalised with mean = std = 0.5, as the model was
trained) is scaled so that text ``min_text_px`` (12) pixels tall in the frame is ``detect_px`` (10) pixels tall in
the input, the height the detector needs (measured, see ``TextAreaConfig``); small frames are enlarged to a short
side of ``short_side``. Inputs are padded, not stretched, to multiples of 32, and very large ones run as overlapping
tiles stitched into one probability map. Cost on one thread (a cut-video frame scaled up; a 2480x3508 page):
640x360 ~42 ms, 1280x720 ~170 ms, 1920x1080 ~450 ms, the page ~2.1 s (4 tiles); the former fixed 320-pixel short
side cost ~45 ms at every size and missed text under ~35 px at 1080p and under ~130 px on the page.

Boxes that are not text-like are dropped (``TextAreaDetector.is_text``): the detector's false positives on
textless footage are square blobs over dense texture, and nothing taller than half the frame is a text line.

The per-frame value is the area of the *union* of the boxes (polygons rasterised on a frame-sized mask, so
overlapping boxes count once) over the frame area, in [0, 1]. The clip value is the **maximum** over the three
frames (``clip_text_area``): a title card or subtitle shown on any of them is what the filter is after, and a mean
would let text on one frame in three slip under the threshold.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from data.curation.annotators import Annotator, ClipContext, Option, round_score

log = logging.getLogger(__name__)


def default_model_path() -> str:
    """The PP-OCRv4 detection model inside the installed ``rapidocr_onnxruntime`` package."""
    import rapidocr_onnxruntime

    return os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models", "ch_PP-OCRv4_det_infer.onnx")


@dataclass(frozen=True)
class TextAreaConfig:
    model_path: str | None = None  # None = the detector shipped with rapidocr_onnxruntime
    # Input scale. Frames are scaled by max(detect_px / min_text_px, short_side / the frame's short side): text
    # min_text_px tall in the frame is detect_px tall in the detector input, and small frames are enlarged to a
    # short side of short_side. Measured on the calibration text lines (images scaled so the smallest line has a
    # given height, on a 640x640 canvas): at 9 px and up every line of every script is found, at 8 px the Thai sign
    # drops to 37% recall, at 6 px and below the detector boxes whole signs as one blob (up to 16x the text area).
    # But a frame is resampled twice on its way (source -> frame -> input): with the signs scaled to a 12-px
    # smallest line on 1280x720 and 1920x1080 canvases, a 10 or 11 px input misses 0-2 of the 6 French lines and
    # none of the CJK, Korean, Thai or Japanese ones; 12 px (no shrinking) misses 0-1 French line but doubles the
    # cost at 1080p (~600 vs ~420 ms) and, at full resolution, puts more texture blobs on textless footage (cut
    # videos: 8 of 124 frames above 0.01 vs 3 at 10 px). 10 px finds every 12-px frame of text we built (pages,
    # subtitles, signs) and every line from ~15 px; set detect_px=12 where every 12-px line matters more. The former
    # fixed 320-px short side shrank 12-30 px text on a 2480x3508 page to 2-4 px, which the detector misses.
    min_text_px: float = 12.0  # the smallest text height (frame pixels) that must be found
    detect_px: float = 10.0  # the height the detector needs in its input to find a line reliably
    short_side: int = 320  # smaller frames are enlarged to this short side
    max_long_side: int = 4096  # safety cap on the input's long side (a 2160p frame needs 3200); larger is shrunk
    # Inputs with a side above ``tile`` run as overlapping tiles whose probability maps are stitched before the
    # boxes are drawn, so memory stays bounded (a 1920x1088 input needs ~1 GB, a 2496x3520 page ~3.5 GB in one
    # piece). Tiling saves no time (640-px tiles cost as much as one 1600x900 input: the overlaps eat the gain in
    # cost per pixel), so frames up to 2048 px run in one piece. Each tile's outer overlap/2 pixels are discarded:
    # they are context for lines at the seam.
    tile: int = 2048
    tile_overlap: int = 128
    thresh: float = 0.3  # probability threshold of the DB map
    box_thresh: float = 0.5  # minimum mean probability inside a box
    unclip_ratio: float = 1.6
    max_candidates: int = 1000
    min_box_side: int = 3  # boxes with a side of at most this many frame pixels are noise (rapidocr's filter)
    # Box filters (fractions of the frame's short side). On textless footage the detector's false positives are
    # blobs over dense texture (mirror segments, machinery, checkered or striped objects, snow and rocks): of the
    # 63 false boxes on the calibration notext images, cut and motion videos and the demo scenes, 41 are nearly
    # square (long side < 1.5x the short side) and 0.2-0.55 of the frame's short side tall. Of 60 true boxes
    # (calibration signs, demo titles a third of the frame tall) every box that tall is a line at least 2x longer
    # than tall; the square true boxes are single glyphs at most 0.22 tall (one of them, a big CJK character, is
    # lost). No true box is taller than 0.39 of the short side; 0.5 is a margin for bigger titles. The box score
    # does not separate (true 0.56-0.94, false 0.50-0.89), so box_thresh stays rapidocr's.
    max_box_height: float = 0.5
    blob_aspect: float = 1.5
    blob_height: float = 0.2
    intra_op_threads: int = 1

    def __post_init__(self) -> None:
        if not (0 < self.detect_px and 0 < self.min_text_px and self.short_side >= 32):
            raise ValueError(
                f"need detect_px > 0, min_text_px > 0 and short_side >= 32; got detect_px={self.detect_px}, "
                f"min_text_px={self.min_text_px}, short_side={self.short_side}"
            )
        if not (self.tile % 32 == 0 and 0 <= self.tile_overlap < self.tile // 2 and self.max_long_side >= 32):
            raise ValueError(
                f"tile must be a multiple of 32 (the detector's stride), 0 <= tile_overlap < tile / 2 and "
                f"max_long_side >= 32; got tile={self.tile}, tile_overlap={self.tile_overlap}, "
                f"max_long_side={self.max_long_side}"
            )
        if not (0 < self.thresh < 1 and 0 < self.box_thresh < 1):
            raise ValueError(f"thresh and box_thresh must be in (0, 1); got {self.thresh}, {self.box_thresh}")
        if not (0 < self.max_box_height and 0 < self.blob_height and self.blob_aspect >= 1):
            raise ValueError(
                f"need max_box_height > 0, blob_height > 0 and blob_aspect >= 1; got {self.max_box_height}, "
                f"{self.blob_height}, {self.blob_aspect}"
            )
        if self.intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1; got {self.intra_op_threads}")


@dataclass(frozen=True)
class TextBox:
    corners: np.ndarray  # (4, 2) int32, frame pixels (x, y)
    score: float  # DB's box score: mean probability inside the region before unclipping
    height: float  # short side, frame pixels
    length: float  # long side, frame pixels


def tile_spans(n: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Cover [0, n) with the fewest tiles of at most ``tile`` (a multiple of 32) overlapping by >= ``overlap``:
    (start, stop, own_start, own_stop) each, where [own_start, own_stop) is the part of the tile that is kept
    (the seams lie in the middle of the overlaps) and the owned parts partition [0, n)."""
    if n <= tile:
        return [(0, n, 0, n)]
    k = math.ceil((n - overlap) / (tile - overlap))
    size = min(tile, math.ceil((n + (k - 1) * overlap) / k / 32) * 32)  # equal tiles, as small as k allows
    starts = [round(i * (n - size) / (k - 1)) for i in range(k)]
    seams = [0, *((b + a + size) // 2 for a, b in itertools.pairwise(starts)), n]
    return [(a, a + size, seams[i], seams[i + 1]) for i, a in enumerate(starts)]


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
        self._warned_cap = False

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) of the detector input for an (h, w) frame (see ``TextAreaConfig``)."""
        cfg = self.cfg
        scale = max(cfg.detect_px / cfg.min_text_px, cfg.short_side / min(h, w))
        if scale * max(h, w) > cfg.max_long_side:
            scale = cfg.max_long_side / max(h, w)
            if not self._warned_cap:
                log.warning(
                    "text area: a %dx%d frame is shrunk to a long side of %d (max_long_side); text under %.0f px "
                    "is missed",
                    w, h, cfg.max_long_side, cfg.detect_px / scale,
                )  # fmt: skip
                self._warned_cap = True
        return max(1, round(h * scale)), max(1, round(w * scale))

    def _run(self, x: np.ndarray) -> np.ndarray:
        """(h, w, 3) normalised input -> (h, w) probability; padded (edge) to multiples of 32 and cropped back."""
        h, w = x.shape[:2]
        if h % 32 or w % 32:
            x = np.pad(x, ((0, -h % 32), (0, -w % 32), (0, 0)), mode="edge")
        prob = self._session.run(None, {self._input: np.ascontiguousarray(x.transpose(2, 0, 1)[None])})[0]
        return prob[0, 0, :h, :w]  # (1, 1, H32, W32) -> (h, w)

    def prob_map(self, frame: np.ndarray) -> np.ndarray:
        """The DB text probability of an RGB frame at the detector's input size (``input_size``)."""
        h, w = frame.shape[:2]
        ih, iw = self.input_size(h, w)
        interp = cv2.INTER_AREA if iw < w else cv2.INTER_LINEAR
        bgr = cv2.cvtColor(cv2.resize(np.ascontiguousarray(frame), (iw, ih), interpolation=interp), cv2.COLOR_RGB2BGR)
        x = bgr.astype(np.float32) * np.float32(2 / 255) - np.float32(1)  # (v / 255 - mean 0.5) / std 0.5
        rows = tile_spans(ih, self.cfg.tile, self.cfg.tile_overlap)
        cols = tile_spans(iw, self.cfg.tile, self.cfg.tile_overlap)
        if len(rows) == len(cols) == 1:
            return self._run(x)
        prob = np.empty((ih, iw), np.float32)
        for y0, y1, oy0, oy1 in rows:
            for x0, x1, ox0, ox1 in cols:
                p = self._run(x[y0:y1, x0:x1])
                prob[oy0:oy1, ox0:ox1] = p[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0]
        return prob

    def detect(self, frame: np.ndarray) -> list[TextBox]:
        """Every box the DB post-processing finds on one RGB frame, before the box filters."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be (H, W, 3) uint8 RGB; got {frame.shape} {frame.dtype}")
        h, w = frame.shape[:2]
        boxes, scores = self._post(self.prob_map(frame)[None, None], (h, w))
        out = []
        for box, score in zip(boxes, scores, strict=True):
            side_a, side_b = np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[1] - box[2])
            out.append(TextBox(box.astype(np.int32), float(score), min(side_a, side_b), max(side_a, side_b)))
        return out

    def is_text(self, box: TextBox, shape: tuple[int, int]) -> bool:
        """Whether a box on an (H, W) frame passes the box filters (see ``TextAreaConfig``)."""
        cfg, short = self.cfg, min(shape)
        blob = box.length < cfg.blob_aspect * box.height and box.height > cfg.blob_height * short
        return box.height > cfg.min_box_side and box.height <= cfg.max_box_height * short and not blob

    def boxes(self, frame: np.ndarray) -> list[np.ndarray]:
        """The text boxes of one RGB frame: (4, 2) int32 corner arrays in frame pixels (x, y)."""
        return [b.corners for b in self.detect(frame) if self.is_text(b, frame.shape[:2])]

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


class TextAreaAnnotator(Annotator):
    """``text_area`` (and ``text_area_frames``) of the clip's first/middle/last frames: ``annotate.text_area`` turns
    it on, ``annotate.text`` configures the detector."""

    name = "text_area"
    options = (
        Option("text_area", bool, True),  # PP-OCR text area on the first/middle/last frames
        Option("text", TextAreaConfig, factory=TextAreaConfig),
    )
    fields = ("text_area",)

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.detector = TextAreaDetector(cfg.text)

    @classmethod
    def enabled(cls, cfg: Any) -> bool:
        return bool(cfg.text_area)

    @classmethod
    def missing(cls, cfg: Any, field_name: str) -> str | None:
        return None if cfg.text_area else "annotate.text_area is off"

    def annotate(self, clip: ClipContext) -> None:
        fractions = self.detector(clip.frames)
        clip.record["text_area"] = round_score(clip_text_area(fractions))
        clip.record["text_area_frames"] = [round_score(f) for f in fractions]
