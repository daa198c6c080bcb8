"""scripts/bench_curation.py in process on one tiny generated video (and on a user's file): one JSON line whose
figures add up, the instrumented pipeline gives the clips the plain one does, and the instrumentation is undone."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

import data.curation.annotate as annotate
from data.curation.annotate import Annotators, curate_video
from data.curation.inputs import RawVideo
from tests.conftest import load_script

# One 64x96 video at 12 fps, 2-3 scenes of 2.5-3 s: about a second per repetition; two of the cut detectors alone.
TINY = ["--num-videos", "1", "--size", "64x96", "--fps", "12", "--scenes", "2,3", "--scene-seconds", "2.5,3"]
TINY += ["--reps", "2", "--detectors", "cascade,transnetv2"]


def _script() -> ModuleType:
    return load_script("bench_curation")


def _run(capsys, argv: list[str]) -> dict:
    assert _script().main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_bench_prints_one_json_line_whose_parts_add_up(capsys):
    originals = {name: getattr(annotate, name) for name in ("scan_video", "CutCascade", "write_clip", "read_frames")}
    r = _run(capsys, TINY)
    assert {name: getattr(annotate, name) for name in originals} == originals  # instrumentation undone
    assert (r["videos"], r["sizes_wh"], r["fps"], r["threads"], r["reps"]) == (1, ["96x64"], [12.0], 1, 2)
    assert r["clips"] >= 2 and r["frames"] == round(r["video_seconds"] * 12)
    s, rate = r["seconds"], r["clips_per_s_per_core"]
    assert s["captioner"] is None and rate["captioner"] is None and r["captioner"] == "none"
    for stage in ("decode", "probe", "cuts", "motion", "clipping", "keyframes", "text_area", "clip_scores"):
        assert s[stage] > 0, stage
        assert rate[stage] == pytest.approx(r["clips"] / s[stage], rel=2e-3)
        assert r["video_s_per_s_per_core"][stage] == pytest.approx(r["video_seconds"] / s[stage], rel=2e-3)
    # the scan holds cut detection and motion; the stages sum to the whole curate_video time
    assert s["cuts"] == pytest.approx(s["scan"] - s["motion"] + s["cut_result"], rel=1e-3, abs=1e-5)
    assert sum(r["scan_seconds"].values()) == pytest.approx(s["scan"], rel=1e-3, abs=1e-5)
    assert {"tap:adaptive@native", "tap:color_histogram@4fps", "tap:threshold@native", "tap:signal"} <= set(
        r["scan_seconds"]
    )
    parts = ["probe", "scan", "cut_result", "clipping", "keyframes", "text_area", "clip_scores", "other"]
    assert sum(s[k] for k in parts) == pytest.approx(s["full_pipeline"], rel=1e-3, abs=1e-5)
    assert s["pipeline"] == pytest.approx(s["full_pipeline"] - s["clip_scores"], rel=1e-3, abs=1e-5)
    assert r["pipeline_over_decode"] == pytest.approx(s["pipeline"] / s["decode"], rel=2e-3)
    assert r["full_pipeline_over_decode"] == pytest.approx(s["full_pipeline"] / s["decode"], rel=2e-3)
    assert len(r["pipeline_over_decode_reps"]) == 2 and r["target_cuts_motion_text_over_decode"] == 2.0
    assert set(r["cut_detectors"]) == {"cascade", "transnetv2"}
    for cost in r["cut_detectors"].values():
        assert cost["s_per_video_s_per_core"] > 0 and cost["over_decode"] > 0


def test_bench_on_a_users_file_with_a_captioner(tmp_path, capsys):
    from data.demo_data import write_demo_video

    path = tmp_path / "mine.mp4"
    write_demo_video(path, seconds=6.0, fps=12.0, size=(96, 64), seed=3, num_scenes=2)
    argv = ["--videos", str(path), "--reps", "1", "--detectors", "", "--no-clip-scores"]
    r = _run(capsys, [*argv, "--captioner", "coca", "--captioner-model", "tiny"])
    assert (r["source"], r["videos"], r["clip_model"], r["captioner"]) == ("files", 1, None, "coca:tiny")
    assert r["clips"] == 2  # one per scene
    assert r["seconds"]["clip_scores"] is None and r["seconds"]["captioner"] > 0
    assert r["clips_per_s_per_core"]["captioner"] == pytest.approx(2 / r["seconds"]["captioner"], rel=2e-3)


def test_instrumented_curate_video_gives_the_same_clips(tmp_path):
    from data.demo_data import write_demo_video

    path = tmp_path / "v.mp4"
    write_demo_video(path, seconds=6.0, fps=12.0, size=(96, 64), seed=5, num_scenes=2)
    raw = RawVideo(key="v", source=str(path), path=str(path), caption="a red square")
    script = _script()
    clock = script.StageClock()
    timed = script.build_annotators(script.parse_args(["--text-detect-px", "10"]), clock)
    with script.instrumented(clock):
        got = curate_video(raw, timed)
    want = curate_video(raw, Annotators.build(timed.cfg))
    assert [c.record for c in got.clips] == [c.record for c in want.clips] and len(want.clips) == 2
    assert [c.mp4 for c in got.clips] == [c.mp4 for c in want.clips]
    seconds = clock.take()
    assert {"probe", "scan", "motion", "cut_result", "clipping", "keyframes", "text_area", "clip_scores"} <= set(
        seconds
    )


def test_bench_refuses_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        _script().parse_args(["--reps", "0"])
    with pytest.raises(SystemExit):
        _script().parse_args(["--videos", str(tmp_path / "missing.mp4")])
    with pytest.raises(SystemExit):
        _script().parse_args(["--size", "64"])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="garbage.mp4: unreadable.*pass videos the curation can read"):
        _script().main(["--videos", str(garbage)])
