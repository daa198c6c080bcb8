"""The demo-data generator: shard layout, decodability, captions, determinism and the visual ground truth."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from collections import defaultdict
from pathlib import Path
from types import ModuleType

import decord
import numpy as np
import pytest
from PIL import Image

from data.demo_data import (
    VideoPlan,
    render_video,
    sample_rng,
    write_demo_dataset,
    write_demo_video,
    write_video,
)
from data.demo_scenes import SceneSpec, random_scene, render_scene, scene_captions, text_area_fraction
from data.video_encode import encode_video
from tests.conftest import load_script

SIZE = (96, 64)


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _by_key(members: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = defaultdict(dict)
    for name, data in members.items():
        key, ext = name.split(".", 1)
        out[key][ext] = data
    return out


def _decode(data: bytes) -> tuple[np.ndarray, float]:
    vr = decord.VideoReader(io.BytesIO(data))
    return vr.get_batch(list(range(len(vr)))).asnumpy(), vr.get_avg_fps()


def _diffs(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float32)
    return np.abs(f[1:] - f[:-1]).mean(axis=(1, 2, 3))  # diffs[i] = |frame i+1 - frame i|


def _load_cli() -> ModuleType:
    return load_script("make_demo_data")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    manifest = write_demo_dataset(
        out, seed=3, num_raw_videos=2, num_clips=4, num_images=8, samples_per_shard=3, size=SIZE, fps=24.0
    )
    return out, manifest


def test_manifest_lists_the_shards_on_disk(dataset: tuple[Path, dict]) -> None:
    out, manifest = dataset
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["counts"] == {"raw": 2, "clips": 4, "images": 8}
    assert manifest["shards"]["clips"] == ["clips/00000.tar", "clips/00001.tar"]
    assert len(manifest["shards"]["images"]) == 3
    for shards in manifest["shards"].values():
        assert all((out / s).is_file() for s in shards)
    assert not list(out.rglob(".*tmp*")), "temporary files left behind"


@pytest.mark.parametrize("kind", ["raw", "clips"])
def test_video_shards_have_members_decode_and_match_their_json(dataset: tuple[Path, dict], kind: str) -> None:
    out, manifest = dataset
    keys = []
    for shard_id, shard in enumerate(manifest["shards"][kind]):
        for key, sample in _by_key(_members(out / shard)).items():
            keys.append(key)
            assert len(key) == 9 and key.startswith(f"{shard_id:05d}")
            assert set(sample) == {"mp4", "json", "txt"}
            meta = json.loads(sample["json"])
            assert meta["key"] == key and meta["status"] == "success" and meta["url"].startswith("demo://")
            assert meta["caption"] and sample["txt"].decode() == meta["caption"]
            assert (meta["width"], meta["height"], meta["video_fps"]) == (*SIZE, 24.0)
            frames, fps = _decode(sample["mp4"])
            assert frames.shape == (meta["num_frames"], SIZE[1], SIZE[0], 3)
            assert fps == pytest.approx(24.0)
            assert meta["duration"] == pytest.approx(meta["num_frames"] / 24.0, abs=1e-4)
            if kind == "clips":
                assert set(meta["captions"]) == {"coca", "vblip", "llm"} and all(meta["captions"].values())
                assert 2.0 <= meta["duration"] <= 12.0
                assert meta["motion_score"] >= 0 and (meta["motion_score"] == 0) == (meta["speed"] == "static")
                assert (meta["text_area"] > 0.05) == meta["has_text"]
            else:
                assert "motion_score" not in meta, "raw videos get motion scores from curation"
                assert 3 <= len(meta["scenes"]) <= 6 and len(meta["transitions"]) == len(meta["scenes"]) - 1
                assert meta["scenes"][-1]["end_frame"] == meta["num_frames"]
                assert all(s["caption"] and s["captions"]["coca"] for s in meta["scenes"])
    expected = {"raw": 2, "clips": 4}[kind]
    assert len(keys) == expected == len(set(keys))


def test_image_shards_decode_in_every_format(dataset: tuple[Path, dict]) -> None:
    out, manifest = dataset
    formats = set()
    for shard in manifest["shards"]["images"]:
        for key, sample in _by_key(_members(out / shard)).items():
            (ext,) = set(sample) - {"json", "txt"}
            meta = json.loads(sample["json"])
            assert meta["key"] == key and meta["status"] == "success"
            assert meta["caption"] and sample["txt"].decode() == meta["caption"]
            with Image.open(io.BytesIO(sample[ext])) as img:
                assert img.format == {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
                assert img.size == (meta["width"], meta["height"]) == SIZE
                assert np.asarray(img.convert("RGB")).std() > 5
            formats.add(ext)
    assert formats == {"jpg", "png", "webp"}


def test_cli_reruns_are_byte_identical_and_seeds_differ(tmp_path: Path) -> None:
    cli = _load_cli()
    args = ["--num-raw-videos", "1", "--num-clips", "2", "--num-images", "3", "--size", "64x48", "--fps", "12"]
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert cli.main(["--out", str(tmp_path / name), "--seed", seed, *args]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 4  # manifest + one shard per kind
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    for rel in files:
        if rel.suffix == ".tar":
            assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes(), rel


def test_cli_rejects_bad_size() -> None:
    with pytest.raises(SystemExit):
        _load_cli().parse_args(["--size", "65x48"])


def _plan(transitions: tuple[str, ...], speeds: tuple[str, ...], *, seed: int = 0) -> VideoPlan:
    rng = np.random.default_rng(seed)
    scenes = tuple(random_scene(rng, num_frames=30, speed=s, text=False, pan=False) for s in speeds)
    return VideoPlan(scenes, transitions, 24.0, SIZE, fade_frames=8)


def test_hard_cut_is_visible_at_the_recorded_boundary_and_static_scenes_do_not_move() -> None:
    plan = _plan(("cut", "crossfade", "fade_black"), ("static", "fast", "slow", "fast"))
    buf = io.BytesIO()
    meta = write_video(plan, buf)
    frames, _ = _decode(buf.getvalue())
    assert len(frames) == meta["num_frames"] == 4 * 30 - 8
    rendered = np.stack(list(render_video(plan))).astype(np.float32)
    assert np.abs(frames - rendered).mean() < 12.0, "decoded colours should match the rendered RGB"
    diffs = _diffs(frames)
    cut = meta["transitions"][0]
    assert cut["type"] == "cut" and cut["frame"] == meta["scenes"][1]["start_frame"] == 30
    static = meta["scenes"][0]
    assert static["speed"] == "static"
    within_static = diffs[static["start_frame"] : static["end_frame"] - 1]
    assert within_static.max() < 2.0
    fast = meta["scenes"][1]
    within_fast = diffs[fast["start_frame"] : meta["transitions"][1]["start_frame"] - 1]
    assert within_fast.mean() > 3 * within_static.mean() + 0.5, "fast scene should move"
    assert diffs[cut["frame"] - 1] > 4 * within_fast.max()
    # Fades are gradual: no single step as large as the cut, and a fade through black passes near black.
    fade = meta["transitions"][1]
    assert diffs[fade["start_frame"] : fade["end_frame"]].max() < diffs[cut["frame"] - 1] / 2
    black = meta["transitions"][2]
    assert frames[black["frame"] - 1 : black["frame"] + 1].mean() < 0.4 * frames[: black["start_frame"]].mean()


def test_text_changes_the_scene_and_is_captioned() -> None:
    rng = np.random.default_rng(1)
    plain = random_scene(rng, num_frames=2, speed="static", text=False)
    texted = dataclasses.replace(plain, text="SALE 50%")
    a, b = render_scene(plain, size=SIZE), render_scene(texted, size=SIZE)
    changed = (np.abs(a.astype(int) - b.astype(int)).max(axis=-1) > 30).mean()
    assert changed > 0.05
    assert text_area_fraction("SALE 50%", size=SIZE) > 0.1
    assert "'SALE 50%'" in scene_captions(texted)["caption"] and "SALE" not in scene_captions(plain)["caption"]
    assert scene_captions(plain)["caption"].startswith("static")


def test_write_demo_video_has_the_requested_length(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    meta = write_demo_video(path, seconds=10.0, fps=25.0, size=(64, 48), seed=0, num_scenes=2, speed="fast")
    frames, fps = _decode(path.read_bytes())
    assert frames.shape == (250, 48, 64, 3) and meta["num_frames"] == 250 and fps == pytest.approx(25.0)
    assert [s["start_frame"] for s in meta["scenes"]] == [0, 125]
    buf = io.BytesIO()
    write_demo_video(buf, seconds=10.0, fps=25.0, size=(64, 48), seed=0, num_scenes=2, speed="fast")
    assert buf.getvalue() == path.read_bytes()


def test_fractional_fps_round_trips() -> None:
    buf = io.BytesIO()
    write_demo_video(buf, seconds=1.0, fps=30000 / 1001, size=(32, 32), seed=0)
    frames, fps = _decode(buf.getvalue())
    assert len(frames) == 30 and fps == pytest.approx(29.97, abs=0.01)


def test_sample_generators_are_independent_of_each_other() -> None:
    assert sample_rng(0, "clip", 5).random() == sample_rng(0, "clip", 5).random()
    assert sample_rng(0, "clip", 5).random() != sample_rng(0, "raw", 5).random()


def test_invalid_inputs_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="even"):
        encode_video([], io.BytesIO(), fps=24.0, size=(33, 32))
    with pytest.raises(ValueError, match="transitions"):
        _plan(("cut",), ("static",))
    with pytest.raises(ValueError, match="fade_frames"):
        VideoPlan(_plan(("cut",), ("slow", "slow")).scenes, ("crossfade",), 24.0, SIZE, fade_frames=40)
    with pytest.raises(ValueError, match="speed"):
        random_scene(np.random.default_rng(0), num_frames=2, speed="warp")  # type: ignore[arg-type]
    assert isinstance(_plan((), ("fast",)).scenes[0], SceneSpec)
