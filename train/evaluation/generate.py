"""Generating evaluation videos with ``train.sampling.sample_video`` for ``scripts/evaluate.py`` (the
``EvaluateVideos`` callback samples through ``train/callbacks/periodic.py``). Videos come back as uint8
``(T, 3, H, W)``, the layout the metrics take."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from train.sampling import sample_video


def generate_video(model: nn.Module, denoiser: nn.Module, **sample: Any) -> torch.Tensor:
    """``train.sampling.sample_video`` (the same keyword arguments; the seed is ``settings.seed``) as uint8
    (T, 3, H, W) on CPU."""
    return sample_video(model, denoiser, **sample).permute(0, 3, 1, 2).contiguous()  # (T, H, W, 3) -> (T, 3, H, W)


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
