"""The UCF-101 protocol on a fake UCF-like folder of real (tiny) .avi / .mp4 / .gif files."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from train.evaluation.ucf101 import (
    EVAL_SIZE,
    allocate,
    class_counts,
    class_prompt,
    class_text,
    generation_plan,
    iter_real_clips,
    protocol_frames,
    real_clip_spec,
    scan_ucf_folder,
)
from train.evaluation.video_files import read_clip

STEP = 6  # frame i is filled with grey level STEP * i, so decoded frames tell which source frame they are


def write_video(path: Path, num_frames: int, *, fps: float = 25.0, size: tuple[int, int] = (240, 320)) -> Path:
    """A real file: .avi (MPEG-4 part 2, as UCF-101's Xvid) or .mp4; frame i is a flat grey of STEP * i."""
    h, w = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi" if path.suffix == ".avi" else "mp4") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.gop_size = 1  # intra only, fine quantiser: each flat frame decodes to its own grey level
        stream.options = {"qmin": "1", "qmax": "2"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), STEP * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("UCF-101")
    for name, n in (("ApplyEyeMakeup", 3), ("YoYo", 2), ("HandstandPushups", 1)):
        for g in range(n):
            stem = "HandStandPushups" if name == "HandstandPushups" else name  # UCF's own spelling of the files
            write_video(root / name / f"v_{stem}_g{g + 1:02d}_c01.avi", 24)
    (root / "YoYo" / "notes.txt").write_text("not a video")
    return root


def _levels(frames: torch.Tensor) -> list[int]:
    return [round(float(f.float().mean()) / STEP) for f in frames]


def test_prompts_from_class_names():
    assert class_text("ApplyEyeMakeup") == "apply eye makeup"
    assert class_text("YoYo") == "yo yo"
    assert class_text("HandstandPushups") == "handstand pushups"
    assert class_text("PlayingDaf") == "playing daf"
    assert class_prompt("BlowDryHair", "a video of {}") == "a video of blow dry hair"
    with pytest.raises(ValueError, match="has no"):
        class_prompt("YoYo", "a video")


def test_scan_and_class_distribution(ucf_root):
    videos = scan_ucf_folder(ucf_root)
    assert [v.path.name for v in videos][:2] == ["v_ApplyEyeMakeup_g01_c01.avi", "v_ApplyEyeMakeup_g02_c01.avi"]
    assert class_counts(videos) == {"ApplyEyeMakeup": 3, "HandstandPushups": 1, "YoYo": 2}
    with pytest.raises(ValueError, match="reference set is empty"):
        scan_ucf_folder(ucf_root / "YoYo")


def test_allocation_follows_the_class_distribution():
    counts = {"A": 3, "B": 1, "C": 2}
    assert allocate(counts, 6, seed=0) == counts  # the dataset size gives the dataset's counts
    assert allocate(counts, 12, seed=0) == {"A": 6, "B": 2, "C": 4}
    three = [allocate(counts, 3, seed=s) for s in range(6)]  # exact shares 1.5, 0.5, 1: A and B tie for the extra
    assert all(a in ({"A": 2, "B": 0, "C": 1}, {"A": 1, "B": 1, "C": 1}) for a in three)
    assert len({tuple(a.values()) for a in three}) == 2  # the seed breaks the tie both ways
    ucf_like = {f"c{i}": 100 + i for i in range(101)}
    split = allocate(ucf_like, 1000, seed=1)
    assert (
        sum(split.values()) == 1000
        and max(abs(split[k] - 1000 * v / sum(ucf_like.values())) for k, v in ucf_like.items()) < 1
    )
    assert allocate(ucf_like, 1000, seed=1) == split  # seeded
    with pytest.raises(ValueError, match="positive"):
        allocate(counts, 0, seed=0)


def test_generation_plan_prompts_and_seeds(ucf_root):
    counts = class_counts(scan_ucf_folder(ucf_root))
    plan = generation_plan(counts, num_videos=6, seed=3)
    assert [r.prompt for r in plan] == ["apply eye makeup"] * 3 + ["handstand pushups"] + ["yo yo"] * 2
    assert [r.index for r in plan] == list(range(6))
    assert len({r.seed for r in plan}) == 6 and plan == generation_plan(counts, num_videos=6, seed=3)
    assert [r.seed for r in generation_plan(counts, num_videos=6, seed=4)] != [r.seed for r in plan]
    assert Counter(r.class_name for r in generation_plan(counts, num_videos=12, seed=0)) == {
        "ApplyEyeMakeup": 6,
        "HandstandPushups": 2,
        "YoYo": 4,
    }


def test_real_clips_are_16_consecutive_frames_at_240x320(ucf_root):
    videos = scan_ucf_folder(ucf_root)
    skipped: Counter[str] = Counter()
    clips = list(iter_real_clips(videos, spec=real_clip_spec(), seed=0, skipped=skipped))
    assert len(clips) == 6 and not skipped
    for clip in clips:
        assert clip.shape == (16, 3, *EVAL_SIZE) and clip.dtype == torch.uint8
        levels = _levels(clip)
        assert levels == list(range(levels[0], levels[0] + 16)) and 0 <= levels[0] <= 24 - 16
    centre = list(iter_real_clips(videos[:1], spec=real_clip_spec(start="center")))[0]
    assert _levels(centre) == list(range(4, 20))  # (24 - 16) // 2


def test_frame_rate_short_videos_and_the_pyav_fallback(tmp_path):
    fast = read_clip(write_video(tmp_path / "fast.mp4", 40, fps=50.0), real_clip_spec(start="center"))
    assert fast.stride == 2 and fast.effective_fps == 25.0 and _levels(fast.frames) == list(range(4, 36, 2))
    short = write_video(tmp_path / "short.avi", 10)
    skipped: Counter[str] = Counter()
    assert not list(iter_real_clips([_ucf(short)], spec=real_clip_spec(), skipped=skipped))
    assert skipped == {"too_few_frames": 1}
    padded = read_clip(short, real_clip_spec(on_short="pad"))
    assert padded.num_padded == 6 and _levels(padded.frames) == list(range(10)) + [9] * 6
    gif = tmp_path / "anim.gif"
    images = [Image.fromarray(np.full((30, 40, 3), STEP * i, np.uint8)) for i in range(20)]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=40, loop=0)  # 25 fps
    clip = read_clip(gif, real_clip_spec(start="center"))  # decord does not read GIF: PyAV / Pillow
    assert clip.frames.shape == (16, 3, *EVAL_SIZE) and _levels(clip.frames) == list(range(2, 18))


def _ucf(path: Path):
    from train.evaluation.ucf101 import UCFVideo

    return UCFVideo(path, "Short")


def test_generated_frames_are_resized_to_240x432_and_centre_cropped():
    frames = torch.randint(0, 256, (2, 3, 320, 576), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = protocol_frames(frames)
    resized = F.interpolate(frames, size=(240, 432), mode="bilinear", antialias=True, align_corners=False)
    assert out.shape == (2, 3, 240, 320)
    torch.testing.assert_close(out, resized[:, :, :, 56:376], rtol=0, atol=0)
    real = torch.randint(0, 256, (2, 3, 240, 320), dtype=torch.uint8)
    torch.testing.assert_close(protocol_frames(real), real, rtol=0, atol=0)  # UCF's native size is kept
