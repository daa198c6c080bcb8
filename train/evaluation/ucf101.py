"""The SVD paper's zero-shot UCF-101 text-to-video FVD protocol (RECIPE 7; paper Tab. 2 and App. E.4).

* 13,320 generated videos in UCF-101's class distribution (the dataset's 13,320 videos, all splits), one prompt per
  class: the class name. The paper does not say how a folder name such as ``ApplyEyeMakeup`` becomes text; here it
  is split at its capitals and lower-cased (``apply eye makeup``) and put into ``template`` (default ``"{}"``, the
  bare class name). ``HandstandPushups`` has files named ``v_HandStandPushups_*``; the folder name is used.
* 16 frames at 25 fps (``fps_id = 24``), generated at 320x576 with classifier-free guidance w = 7 (constant over the
  frames: ``min_cfg = max_cfg = 7``).
* Generated videos are resized (bilinear, antialiased) to 240x432 and centre-cropped to 240x320. Real UCF-101
  videos (native 320x240) go through the same cover-resize-and-crop to 240x320, which leaves them unchanged.
* Real clips: 16 frames at 25 fps (stride ``round(native_fps / 25)``, 1 for UCF's 25 and 29.97 fps files, i.e.
  16 consecutive frames), starting at a seeded random frame (or the centre). UCF-101's shortest video has 29 frames;
  a shorter file is skipped and counted (``on_short="skip"``) or padded by repeating its last frame (``"pad"``).
* FVD with the TorchScript I3D (``rescale=True, resize=True, return_features=True``), see ``features.py``.

With ``num_videos`` other than the dataset size, the per-class counts are the class distribution scaled to
``num_videos`` (largest remainders, ties broken by the seed); at 13,320 they equal the dataset's counts exactly.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from data.transforms import resize_and_crop
from data.video_decode import ClipSpec
from train.evaluation.video_files import VIDEO_SUFFIXES, iter_file_clips

UCF_NUM_VIDEOS = 13_320
UCF_NUM_FRAMES = 16
UCF_FPS = 25.0
UCF_CFG = 7.0
GENERATION_SIZE = (320, 576)  # (H, W)
EVAL_SIZE = (240, 320)  # after the cover resize (320x576 -> 240x432) and the centre crop
PAPER_FVD = {  # RECIPE 7 (SVD Tab. 2): zero-shot UCF-101 FVD, lower is better
    "CogVideo (ZH)": 751.34,
    "CogVideo (EN)": 701.59,
    "Make-A-Video": 367.23,
    "Video LDM": 550.61,
    "MagicVideo": 655.00,
    "PYoCo": 355.20,
    "SVD base": 242.02,
}


def class_text(class_name: str) -> str:
    """``ApplyEyeMakeup`` -> ``apply eye makeup`` (split before each capital that starts a word, lower-case)."""
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", class_name)
    return " ".join(words).lower() if words else class_name


def class_prompt(class_name: str, template: str = "{}") -> str:
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{}}' for the class name, e.g. 'a video of {{}}'")
    return template.replace("{}", class_text(class_name))


@dataclass(frozen=True)
class UCFVideo:
    path: Path
    class_name: str


def scan_ucf_folder(root: str | os.PathLike[str]) -> list[UCFVideo]:
    """``<root>/<ClassName>/<video>.avi`` (any video suffix) sorted by class and file name."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; pass the UCF-101 folder that holds <ClassName>/v_*.avi")
    videos = [
        UCFVideo(path, folder.name)
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES
    ]
    if not videos:
        raise ValueError(f"no videos in {root}/<ClassName>/; the reference set is empty (expected UCF-101 .avi files)")
    return videos


def class_counts(videos: Sequence[UCFVideo]) -> dict[str, int]:
    return dict(sorted(Counter(v.class_name for v in videos).items()))


def allocate(counts: Mapping[str, int], total: int, *, seed: int) -> dict[str, int]:
    """``total`` videos split over the classes in proportion to ``counts`` (largest remainder, seeded ties)."""
    if total < 1:
        raise ValueError(f"num_videos={total}; use a positive number (the protocol uses {UCF_NUM_VIDEOS})")
    names = sorted(counts)
    weights = np.array([counts[n] for n in names], dtype=np.float64)
    if not len(names) or weights.min() <= 0:
        raise ValueError(f"class counts must be positive; got {dict(counts)}")
    exact = weights * total / weights.sum()
    base = np.floor(exact).astype(np.int64)
    remainder = exact - base
    # Largest remainders first; equal remainders in a seeded random order.
    tie_break = np.random.default_rng([seed, 101]).random(len(names))
    order = np.lexsort((tie_break, -remainder))
    base[order[: total - int(base.sum())]] += 1
    return {n: int(k) for n, k in zip(names, base, strict=True)}


@dataclass(frozen=True)
class GenerationRequest:
    index: int
    class_name: str
    prompt: str
    seed: int


def generation_plan(
    counts: Mapping[str, int], *, num_videos: int = UCF_NUM_VIDEOS, seed: int = 0, template: str = "{}"
) -> list[GenerationRequest]:
    """One request per generated video, grouped by class; video i gets a seed derived from (seed, i)."""
    plan: list[GenerationRequest] = []
    for name, k in allocate(counts, num_videos, seed=seed).items():
        prompt = class_prompt(name, template)
        for _ in range(k):
            index = len(plan)
            video_seed = int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)[0])
            plan.append(GenerationRequest(index, name, prompt, video_seed))
    return plan


def protocol_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> (T, 3, 240, 320): bilinear antialiased cover-resize (320x576 -> 240x432), centre crop."""
    return resize_and_crop(frames, size=EVAL_SIZE, crop="center")


def real_clip_spec(
    *,
    num_frames: int = UCF_NUM_FRAMES,
    fps: float = UCF_FPS,
    start: Literal["random", "center"] = "random",
    on_short: Literal["skip", "pad"] = "skip",
) -> ClipSpec:
    """How real clips are cut: ``num_frames`` at ``fps`` (the protocol's 16 at 25), 240x320, centre crop."""
    return ClipSpec(
        num_frames=num_frames, target_fps=fps, size=EVAL_SIZE, start=start, crop="center", on_short=on_short
    )


def iter_real_clips(
    videos: Sequence[UCFVideo], *, spec: ClipSpec, seed: int = 0, skipped: Counter[str] | None = None
) -> Iterator[torch.Tensor]:
    """uint8 (16, 3, 240, 320) clips of the real videos in order; unreadable or short ones are skipped and counted
    in ``skipped`` (reason -> count). The start of video i is drawn from a generator seeded with (seed, i)."""
    return iter_file_clips([v.path for v in videos], spec, seed=seed, skipped=skipped)


def pick_reference(videos: Sequence[UCFVideo], num: int | None, *, seed: int) -> list[UCFVideo]:
    """All real videos, or a seeded random subset of ``num`` of them (kept in folder order)."""
    if num is None or num >= len(videos):
        return list(videos)
    if num < 2:
        raise ValueError(f"num_reference={num}; a covariance needs at least 2 real videos")
    keep = np.sort(np.random.default_rng([seed, 7]).choice(len(videos), size=num, replace=False))
    return [videos[i] for i in keep]


def iter_generated(
    generate: Callable[[GenerationRequest], torch.Tensor], plan: Sequence[GenerationRequest]
) -> Iterator[torch.Tensor]:
    """The protocol's (T, 3, 240, 320) frames of each planned video; ``generate`` maps a request to uint8
    (T, 3, 320, 576) frames (e.g. ``generate_video`` with the protocol's settings and the request's seed)."""
    for request in plan:
        yield protocol_frames(generate(request))
