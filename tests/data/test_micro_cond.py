"""fps_id and motion_bucket_id: the documented mapping, its inverse, and the defaults."""

from __future__ import annotations

import math

import pytest

from data.micro_cond import MicroCondConfig, MotionBucketMapping, fps_from_id, fps_id_for, motion_bucket_for


@pytest.mark.parametrize(
    ("fps", "offset", "expected"),
    [(7.0, -1, 6), (6.0, -1, 5), (8.0, -1, 7), (7.0, 0, 7), (24 / 4, -1, 5), (29.97 / 5, -1, 5), (0.4, -1, 0)],
)
def test_fps_id(fps, offset, expected):
    cfg = MicroCondConfig(fps_id_offset=offset)
    assert fps_id_for(fps, cfg) == expected


def test_fps_id_inverse_and_errors():
    cfg = MicroCondConfig()
    assert all(fps_from_id(fps_id_for(float(f), cfg), cfg) == f for f in range(1, 31))
    with pytest.raises(ValueError, match="effective_fps"):
        fps_id_for(0.0, cfg)


def test_default_mapping_is_log():
    m = MotionBucketMapping()
    assert (m.kind, m.scale) == ("log", 90.0)
    assert m.bucket(0.0) == 0 and m.bucket(1.0) == 62 and m.bucket(8.0) == 198
    assert m.bucket(3.1) == 127  # moderate motion (a fifth of the frame per second) at the inference default
    assert m.bucket(16.0) == 255 and m.bucket(100.0) == 255 and m.bucket(math.inf) == 255
    assert m.bucket(-1.0) == 0 and m.bucket(math.nan) == 0
    assert all(m.bucket(m.score(b)) == b for b in range(256))


def test_linear_mapping():
    m = MotionBucketMapping(kind="linear", scale=32.0)
    assert m.bucket(0.0) == 0
    assert m.bucket(4.0) == 128
    assert m.bucket(100.0) == 255 and m.bucket(math.inf) == 255
    assert m.bucket(-1.0) == 0 and m.bucket(math.nan) == 0
    assert all(m.bucket(m.score(b)) == b for b in range(256))


def test_log_mapping_and_inverse():
    m = MotionBucketMapping(kind="log", scale=60.0, offset=10.0, max_bucket=511)
    assert m.bucket(0.0) == 10 and m.bucket(math.e - 1) == 70
    assert all(m.bucket(m.score(b)) == b for b in range(10, 512))
    assert m.score(0) == 0.0  # below the offset everything is "no motion"
    with pytest.raises(ValueError, match="bucket"):
        m.score(512)


def test_motion_bucket_from_json():
    cfg = MicroCondConfig(motion=MotionBucketMapping(kind="linear", scale=10.0))
    assert motion_bucket_for({"motion_score": 3.0}, cfg) == (30, False)
    assert motion_bucket_for({}, cfg) == (127, True)
    assert motion_bucket_for(None, cfg) == (127, True)
    assert motion_bucket_for({"motion_score": "fast"}, cfg) == (127, True)
    assert motion_bucket_for({"motion_score": None}, cfg) == (127, True)
    nested = MicroCondConfig(motion_score_key="flow.mean", default_motion_bucket=100)
    assert motion_bucket_for({"flow": {"mean": 1.0}}, nested) == (62, False)
    assert motion_bucket_for({"flow": 1.0}, nested) == (100, True)


@pytest.mark.parametrize(
    "make",
    [
        lambda: MotionBucketMapping(kind="sqrt"),
        lambda: MotionBucketMapping(scale=0.0),
        lambda: MotionBucketMapping(max_bucket=0),
        lambda: MicroCondConfig(default_motion_bucket=300),
        lambda: MicroCondConfig(motion_score_key=""),
    ],
)
def test_bad_config(make):
    with pytest.raises(ValueError):
        make()
