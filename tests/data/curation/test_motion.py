"""The motion score: its unit (a pan of known speed), invariances, demo-scene ordering and clip windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data.curation.motion import MotionConfig, MotionTap, motion_score, sample_indices
from data.curation.taps import FrameTap
from tests.data.curation.annot_fixtures import demo_scene_frames, pan_frames


def _times(seconds: float, fps: float) -> np.ndarray:
    return np.arange(int(round(seconds * fps))) / fps


@pytest.mark.parametrize("speed", [0.05, 0.15, 0.25])
def test_pan_score_is_speed_in_16px_map_pixels_per_second(speed: float) -> None:
    t = _times(2.5, 24)
    frames = pan_frames(t, velocity=(0.8 * speed, 0.6 * speed), size=(128, 96))
    # A pan of `speed` short sides per second moves 16 * speed pixels per second on the 16-px map.
    assert motion_score(frames, t) == pytest.approx(16 * speed, rel=0.02)


def test_score_independent_of_native_fps_and_resolution() -> None:
    velocity = (0.12, -0.05)
    scores = {}
    for fps in (24, 25, 30):
        t = _times(3.0, fps)
        scores[f"{fps}fps"] = motion_score(pan_frames(t, velocity=velocity, size=(128, 96)), t)
    t = _times(3.0, 24)
    scores["256x192"] = motion_score(pan_frames(t, velocity=velocity, size=(256, 192)), t)
    scores["portrait"] = motion_score(pan_frames(t, velocity=velocity, size=(96, 128)), t)
    scores["flow@128"] = motion_score(
        pan_frames(t, velocity=velocity, size=(256, 192)), t, MotionConfig(short_side=128)
    )
    ref = 16 * math.hypot(*velocity)
    for name, score in scores.items():
        assert score == pytest.approx(ref, rel=0.03), name


def test_demo_scenes_order_static_slow_fast() -> None:
    # Rendered at 8 fps the demo's fast shapes move 0.31 short sides/s, inside the 2-fps range (see motion.py).
    for seed in range(3):
        got = {
            speed: motion_score(frames, _times(3.0, 8), MotionConfig(fps=2.0))
            for speed in ("static", "slow", "fast")
            for frames in [demo_scene_frames(seed, speed=speed, seconds=3.0, fps=8, size=(128, 96))]
        }
        assert got["static"] < 0.05 < got["slow"] < got["fast"], (seed, got)


def test_demo_data_scenes_order_static_slow_fast_at_the_default_4_fps() -> None:
    # The demo data's 24-fps scenes: fast shapes move 0.94 short sides/s, beyond the 2-fps range but inside 4 fps.
    for seed in range(6):
        got = {
            speed: motion_score(frames, _times(3.0, 24))
            for speed in ("static", "slow", "fast")
            for frames in [demo_scene_frames(seed, speed=speed, seconds=3.0, fps=24, size=(128, 96))]
        }
        assert got["static"] < 0.05 < got["slow"] < got["fast"], (seed, got)


def test_tap_windows_exclude_pairs_across_a_cut() -> None:
    a = demo_scene_frames(0, speed="static", seconds=2.0, fps=2, size=(96, 64))
    b = demo_scene_frames(1, speed="static", seconds=2.0, fps=2, size=(96, 64))
    tap: FrameTap = MotionTap(MotionConfig(fps=2.0))  # the scan's protocol (not runtime_checkable)
    assert (tap.fps, tap.short_side) == (2.0, 64)
    assert MotionTap().fps == 4.0  # the default
    for i, frame in enumerate(np.concatenate([a, b])):
        tap.push(i, i / 2, frame)
    assert isinstance(tap, MotionTap)
    assert [p[:2] for p in tap.pairs] == [(i / 2, (i + 1) / 2) for i in range(7)]
    cut_pair = tap.pairs[3]  # 1.5 s -> 2.0 s joins two different scenes
    assert cut_pair[2] > 0.5
    assert tap.clip_score(0.0, 2.0) < 0.05 and tap.clip_score(2.0, 4.0) < 0.05
    assert tap.clip_score(0.0, 4.0) == pytest.approx(np.mean([p[2] for p in tap.pairs]))
    assert tap.clip_score(0.0, 2.0) == pytest.approx(np.mean([p[2] for p in tap.pairs[:3]]))
    assert tap.clip_score(1.6, 2.4) is None  # no pair lies inside


def test_tap_matches_standalone_and_resizes_frames() -> None:
    t = _times(2.0, 24)
    frames = pan_frames(t, velocity=(0.1, 0.0), size=(160, 120))
    tap = MotionTap()
    for i in sample_indices(t, 4.0):
        tap.push(i, float(t[i]), frames[i])  # native 120-px frames: the tap resizes to 64 px itself
    assert tap.clip_score(0.0, 2.0) == pytest.approx(motion_score(frames, t))


def test_sample_indices_follow_the_scan_rule() -> None:
    assert sample_indices(_times(2.0, 24), 2.0) == [0, 12, 24, 36]
    assert sample_indices(_times(1.6, 25), 2.0) == [0, 13, 25, 38]  # first frame at or after 0.5, 1.0, 1.5 s
    assert sample_indices([0.0, 0.4999999, 1.2, 1.3, 3.0], 2.0) == [0, 1, 2, 4]
    assert sample_indices([], 2.0) == []


def test_too_few_samples_and_bad_input() -> None:
    frames = demo_scene_frames(0, speed="slow", seconds=0.2, fps=10, size=(64, 64))
    assert motion_score(frames, _times(0.2, 10)) is None  # one 4-fps sample, no pair
    with pytest.raises(ValueError, match="timestamps"):
        motion_score(frames, [0.0])
    with pytest.raises(ValueError, match="uint8"):
        motion_score(frames.astype(np.float32), _times(0.2, 10))
    with pytest.raises(ValueError, match="flow_short_side"):
        MotionConfig(short_side=8)
