"""The camera_motion annotation (data/curation/camera_motion.py) on ground truth made exactly from the real
calibration footage (pans, tilts, zooms and static crops of static-camera clips, data/curation/camera_truth.py),
on the calibration set's static shots with moving foreground, and on the demo's synthetic pans and zooms."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from data.curation.camera_motion import LABELS, CameraMotionConfig, camera_label, fit_camera
from data.curation.camera_truth import camera_rows, demo_shots, measure, summarize
from data.curation.motion import MotionConfig
from tests.data.curation.annot_fixtures import pan_frames

CALIBRATION = Path(__file__).resolve().parents[4] / "shared" / "calibration"
needs_calibration = pytest.mark.skipif(
    not (CALIBRATION / "cuts" / "truth.json").is_file(), reason="no ../shared/calibration"
)
MOTION, CAMERA = MotionConfig(), CameraMotionConfig()


@pytest.fixture(scope="module")
def rows() -> list[tuple[object, dict]]:
    """Every calibration shot with its measured fields (no demo scenes: their own test draws them)."""
    return camera_rows(CALIBRATION, MOTION, CAMERA, demo_seeds=range(0))


@pytest.fixture(scope="module")
def derived(rows) -> list[tuple[object, dict]]:
    return [(s, f) for s, f in rows if s.kind == "derived"]


def test_fit_recovers_a_similarity_field_despite_a_moving_object() -> None:
    h, w = 16, 28
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = (xs + 0.5 - w / 2) / h, (ys + 0.5 - h / 2) / h
    t, s = (0.02, -0.01), 0.03
    flow = np.stack([t[0] + s * x, t[1] + s * y], axis=-1) * h  # map pixels
    flow[3:9, 4:12] = (2.0, 1.0)  # a foreground object moving on its own over 1/8 of the frame
    tx, ty, fs, r = fit_camera(flow)
    assert (tx, ty, fs, r) == pytest.approx((0.02, -0.01, 0.03, 0.0), abs=1e-6)


def test_label_rule_and_sign_convention() -> None:
    cfg = CameraMotionConfig(min_pan=0.03, min_zoom=0.04)
    assert camera_label(0.01, -0.02, 0.03, cfg) == "static"
    assert camera_label(0.05, 0.0, 0.0, cfg) == "pan_right"
    assert camera_label(-0.05, 0.04, 0.0, cfg) == "pan_left"  # mixed: the larger threshold ratio wins
    assert camera_label(0.0, 0.05, 0.0, cfg) == "tilt_up"
    assert camera_label(0.04, -0.02, -0.08, cfg) == "zoom_out"
    assert set(LABELS) == {"static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out"}
    with pytest.raises(ValueError, match="min_pan"):
        CameraMotionConfig(min_pan=0.0)
    # Content moving left (flow -x) is the camera panning right, at the pan's speed in short sides per second.
    t = np.arange(60) / 24
    frames = pan_frames(t, velocity=(0.1, 0.0), size=(128, 96))  # the texture window moves right
    fields = measure_frames(frames, t)
    assert fields["camera_motion"] == "pan_right" and fields["camera_tx"] == pytest.approx(0.1, rel=0.05)


def measure_frames(frames: np.ndarray, times: np.ndarray) -> dict:
    from data.curation.camera_truth import Shot

    return measure(Shot("x", "derived", "", (0.0, 0.0, 0.0), frames, times), MOTION, CAMERA)


@needs_calibration
def test_every_derived_real_clip_gets_its_label(derived) -> None:
    wrong = [(s.name, f) for s, f in derived if f["camera_motion"] != s.label]
    assert not wrong, wrong
    assert {s.label for s, _ in derived} == set(LABELS)
    assert {s.frames.shape[1:3] for s, _ in derived} == {(216, 384), (108, 192)}  # two sizes, two frame rates


@needs_calibration
def test_camera_fields_order_pan_and_zoom_speeds(derived) -> None:
    groups: dict[str, dict[tuple[str, float], dict]] = {}
    for shot, fields in derived:
        groups.setdefault(shot.group, {})[shot.label, shot.speed] = fields
    assert len(groups) == 8  # 2 sources x 2 frame rates x 2 sizes
    for name, g in groups.items():
        static = g["static", 0.0]
        tx = [g["pan_left", 0.25]["camera_tx"], g["pan_left", 0.08]["camera_tx"], static["camera_tx"],
              g["pan_right", 0.08]["camera_tx"], g["pan_right", 0.25]["camera_tx"]]  # fmt: skip
        ty = [g["tilt_down", 0.25]["camera_ty"], g["tilt_down", 0.08]["camera_ty"], static["camera_ty"],
              g["tilt_up", 0.08]["camera_ty"], g["tilt_up", 0.25]["camera_ty"]]  # fmt: skip
        zoom = [g["zoom_out", 0.3]["camera_zoom"], g["zoom_out", 0.1]["camera_zoom"], static["camera_zoom"],
                g["zoom_in", 0.1]["camera_zoom"], g["zoom_in", 0.3]["camera_zoom"]]  # fmt: skip
        for values in (tx, ty, zoom):
            assert all(a < b for a, b in zip(values, values[1:], strict=False)), (name, values)


@needs_calibration
def test_static_shots_with_moving_foreground_stay_static(rows) -> None:
    got = {s.name: f for s, f in rows if s.kind == "static_real"}
    assert len(got) >= 14 and any("vehicles" in n for n in got) and any("hands" in n for n in got)
    moving = {n: f for n, f in got.items() if f["camera_motion"] != "static"}
    assert not moving, moving
    # Far inside the thresholds, not just below them.
    assert max(abs(f["camera_tx"]) + abs(f["camera_ty"]) for f in got.values()) < CAMERA.min_pan / 2
    assert max(abs(f["camera_zoom"]) for f in got.values()) < CAMERA.min_zoom / 2


@needs_calibration
def test_eval_figures(rows) -> None:
    figures = summarize(rows)
    assert figures["camera_order_ok"] and figures["camera_accuracy"] == 1.0, figures["camera_wrong"]
    assert figures["camera_accuracy_per_kind"] == {"derived": 1.0, "static_real": 1.0, "synthetic": None}
    assert set(figures["camera_accuracy_per_label"]) == set(LABELS)


def test_demo_synthetic_pans_and_zooms() -> None:
    results = [(shot, measure(shot, MOTION, CAMERA)) for shot in demo_shots(range(3))]
    labels = [(s.label, f["camera_motion"]) for s, f in results]
    assert sum(a == b for a, b in labels) >= 0.9 * len(labels), labels
    opposite = {"pan_left": "pan_right", "pan_right": "pan_left", "tilt_up": "tilt_down", "tilt_down": "tilt_up",
                "zoom_in": "zoom_out", "zoom_out": "zoom_in"}  # fmt: skip
    assert not [x for x in labels if opposite.get(x[0]) == x[1]], labels  # never the wrong direction
    assert all(b == "static" for a, b in labels if a == "static")


def _records() -> list[dict]:
    labels = ["zoom_in", "pan_left", "static", "pan_right", None, "zoom_in"]
    return [{"key": f"k{i}", "camera_motion": lab, "motion_score": float(i)} for i, lab in enumerate(labels)]


def test_curation_filter_selects_a_lora_set_by_label() -> None:
    from data.curation.config import SubsetConfig, from_mapping
    from data.curation.filters import FilterConfig, FilterSpec, apply_filters, freeze_thresholds

    cfg = FilterConfig((FilterSpec("camera_motion", values=("pan_left", "pan_right")),))
    result = apply_filters(_records(), cfg)
    assert result.kept == ["k1", "k3"] and result.missing == {"missing_camera_motion": 1}
    assert freeze_thresholds(cfg, result) == cfg
    # From the yaml a subset's filters read as in conf/curate/filters/: values with a numeric filter after it.
    subset = from_mapping(SubsetConfig, {"filters": {"filters": [
        {"field": "camera_motion", "values": ["zoom_in"]}, {"field": "motion_score", "min": 1.0}]}})  # fmt: skip
    assert apply_filters(_records(), subset.filters).kept == ["k5"]
    assert subset.filters.filters[0].describe().startswith("one of zoom_in")
    with pytest.raises(ValueError, match="categorical filter has neither"):
        FilterSpec("camera_motion", values=("zoom_in",), min=0.0)
    with pytest.raises(ValueError, match="empty values"):
        FilterSpec("camera_motion", values=())


def test_training_stream_filter_selects_by_label_and_the_train_config_takes_values(compose_train) -> None:
    from data.stream import MetadataFilter
    from train.builders import dataset_config

    flt = MetadataFilter("camera_motion", values=["zoom_in", "zoom_out"])
    assert [flt.passes(r) for r in _records()] == [True, False, False, False, False, True]
    assert MetadataFilter("n", values=["3", "true"]).passes({"n": 3}) and MetadataFilter("n", values=["true"]).passes(
        {"n": True}
    )
    with pytest.raises(ValueError, match="categorical filter has no bounds"):
        MetadataFilter("camera_motion", values=["zoom_in"], max=1.0)
    with pytest.raises(ValueError, match="empty values"):
        MetadataFilter("camera_motion", values=[])
    cfg = compose_train(
        "stage=video_finetune", "experiment=demo", "data.filters=[{field: camera_motion, values: [zoom_in]}]"
    )
    (built,) = dataset_config(cfg, seed=0).stream.filters
    assert built == MetadataFilter("camera_motion", values=("zoom_in",))


@pytest.fixture
def compose_train():
    from hydra import compose, initialize_config_dir

    from train.config import register_configs

    register_configs()

    def _compose(*overrides: str):
        conf = Path(__file__).resolve().parents[3] / "conf"
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return compose("train", overrides=list(overrides))

    return _compose


def test_demo_scene_zoom_field() -> None:
    from data.demo_scenes import random_scene, render_scene, scene_captions

    plain = random_scene(np.random.default_rng(5), num_frames=6, speed="slow", pan=False)
    zoomed = random_scene(np.random.default_rng(5), num_frames=6, speed="slow", pan=False, zoom="in")
    assert dataclasses.replace(zoomed, zoom=None) == plain  # the same scene, only the camera zooms
    a, b = render_scene(plain, size=(64, 48)), render_scene(zoomed, size=(64, 48))
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[-1], b[-1])  # magnification 1 at frame 0
    assert "zooms in" in scene_captions(zoomed)["caption"]
    with pytest.raises(ValueError, match="zoom must be"):
        dataclasses.replace(plain, pan=True, zoom="out")
    with pytest.raises(ValueError, match="zoom must be"):
        dataclasses.replace(plain, zoom="sideways")
