"""Generating evaluation videos with ``train.sampling.sample_video`` for ``scripts/evaluate.py`` (the
``EvaluateVideos`` callback samples through ``train/callbacks/periodic.py``). Videos come back as uint8
``(T, 3, H, W)``, the layout the metrics take."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from train.sampling import sample_video


@dataclass(frozen=True)
class GenerationSettings:
    """Everything ``sample_video`` needs besides the model, the prompt or image, and the seed."""

    num_frames: int
    height: int
    width: int
    num_steps: int = 25
    min_cfg: float = 1.0
    max_cfg: float = 2.5
    fps_id: int = 6
    motion_bucket_id: int = 127
    cond_aug: float = 0.02
    decode_chunk: int = 14


def generate_video(
    model: nn.Module,
    denoiser: nn.Module,
    *,
    task: str,
    settings: GenerationSettings,
    seed: int,
    prompt: str | None = None,
    image: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """One sample as uint8 (T, 3, H, W) on CPU."""
    frames = sample_video(
        model,
        denoiser,
        task=task,  # type: ignore[arg-type]
        prompt=prompt,
        image=image,
        seed=seed,
        device=device,
        **asdict(settings),
    )
    return frames.permute(0, 3, 1, 2).contiguous()  # (T, H, W, 3) -> (T, 3, H, W)


@dataclass
class Generator:
    model: Any  # LatentDiffusion
    denoiser: nn.Module
    task: str
    device: torch.device


def load_export_generator(
    folder: str | os.PathLike[str], *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Generator:
    """A stage export's model (the EMA weights) on ``device`` in ``dtype``, as ``scripts/sample.py`` loads it."""
    from train.export import load_export  # the export module pulls in the training stack

    device = torch.device(device)
    export = load_export(folder, device=device)
    return Generator(export.model.to(device=device, dtype=dtype), export.denoiser.to(device), export.task, device)
