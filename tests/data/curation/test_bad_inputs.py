"""Bad inputs through the whole curation run with two spawned workers: every undecodable, empty, one-frame, audio-only
or too-short file and a truncated shard is skipped and counted (``summary.json``, the unit's ``stats.json``, the
report); rotated, odd-sized, variable-rate and cut-off videos are noted and still give clips that decode, upright
and with even sizes where re-encoded; a re-run over the same output annotates nothing."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data.curation.annotate import Annotators, curate_video
from data.curation.config import AnnotateConfig
from data.curation.inputs import RawVideo
from data.curation.keyframes import read_frames
from data.curation.runner import run
from data.demo_data import write_demo_video, write_tar_shard
from tests.data.curation.test_pipeline import curate_config, tree
from tests.data.curation.video_fixtures import encode_frames, textured_frames, write_audio_only

SIZE = (128, 96)  # (width, height) of the usable videos
# The skip each bad file must get (file name -> reason); the truncated shard adds one "undecodable".
SKIPPED = {
    "empty.mp4": "zero_length",
    "garbage.mp4": "unreadable",
    "no_index.mp4": "unreadable",  # cut in its data before the moov index at the end
    "corrupt.mp4": "undecodable",  # index intact, frame data replaced by noise
    "still.mp4": "single_frame",
    "audio.mp4": "no_video_stream",
    "short.mp4": "too_short",  # 1 s, under the 2 s minimum clip
}
# The notes each usable file must get (and nothing else, apart from "reencoded" per re-encoded clip).
NOTED = {
    "good.mp4": [],
    "truncated.mp4": ["truncated"],
    "odd.mp4": ["odd_resolution"],
    "rotated.mp4": ["rotated"],
    "vfr.mp4": ["variable_frame_rate"],
}
SCENE_FRAMES = 60  # the two-scene textured videos cut from texture 0 to texture 1 here


def _two_scenes(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``n`` frames of a panning texture with a hard cut at ``SCENE_FRAMES`` to another, darker one (two random
    textures of equal brightness and colour are not a clear cut for the histogram-based cut detectors)."""
    second = [frame // 2 for frame in textured_frames(n, size=size, seed=1)[SCENE_FRAMES:]]
    return textured_frames(n, size=size, seed=0)[:SCENE_FRAMES] + second


def _truncated_shard(path: Path) -> None:
    """A video2dataset shard whose first record is a good 2.5 s video and whose second is cut off mid-mp4."""
    members: dict[str, bytes] = {}
    for i, key in enumerate(("000000000", "000000001")):
        buf = io.BytesIO()
        write_demo_video(buf, seconds=2.5, fps=24.0, size=SIZE, seed=10 + i)
        members |= {f"{key}.mp4": buf.getvalue(), f"{key}.txt": f"video {i}".encode(), f"{key}.json": b"{}"}
    write_tar_shard(path, members)
    with tarfile.open(path) as tar:
        cut = next(m.offset_data + m.size // 2 for m in tar.getmembers() if m.name == "000000001.mp4")
    path.write_bytes(path.read_bytes()[:cut])


def write_bad_inputs(root: Path) -> tuple[Path, Path]:
    """The test inputs: a folder of good, damaged and odd videos, and a truncated shard beside it."""
    folder = root / "videos"
    folder.mkdir(parents=True)
    write_demo_video(folder / "good.mp4", seconds=5.0, fps=24.0, size=SIZE, seed=0, num_scenes=2)  # cut at 60
    # Frame index first (faststart), then cut 3/4 into the frame data: the frames before the cut are usable.
    full = encode_frames(root / "full.mp4", textured_frames(96, size=SIZE), faststart=True).read_bytes()
    mdat = full.index(b"mdat")
    (folder / "truncated.mp4").write_bytes(full[: mdat + (len(full) - mdat) * 3 // 4])
    corrupt = bytearray(full)
    corrupt[mdat + 4 :] = np.random.default_rng(1).integers(0, 256, len(full) - mdat - 4, np.uint8).tobytes()
    (folder / "corrupt.mp4").write_bytes(bytes(corrupt))
    late_index = (folder / "good.mp4").read_bytes()  # the demo encoder writes the moov index last
    (folder / "no_index.mp4").write_bytes(late_index[: len(late_index) // 2])
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    encode_frames(folder / "still.mp4", textured_frames(1, size=SIZE))
    write_audio_only(folder / "audio.mp4")
    encode_frames(folder / "short.mp4", textured_frames(24, size=SIZE))
    # Two scenes each and a keyframe only at frame 0: the first scene is stream-copied, the second re-encoded.
    encode_frames(folder / "odd.mp4", _two_scenes(120, (127, 95)), pix_fmt="yuv444p", gop=250)
    encode_frames(folder / "rotated.mp4", _two_scenes(120, SIZE), rotation_cw=90, gop=250)
    times = np.cumsum([0.0] + [1 / 30 if i % 2 else 1 / 15 for i in range(119)])  # a phone dropping frames
    encode_frames(folder / "vfr.mp4", _two_scenes(120, SIZE), times_s=times, gop=250)
    shard = root / "shards" / "broken.tar"
    shard.parent.mkdir()
    _truncated_shard(shard)
    return folder, shard


def _config(folder: Path, shard: Path, out: Path, *extra: str):
    return curate_config(f"['{folder}','{shard}']", out, "workers=2", *extra)


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bad_inputs")
    folder, shard = write_bad_inputs(root)
    out = root / "out"
    result = run(_config(folder, shard, out), progress=False)
    records = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    return {"folder": folder, "shard": shard, "out": out, "result": result, "records": records}


def _clip_files(out: Path) -> dict[str, bytes]:
    """Every curated clip's mp4 bytes by key, from the unit shards."""
    clips = {}
    for path in sorted((out / "clips").rglob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".mp4"):
                    clips[m.name.removesuffix(".mp4")] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return clips


def _by_video(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(Path(r["source"].split(":")[0]).name, []).append(r)
    return groups


def test_every_bad_input_is_skipped_and_counted(bad_run) -> None:
    out, result = bad_run["out"], bad_run["result"]
    units = len(SKIPPED) + len(NOTED) + 1  # one per file, and the shard
    assert result["annotate"]["units"] == result["annotate"]["annotated"] == units
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos"] == len(SKIPPED) + len(NOTED) + 1  # the shard's one readable record
    expected = Counter(SKIPPED.values()) + Counter(["undecodable"])  # the shard cut inside its second record
    assert summary["skips"] == dict(expected)
    reencoded = sum(r["cut_method"] == "reencode" for r in bad_run["records"])
    notes = Counter(n for names in NOTED.values() for n in names) + Counter({"reencoded": reencoded})
    assert summary["notes"] == dict(notes)
    assert summary["clips"] == len(bad_run["records"]) == result["annotate"]["clips"]


def test_every_problem_is_listed_in_its_units_stats(bad_run) -> None:
    out, folder, shard = bad_run["out"], bad_run["folder"], bad_run["shard"]
    for name, reason in SKIPPED.items():
        stats = json.loads((out / "annotations" / f"{Path(name).stem}.stats.json").read_text())
        assert stats["videos"] == 1 and stats["clips"] == 0 and stats["skips"] == {reason: 1}, stats
        [problem] = stats["problems"]
        assert problem["source"] == str(folder / name) and problem["reason"] == reason and problem["detail"]
    stats = json.loads((out / "annotations" / "shards" / "broken.stats.json").read_text())
    assert stats["videos"] == 1 and stats["clips"] == 1 and stats["skips"] == {"undecodable": 1}
    [problem] = stats["problems"]
    assert problem["source"] == str(shard) and problem["reason"] == "undecodable"
    assert "truncated_shard" in problem["detail"]
    for name, notes in NOTED.items():
        stats = json.loads((out / "annotations" / f"{Path(name).stem}.stats.json").read_text())
        assert stats["problems"] == [] and stats["skips"] == {} and stats["clips"] >= 1, stats
        assert {k: v for k, v in stats["notes"].items() if k != "reencoded"} == dict.fromkeys(notes, 1)


def test_the_report_shows_the_skips_and_notes(bad_run) -> None:
    out = bad_run["out"]
    summary = json.loads((out / "summary.json").read_text())
    for subset in ("pretrain", "high_quality"):
        page = (out / "report" / subset / "report.html").read_text()
        skips, notes = page.split("<h2>Skipped inputs</h2>")[1].split("<h2>Notes")
        for table, counts in ((skips, summary["skips"]), (notes, summary["notes"])):
            for reason, count in [*counts.items(), ("total", sum(counts.values()))]:
                assert f'<tr><td>{reason}</td><td class="n">{count}</td></tr>' in table, (subset, reason)


def test_usable_videos_give_clips_that_decode(bad_run) -> None:
    clips, groups = _clip_files(bad_run["out"]), _by_video(bad_run["records"])
    assert sorted(groups) == sorted([*NOTED, "broken.tar"])
    assert len(clips) == len(bad_run["records"])
    for r in bad_run["records"]:
        frames = read_frames(clips[r["key"]], list(range(r["num_frames"])))  # every frame the record counts
        assert frames.shape[1:3] == (r["height"], r["width"]), r["key"]
        if r["cut_method"] == "reencode":
            assert r["width"] % 2 == 0 and r["height"] % 2 == 0, r
    # One clip per scene, none across a cut; the first scene copied, the second (no keyframe in it) re-encoded.
    for name in ("good.mp4", "odd.mp4", "rotated.mp4", "vfr.mp4"):
        spans = sorted((r["start_frame"], r["end_frame"], r["cut_method"]) for r in groups[name])
        assert len(spans) == 2 and spans[0][1] <= SCENE_FRAMES <= spans[1][0], (name, spans)
        if name != "good.mp4":
            assert [s[2] for s in spans] == ["copy", "reencode"], (name, spans)
    sizes = {name: sorted({(r["width"], r["height"]) for r in groups[name]}) for name in groups}
    assert sizes["odd.mp4"] == [(126, 94), (127, 95)]  # copied as is, re-encoded cropped to even
    assert sizes["rotated.mp4"] == [(96, 128)]  # display size: coded 128x96 turned a quarter
    truncated = groups["truncated.mp4"]
    assert 48 <= sum(r["num_frames"] for r in truncated) < 96  # the frames before the cut
    assert all(r["fps"] == pytest.approx(24.0) for r in truncated)  # no rate error from the frames lost at the cut


def test_rotated_clips_decode_upright(bad_run) -> None:
    """Both the copied clip (display matrix kept) and the re-encoded one (pixels turned) show the source frames as a
    player does: turned a quarter clockwise."""
    clips = _clip_files(bad_run["out"])
    source = _two_scenes(120, SIZE)
    for r in _by_video(bad_run["records"])["rotated.mp4"]:
        for backend in ("decord", "pyav"):
            first = read_frames(clips[r["key"]], [0], backend=backend)[0].astype(np.float32)
            assert first.shape == (SIZE[0], SIZE[1], 3)
            cw = np.abs(first - np.rot90(source[r["start_frame"]], k=-1)).mean()
            ccw = np.abs(first - np.rot90(source[r["start_frame"]], k=1)).mean()
            assert cw < 6 < ccw, (r["key"], r["cut_method"], backend, cw, ccw)


def test_each_skip_is_logged_in_one_line_naming_the_file(bad_run, caplog) -> None:
    annotators = Annotators(AnnotateConfig())  # no models: a skipped input never reaches them
    for name, reason in SKIPPED.items():
        path = bad_run["folder"] / name
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="data.curation"):
            outcome = curate_video(RawVideo(key=path.stem, source=str(path), path=str(path)), annotators)
        assert dict(outcome.skips) == {reason: 1} and not outcome.clips
        [line] = [r.getMessage() for r in caplog.records]
        assert str(path) in line and reason in line and "\n" not in line, line


def test_a_rerun_annotates_nothing(bad_run) -> None:
    out = bad_run["out"]
    before = tree(out)
    result = run(_config(bad_run["folder"], bad_run["shard"], out), progress=False)
    assert result["annotate"]["annotated"] == 0 and result["annotate"]["clips"] == 0
    assert tree(out) == before
