"""The curation scorer's matching rules (data/curation/scoring.py) on synthetic truth, and the eval script on a
synthetic labelled folder (so a user's own labelled footage in the calibration layout is scored the same way)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.curation.scoring import kendall_tau, match_transitions, prf, score_cuts, text_area_bound, where_in_truth
from data.demo_data import raw_video_sample

REPO = Path(__file__).resolve().parents[3]


def _cut(end: int) -> dict:
    return {"kind": "cut", "start_frame": end - 1, "end_frame": end}


def _fade(start: int, end: int, kind: str = "crossfade") -> dict:
    return {"kind": kind, "start_frame": start, "end_frame": end}


@pytest.mark.parametrize(("p", "hit"), [(98, True), (100, True), (102, True), (97, False), (103, False)])
def test_a_cut_is_hit_within_two_frames_of_its_end_frame(p: int, hit: bool) -> None:
    match = match_transitions([p], [_cut(100)])
    assert (match.hits == [(0, 0)]) is hit
    assert match.false == ([] if hit else [0]) and match.missed == ([] if hit else [0])


@pytest.mark.parametrize(("p", "hit"), [(10, False), (11, True), (15, True), (20, True), (21, False)])
def test_a_gradual_transition_is_hit_inside_start_exclusive_end_inclusive(p: int, hit: bool) -> None:
    for kind in ("crossfade", "fade"):
        assert bool(match_transitions([p], [_fade(10, 20, kind)]).hits) is hit


def test_one_detection_per_transition_and_the_rest_are_false() -> None:
    # a fade found twice: one hit, one false transition; a detection between two cuts goes to the closer one
    match = match_transitions([12, 18, 51], [_fade(10, 20), _cut(50), _cut(53)])
    assert match.hits == [(0, 0), (1, 2)] and match.false == [1] and match.missed == [2]
    # the closest pairs win: 52 is 1 from 53 and 2 from 50, 50 takes the other
    assert match_transitions([50, 52], [_cut(50), _cut(53)]).hits == [(0, 0), (1, 1)]
    assert match_transitions([], [_cut(5)]).missed == [0]
    with pytest.raises(ValueError, match="cut, crossfade or fade"):
        match_transitions([5], [{"kind": "wipe", "start_frame": 1, "end_frame": 9}])


def test_precision_recall_f1_and_kendall_tau() -> None:
    assert prf(3, 4, 3) == pytest.approx({"precision": 0.75, "recall": 1.0, "f1": 6 / 7})
    assert prf(0, 0, 0)["f1"] == 1.0 and prf(0, 2, 0)["f1"] == 0.0
    assert kendall_tau([1, 2, 3, 4], [0, 1, 2, 3]) == 1.0
    assert kendall_tau([4, 3, 2, 1], [0, 1, 2, 3]) == -1.0
    assert kendall_tau([1, 3, 2, 4], [0, 1, 2, 3]) == pytest.approx(4 / 6)


def test_false_detections_say_where_they_lie() -> None:
    entry = {"transitions": [_fade(30, 60, "fade")], "in_shot_events": [{"start_frame": 100, "end_frame": 104,
                                                                           "what": "car passes"}]}  # fmt: skip
    assert where_in_truth(103, entry) == "in-shot event: car passes"
    assert where_in_truth(45, entry).startswith("second detection of the fade")
    assert where_in_truth(200, entry) == "inside a shot"


def test_score_cuts_sums_over_files(tmp_path: Path) -> None:
    (tmp_path / "cuts").mkdir()
    truth = {
        "a.mp4": {"fps": 24, "frame_count": 240, "transitions": [_cut(50), _fade(100, 120)]},
        "b.mp4": {"fps": 24, "frame_count": 120, "transitions": [], "in_shot_events": []},
    }
    (tmp_path / "cuts" / "truth.json").write_text(json.dumps(truth))
    found = {"a.mp4": [51, 110, 200], "b.mp4": [7]}
    score = score_cuts(tmp_path, lambda p: found[p.name])
    assert score is not None
    summary = score.summary()
    assert summary["cut_recall"] == 1.0 and summary["cut_precision"] == 0.5 and summary["false_transitions"] == 2
    assert summary["recall_per_kind"] == {"crossfade": 1.0, "cut": 1.0}
    assert score.per_file["b.mp4"]["false"] == [7]
    assert score_cuts(tmp_path / "nothing", lambda p: []) is None


def test_text_threshold_comes_from_the_filter_file() -> None:
    assert text_area_bound(REPO / "conf" / "curate" / "filters" / "high_quality.yaml") == 0.01
    with pytest.raises(ValueError, match="no absolute text_area bound"):
        text_area_bound(REPO / "conf" / "curate" / "filters" / "pretraining.yaml")


def test_eval_script_on_a_labelled_folder_of_demo_videos(tmp_path: Path) -> None:
    """A user's own labels in the calibration layout: two demo raw videos (truth from the generator, converted to
    the calibration convention) and two images; the script prints one JSON line with every figure."""
    (tmp_path / "cuts").mkdir()
    truth = {}
    for seed in (0, 1):
        name = f"demo{seed}"
        members = raw_video_sample(seed, 0, fps=24.0, size=(128, 96), key=name)
        (tmp_path / "cuts" / f"{name}.mp4").write_bytes(members[f"{name}.mp4"])
        meta = json.loads(members[f"{name}.json"])
        transitions = []
        for t in meta["transitions"]:  # demo: [start, end) mixed frames; calibration: the unmixed frames around
            kind = {"cut": "cut", "crossfade": "crossfade", "fade_black": "fade"}[t["type"]]
            start = t["frame"] - 1 if kind == "cut" else t["start_frame"] - 1
            transitions.append(
                {"kind": kind, "start_frame": start, "end_frame": t["frame"] if kind == "cut" else t["end_frame"]}
            )
        truth[f"{name}.mp4"] = {"fps": 24, "frame_count": meta["num_frames"], "transitions": transitions}
    (tmp_path / "cuts" / "truth.json").write_text(json.dumps(truth))
    (tmp_path / "text").mkdir()
    blank = np.full((96, 128, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "text" / "plain.png"), blank)
    cv2.putText(blank, "OPEN", (8, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 3)
    cv2.imwrite(str(tmp_path / "text" / "sign.png"), blank)
    (tmp_path / "text" / "truth.json").write_text(json.dumps({
        "plain.png": {"has_text": False, "text_area_fraction": 0.0},
        "sign.png": {"has_text": True, "text_area_fraction": 0.15},
    }))  # fmt: skip
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "eval_curation.py"), str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["cut_f1"] == 1.0 and result["false_transitions"] == 0
    assert result["text_accuracy"] == 1.0 and "motion_order_ok" not in result
    assert "camera_accuracy" not in result  # its shots are made of the calibration set's own clips
    assert "cuts (cascade): F1 1.000" in run.stderr


def test_eval_script_refuses_a_folder_without_truth(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "eval_curation.py"), str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 2 and "holds none of cuts/truth.json" in run.stderr
