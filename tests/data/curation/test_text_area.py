"""Text area with the real PP-OCRv4 detector shipped in rapidocr_onnxruntime (about 130 ms per frame, 1 thread)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from data.curation.text_area import (
    TextAreaConfig,
    TextAreaDetector,
    clip_text_area,
    default_model_path,
    union_area_fraction,
)
from data.demo_scenes import random_scene, render_scene, text_area_fraction

SIZE = (448, 256)  # (width, height): demo text is a third of the frame height, well above the detector's minimum


@functools.cache
def _detector() -> TextAreaDetector:
    return TextAreaDetector()


def _frame(seed: int, text: bool) -> tuple[np.ndarray, str | None]:
    spec = random_scene(np.random.default_rng(seed), num_frames=1, speed="static", text=text)
    return render_scene(spec, size=SIZE)[0], spec.text


def test_burned_in_text_is_found_and_text_free_frames_are_not() -> None:
    det = _detector()
    for seed in range(3):
        with_text, words = _frame(seed, True)
        without, _ = _frame(seed, False)
        got_text, got_plain = det(np.stack([with_text, without]))
        truth = text_area_fraction(words, size=SIZE)  # the tight bounding box of the rendered glyphs
        # DB boxes are "unclipped" (expanded) around the glyphs, so they cover somewhat more than the tight box.
        assert truth < got_text < 2.0 * truth, (seed, words, got_text, truth)
        assert got_plain < 0.02, (seed, got_plain)


def test_black_frame_and_tiny_frame_have_no_text() -> None:
    det = _detector()
    assert det(np.zeros((2, 96, 128, 3), np.uint8)) == [0.0, 0.0]
    assert det([np.full((8, 12, 3), 200, np.uint8)]) == [0.0]


def test_boxes_are_in_frame_pixels_and_deterministic() -> None:
    det = _detector()
    frame, _ = _frame(0, True)
    boxes = det.boxes(frame)
    assert boxes and all(b.shape == (4, 2) for b in boxes)
    stacked = np.concatenate(boxes)
    assert stacked[:, 0].min() >= 0 and stacked[:, 0].max() <= SIZE[0]
    assert stacked[:, 1].min() >= 0 and stacked[:, 1].max() <= SIZE[1]
    assert det.area_fraction(frame) == det.area_fraction(frame.copy())


def test_union_counts_overlaps_once_and_clip_value_is_the_max() -> None:
    a = np.array([[0, 0], [49, 0], [49, 49], [0, 49]])  # 50x50 px, corners inclusive
    b = a + 25  # overlaps a on 25x25
    assert union_area_fraction([a, b], (100, 100)) == pytest.approx((2 * 2500 - 625) / 10000)
    assert union_area_fraction([], (100, 100)) == 0.0
    assert clip_text_area([0.01, 0.2, 0.05]) == 0.2
    assert clip_text_area([]) == 0.0


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="short_side"):
        TextAreaConfig(short_side=16)
    with pytest.raises(ValueError, match="thresh"):
        TextAreaConfig(box_thresh=1.5)
    with pytest.raises(ValueError, match="not found"):
        TextAreaDetector(TextAreaConfig(model_path="/nonexistent/det.onnx"))
    assert default_model_path().endswith("ch_PP-OCRv4_det_infer.onnx")
