"""Sampling with a frame-interpolation export (task ``interp``, ``train/task_interpolation.py``).

One pass generates the T-2 frames between two frames (T the export's frame count, the paper's 5: 3 in-betweens, so
a factor of 4). The model denoises all T frames; its own first and last frame only approximate the conditions
(nothing in the method pins them), so the output takes the input frames there, as given (resized and centre-cropped
to the export's size): an output's end frames equal its inputs exactly. A video is interpolated pair by pair of
consecutive frames, each original frame kept once: N frames -> (N - 1) x (T - 1) + 1. A factor (T - 1)^k applies
k passes (factor 16 = two passes of 4); other factors are an error (no frame dropping or re-timing). Pair ``i`` of a
pass samples with seed ``settings.seed + i``; a video's passes are conditioned on the frame rate they produce. Used
by ``scripts/sample.py --interpolate A B`` and ``--interpolate-video in.mp4 --factor 4``; writes mp4 + gif with the
frame rate scaled by the factor.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from data.transforms import resize_and_crop
from models.latent_diffusion import LatentDiffusion
from train.conditioning import fps_to_fps_id
from train.config import GenerationSettings
from train.evaluation.video_files import read_video as read_video_file
from train.media import read_image, write_gif, write_mp4
from train.sampling import sample_video
from train.task_interpolation import INTERPOLATION_TASK
from train.tasks import get_task

PathLike = str | os.PathLike[str]


def check_interpolation_task(task: str, *, source: str) -> None:
    """ValueError unless ``task`` is the interpolation task."""
    if get_task(task).name != INTERPOLATION_TASK:
        raise ValueError(
            f"{source} is a {task} model; --interpolate / --interpolate-video need a frame_interpolation stage "
            f"export (task {INTERPOLATION_TASK}): python -m train stage=frame_interpolation ..."
        )


def passes_for_factor(factor: int, *, num_frames: int) -> int:
    """How many passes of a ``num_frames`` model give ``factor`` x the frame rate (factor = (T - 1) ** passes)."""
    step = num_frames - 1
    passes, reach = 0, 1
    while reach < factor:
        reach, passes = reach * step, passes + 1
    if factor < 2 or reach != factor:
        allowed = ", ".join(str(step**k) for k in range(1, 4))
        raise ValueError(
            f"--factor {factor}: a {num_frames}-frame interpolation model multiplies the frame rate by {step} per "
            f"pass; use a power of {step} ({allowed}, ...)"
        )
    return passes


def read_image_pair(first: PathLike, last: PathLike, *, size: tuple[int, int]) -> torch.Tensor:
    """Two image files -> uint8 (2, 3, H, W) at ``size``, read as training reads images; the files must share a
    size (two frames of one clip: the same crop of both)."""
    from PIL import Image

    sizes = []
    for path in (first, last):
        if not Path(path).is_file():
            raise ValueError(f"no image file at {path}; pass two PNG / JPEG frames")
        with Image.open(path) as image:
            sizes.append(image.size)
    if sizes[0] != sizes[1]:
        raise ValueError(
            f"{first} is {sizes[0][0]}x{sizes[0][1]} but {last} is {sizes[1][0]}x{sizes[1][1]}; the two frames must "
            "have the same size (resize or crop them alike first)"
        )
    return torch.stack([read_image(path, size=size) for path in (first, last)])


def read_video(path: PathLike, *, size: tuple[int, int]) -> tuple[torch.Tensor, float]:
    """Every frame of a video file -> (uint8 (N, 3, H, W) resized and centre-cropped to ``size``, frame rate)."""
    if not Path(path).is_file():
        raise ValueError(f"no video file at {path}; pass an mp4 (or any file PyAV reads)")
    pixels, fps = read_video_file(path)  # evaluation's reader: PyAV, GIFs too
    if len(pixels) < 2:
        raise ValueError(f"{path} has {len(pixels)} frame(s); interpolation needs at least 2")
    if not fps > 0:
        raise ValueError(f"{path} has no frame rate in its header; re-mux it with one (ffmpeg -r)")
    return resize_and_crop(pixels, size=size, crop="center"), fps


def interpolate_pair(
    model: LatentDiffusion,
    denoiser: nn.Module,
    pair: torch.Tensor,
    *,
    num_frames: int,
    settings: GenerationSettings,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """uint8 (2, 3, H, W) first and last frame -> uint8 (T, H, W, 3): the inputs and the T - 2 generated between."""
    if pair.ndim != 4 or pair.shape[:2] != (2, 3) or pair.dtype != torch.uint8:
        raise ValueError(f"pair must be uint8 (2, 3, H, W) frames, got {pair.dtype} {tuple(pair.shape)}")
    h, w = pair.shape[-2:]
    out = sample_video(
        model,
        denoiser,
        task=INTERPOLATION_TASK,
        image=pair,
        num_frames=num_frames,
        height=h,
        width=w,
        settings=settings,
        device=device,
    )
    out[0], out[-1] = pair[0].permute(1, 2, 0), pair[1].permute(1, 2, 0)  # the conditions, as given
    return out


def interpolate_frames(
    model: LatentDiffusion,
    denoiser: nn.Module,
    frames: torch.Tensor,
    *,
    factor: int,
    num_frames: int,
    settings: GenerationSettings,
    device: str | torch.device = "cpu",
    progress: bool = False,
    fps: float | None = None,
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 ((N - 1) x factor + 1, H, W, 3), pass by pass, pair by pair (progress bar).

    ``fps``: the input's frame rate; each pass is then conditioned on the rate of the clips it makes (``fps_id`` of
    fps x (T - 1)^k after pass k, as training clips are conditioned on their own rate), else on
    ``settings.fps_id``."""
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 2:
        raise ValueError(f"frames must be uint8 (N >= 2, 3, H, W), got {tuple(frames.shape)}")
    passes = passes_for_factor(factor, num_frames=num_frames)
    current = frames
    for k in range(passes):
        if fps is not None:
            settings = dataclasses.replace(settings, fps_id=fps_to_fps_id(fps * (num_frames - 1) ** (k + 1)))
        pairs = len(current) - 1
        bar = tqdm(range(pairs), desc=f"interpolation pass {k + 1}/{passes}", unit="pair", disable=not progress)
        pieces = []
        for i in bar:
            seeded = dataclasses.replace(settings, seed=settings.seed + i)
            clip = interpolate_pair(
                model, denoiser, current[i : i + 2], num_frames=num_frames, settings=seeded, device=device
            )
            pieces.append(clip if i == pairs - 1 else clip[:-1])  # the shared frame once
        current = torch.cat(pieces).permute(0, 3, 1, 2).contiguous()  # (M, H, W, 3) -> (M, 3, H, W)
    return current.permute(0, 2, 3, 1).contiguous()


def write_interpolation(
    model: LatentDiffusion,
    denoiser: nn.Module,
    *,
    task: str,
    source: str,
    num_frames: int,
    size: tuple[int, int],
    settings: GenerationSettings,
    out: PathLike,
    images: tuple[PathLike, PathLike] | None = None,
    video: PathLike | None = None,
    factor: int = 4,
    fps: float = 7.0,
    name: str | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[Path]:
    """``images``: one pass between two frames, written at ``fps``; ``video``: every pair raised by ``factor``,
    written at the video's frame rate x ``factor``. Returns the mp4 and gif paths."""
    check_interpolation_task(task, source=source)
    if (images is None) == (video is None):
        raise ValueError("pass either images=(first, last) or video=path")
    if images is not None:
        pair = read_image_pair(*images, size=size)
        frames = interpolate_frames(
            model, denoiser, pair, factor=num_frames - 1, num_frames=num_frames, settings=settings, device=device
        )
        stem = name or f"{Path(images[0]).stem}_{Path(images[1]).stem}_seed{settings.seed}"
        rate = fps
    else:
        assert video is not None
        clip, native = read_video(video, size=size)
        frames = interpolate_frames(
            model,
            denoiser,
            clip,
            factor=factor,
            num_frames=num_frames,
            settings=settings,
            device=device,
            progress=progress,
            fps=native,
        )
        stem = name or f"{Path(video).stem}_x{factor}_seed{settings.seed}"
        rate = native * factor
    out = Path(out)
    return [write_mp4(frames, out / f"{stem}.mp4", rate), write_gif(frames, out / f"{stem}.gif", rate)]
