"""Confirmation of detected transitions (data/curation/shot_signal.py) on generated footage with in-shot change that
fires the detectors: an object passing close to a static camera, an exposure drop, flicker, a camera flash; the
real cut in the same video must stay, and turning the confirmation off must bring the false ones back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.curation.cuts import CutConfig, detect_cuts
from data.curation.probe import probe_video
from data.curation.shot_signal import _similarity
from tests.data.curation.video_fixtures import encode_frames

W, H = 160, 96


def _scene(seed: int) -> np.ndarray:
    """A static scene: smooth random blobs (detail in brightness, colour varying slowly)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(30, 225, (H // 8, W // 8, 3)).astype(np.float32)
    big = np.repeat(np.repeat(small, 8, 0), 8, 1)
    return np.clip(big + rng.normal(0, 4, big.shape), 0, 255).astype(np.uint8)


def _in_shot_events_then_a_cut() -> tuple[list[np.ndarray], int]:
    a, b = _scene(1), _scene(2)
    frames = [a.copy() for _ in range(72)]
    for k, x in enumerate(range(-60, W + 60, 45)):  # a dark van passes close to the lens: 5 frames, 80% of the frame
        f = frames[30 + k]
        f[:, max(x, 0) : max(min(x + 130, W), 0)] = 20
    frames[55] = np.full_like(a, 250)  # a camera flash
    cut = len(frames)
    scene_b = [b.copy() for _ in range(96)]
    for k in range(12):  # auto-exposure: the picture darkens to 55% over half a second
        scene_b[20 + k] = (b * (1 - 0.45 * (k + 1) / 12)).astype(np.uint8)
    for k in range(32, 96):
        scene_b[k] = (b * 0.55).astype(np.uint8)
    for k in range(50, 66, 2):  # flicker: every second frame much brighter
        scene_b[k] = np.clip(b * 1.1 + 60, 0, 255).astype(np.uint8)
    return frames + scene_b, cut


@pytest.fixture(scope="module")
def events_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    frames, cut = _in_shot_events_then_a_cut()
    return encode_frames(tmp_path_factory.mktemp("confirm") / "events.mp4", frames), cut


@pytest.mark.parametrize("detector", ["cascade", "transnetv2", "combined"])
def test_in_shot_events_are_rejected_and_the_cut_stays(events_video: tuple[Path, int], detector: str) -> None:
    path, cut = events_video
    result = detect_cuts(str(path), probe_video(path), CutConfig(detector=detector), threads=1)
    assert [(t.frame, t.kind) for t in result.transitions] == [(cut, "cut")], result.rejected
    assert result.scenes == [(0, cut), (cut, result.num_frames)]


def test_without_confirmation_the_events_split_the_shots(events_video: tuple[Path, int]) -> None:
    path, cut = events_video
    off = CutConfig(same_shot_similarity=1.0, min_monotonicity=0.0)
    result = detect_cuts(str(path), probe_video(path), off, threads=1)
    assert cut in [t.frame for t in result.transitions] and len(result.transitions) >= 2
    on = detect_cuts(str(path), probe_video(path), CutConfig(), threads=1)
    assert len(on.rejected) == len(result.transitions) - 1 and all(why for _, why in on.rejected)


def test_similarity_ignores_brightness_and_contrast_and_handles_flat_pictures() -> None:
    x = _scene(3)[:18, :32, 1].astype(np.float32)
    assert _similarity(x, 0.5 * x + 40) == pytest.approx(1.0, abs=1e-5)
    assert _similarity(x, _scene(4)[:18, :32, 1].astype(np.float32)) < 0.5
    black, near_black, grey = np.zeros((18, 32)), np.full((18, 32), 6.0), np.full((18, 32), 128.0)
    assert _similarity(black, near_black) == 1.0  # one dark picture
    assert _similarity(black, grey) == 0.0 and _similarity(black, x) == 0.0  # a cut from black is a change


def test_a_cut_between_two_flat_pictures_of_different_level_stays(tmp_path: Path) -> None:
    frames = [np.full((H, W, 3), 16, np.uint8)] * 48 + [np.full((H, W, 3), 140, np.uint8)] * 48
    path = encode_frames(tmp_path / "flat.mp4", frames)
    result = detect_cuts(str(path), probe_video(path), CutConfig(), threads=1)
    assert [t.frame for t in result.transitions] == [48], result.rejected
