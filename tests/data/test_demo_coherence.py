"""The demo's coherence check: the generator's own clips pass (rendered and through a real mp4), broken ones fail."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from data.demo_coherence import (
    ClipRef,
    ClipTruth,
    check_video,
    clip_truth,
    locate_clip,
    read_frames,
    shaded_distance,
)
from data.demo_data import clip_first_frame, clip_sample, write_demo_dataset
from data.demo_scenes import COLORS
from data.transforms import resize_and_crop
from tests.conftest import load_script

# Clip 10 of seed 0: an orange circle moving slowly down over grey stripes (the make demo clip); 8 frames every 3rd
# source frame (8 fps from 24) at the demo's 64x48.
REF = ClipRef(seed=0, index=10, fps=24.0, size=(128, 96))
SIZE = (64, 48)


@pytest.fixture(scope="module")
def truth() -> ClipTruth:
    return clip_truth(REF, size=SIZE, stride=3, num_frames=8)


def _paint(frame: np.ndarray, cx: float, cy: float, r: float, colour: tuple[int, int, int]) -> None:
    yy, xx = np.mgrid[0 : frame.shape[0], 0 : frame.shape[1]]
    frame[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = colour


def _erase_object(truth: ClipTruth) -> np.ndarray:
    """The clip's frames with the object painted over by the background's mean colour."""
    frames = truth.frames.copy()
    colour = COLORS[truth.shape.color]
    for frame in frames:
        mask = shaded_distance(frame, colour) <= 100
        frame[mask] = frame[~mask].mean(axis=0).astype(np.uint8)
    return frames


def test_rendered_clip_passes_with_its_own_figures(truth: ClipTruth) -> None:
    assert (truth.shape.color, truth.shape.kind, truth.frames.shape) == ("orange", "circle", (8, 48, 64, 3))
    report = check_video(truth.frames, truth)
    f = report.figures
    assert report.passed, report.failures
    assert f["max_components"] == 1 and 0.97 <= f["area_ratio_min"] <= f["area_ratio_max"] <= 1.03
    assert f["max_jerk_px"] < 0.5 and f["start_offset_px"] == 0.0 and f["colour_shift"] == 0.0
    # slow: 0.5 px per frame at a 64-px short side -> 0.375 at 48, x3 stride, x7 steps = 7.9 px down
    assert f["expected_displacement_px"][1] == pytest.approx(7.875, abs=0.3)
    assert f["motion_along_expected"] == pytest.approx(1.0)


def test_the_real_encoded_clip_passes(truth: ClipTruth) -> None:
    """The clip as the demo shards hold it (libx264 mp4 at 128x96), decoded, strided and resized like training."""
    members = clip_sample(REF.seed, REF.index, fps=REF.fps, size=REF.size, key="k")
    with av.open(io.BytesIO(members["k.mp4"])) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])[: 8 * 3 : 3]
    video = resize_and_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), size=(SIZE[1], SIZE[0]))
    report = check_video(video.permute(0, 2, 3, 1).numpy(), truth)
    assert report.passed, report.failures
    assert 0.95 <= report.figures["area_ratio_min"] and report.figures["area_ratio_max"] <= 1.05
    assert report.figures["colour_shift"] < 10


def test_an_object_that_fades_splits_or_freezes_fails(truth: ClipTruth) -> None:
    background = _erase_object(truth)
    colour = COLORS[truth.shape.color]
    r = truth.shape.size * min(SIZE)
    path = [(f.cx, f.cy) for f in check_video(truth.frames, truth).reference]

    faded = truth.frames.astype(np.float32)
    for t in range(8):  # blends into the background: 100% .. 30% of the object left
        alpha = 1.0 - 0.1 * t
        faded[t] = alpha * faded[t] + (1 - alpha) * background[t]
    report = check_video(faded.round().astype(np.uint8), truth)
    assert not report.passed and report.figures["area_ratio_min"] < 0.75

    split = background.copy()
    for t, (cx, cy) in enumerate(path):  # from frame 4 the circle comes apart into two smaller ones
        if t < 4:
            _paint(split[t], cx, cy, r, colour)
        else:
            _paint(split[t], cx - 0.8 * r, cy, 0.6 * r, colour)
            _paint(split[t], cx + 0.9 * r, cy, 0.6 * r, colour)
    report = check_video(split, truth)
    assert report.figures["max_components"] == 2 and any("2 objects" in f for f in report.failures)

    frozen = np.repeat(truth.frames[:1], 8, axis=0)
    report = check_video(frozen, truth)
    assert not report.passed and report.figures["motion_along_expected"] == 0.0
    assert report.failures == [report.failures[0]] and "moves" in report.failures[0]

    jittery = background.copy()
    for t, (cx, cy) in enumerate(path):  # the right path, but jumping 4 px left and right
        _paint(jittery[t], cx + (4 if t % 2 else -4), cy, r, colour)
    report = check_video(jittery, truth)
    assert [f for f in report.failures if "not smooth" in f] and report.figures["max_jerk_px"] > 10


def test_the_recorded_failure_blobs_that_grow_and_split_fails(truth: ClipTruth) -> None:
    """The pattern of the old demo gif: frame 0 right, then the object swells into an orange and a blue blob."""
    video = _erase_object(truth)
    colour = COLORS[truth.shape.color]
    r = truth.shape.size * min(SIZE)
    for t, f in enumerate(check_video(truth.frames, truth).reference):
        grow = 1.0 + 0.12 * t
        _paint(video[t], f.cx, f.cy, r * grow, colour)
        if t >= 4:
            _paint(video[t], f.cx + 2.2 * r, f.cy - r, 0.7 * r, colour)  # a second blob of the object's colour
            _paint(video[t], f.cx - 1.5 * r, f.cy - 1.6 * r, r, COLORS["blue"])
    report = check_video(video, truth)
    assert not report.passed
    assert report.figures["area_ratio_max"] > 1.25 and report.figures["max_components"] == 2
    assert report.figures["start_offset_px"] < 1.0  # frame 0 was fine: the failures are about what follows


def test_a_clip_whose_object_leaves_the_frame_is_refused() -> None:
    # clip 5: a circle moving fast up from near the top edge; at 8 fps it is gone within 8 frames
    truth = clip_truth(ClipRef(0, 5, 24.0, (128, 96)), size=SIZE, stride=3, num_frames=8)
    with pytest.raises(ValueError, match="the clip itself fails"):
        check_video(truth.frames, truth)
    with pytest.raises(ValueError, match="pass the sample's size"):
        check_video(truth.frames[:, :32], clip_truth(REF, size=SIZE, stride=3, num_frames=8))


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, seed=0, num_raw_videos=0, num_clips=2, num_images=1, samples_per_shard=8, size=(64, 48))
    return out


def test_locate_clip_by_key_and_by_conditioning_image(demo_data: Path, tmp_path: Path) -> None:
    assert locate_clip(demo_data, key="000000001") == ClipRef(0, 1, 24.0, (64, 48))
    image = tmp_path / "clip_00001.png"
    Image.fromarray(clip_first_frame(0, 1, fps=24.0, size=(64, 48))).save(image)
    assert locate_clip(demo_data, image=image) == ClipRef(0, 1, 24.0, (64, 48))
    wrong = tmp_path / "clip_00000.png"  # clip 1's frame under clip 0's name
    wrong.write_bytes(image.read_bytes())
    with pytest.raises(ValueError, match="is not frame 0 of clip 0"):
        locate_clip(demo_data, image=wrong)
    with pytest.raises(ValueError, match="no clip with key"):
        locate_clip(demo_data, key="000000009")
    with pytest.raises(ValueError, match="no manifest.json"):
        locate_clip(tmp_path, key="000000001")


def test_cli_prints_the_table_and_one_json_line(demo_data: Path, tmp_path: Path, capsys) -> None:
    cli = load_script("demo_check")
    ref = ClipRef(0, 1, 24.0, (64, 48))  # clip 1: a cyan square moving slowly up
    truth = clip_truth(ref, size=(64, 48), stride=3, num_frames=8)
    gif = tmp_path / "ok.gif"
    frames = [Image.fromarray(f) for f in truth.frames]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=125, loop=0)
    assert read_frames(gif).shape == (8, 48, 64, 3)
    args = ["--video", str(gif), "--clip-key", "000000001", "--demo-data", str(demo_data), "--strict"]
    assert cli.main([*args, "--strip", str(tmp_path / "strip.png")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["frame", "area", "ratio"] and len(lines) == 1 + 8 + 3
    result = json.loads(lines[-1])
    assert result["passed"] and result["clip_index"] == 1 and result["object"] == "cyan square"
    assert Image.open(tmp_path / "strip.png").size == (64 * 8 * 4, 48 * 2 * 4)

    still = np.repeat(truth.frames[:1], 8, axis=0)
    still[:, 0, 0, 0] = np.arange(8)  # GIF merges identical frames: keep them apart by one pixel
    still_gif = tmp_path / "still.gif"
    Image.fromarray(still[0]).save(
        still_gif, format="GIF", save_all=True, append_images=[Image.fromarray(f) for f in still[1:]], duration=125
    )
    args = ["--video", str(still_gif), "--clip-key", "000000001", "--demo-data", str(demo_data)]
    assert cli.main(args) == 0 and not json.loads(capsys.readouterr().out.strip().splitlines()[-1])["passed"]
    assert cli.main([*args, "--strict"]) == 1
    capsys.readouterr()
    assert cli.main(["--video", str(tmp_path / "none.gif"), *args[2:]]) == 2
    assert "no video file" in capsys.readouterr().err
    assert cli.main([*args[:2], "--clip-key", "1", "--demo-data", str(demo_data)]) == 2
    assert "no clip with key '1'" in capsys.readouterr().err
    frames[0].save(still_gif, format="GIF", save_all=True, append_images=[frames[0]] * 7, duration=125)
    assert cli.main(args) == 2 and "T >= 3" in capsys.readouterr().err  # merged into one frame
