"""The ``logger`` group's schema (``train.config`` imports it into ``TrainConfig``): wandb / CSV, the sample and
evaluation callbacks, and ``GenerationSettings``, how any sample is generated (scripts/sample.py,
scripts/evaluate.py and both callbacks)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class GenerationSettings:
    """How a sample is generated besides the model, its size and the prompt or image (``train.sampling.sample_video``):
    Euler steps, the guidance scale (min_cfg -> max_cfg over the frames; max_cfg alone for image tasks), the
    micro-conditioning, the conditioning-frame noise, the seed and the frames decoded at a time. The defaults are
    svd's (RECIPE 3); scripts/sample.py, scripts/evaluate.py and both training callbacks use these."""

    num_steps: int = 25
    min_cfg: float = 1.0
    max_cfg: float = 2.5
    fps_id: int = 6
    motion_bucket_id: int = 127
    elevation: float | None = None  # camera elevation in degrees: the mv task's condition (train/task_multiview.py)
    cond_aug: float = 0.02
    seed: int = 0
    decode_chunk: int = 14


def generation_settings(node: Any) -> GenerationSettings:
    """The ``GenerationSettings`` fields of a config node (logger.samples, logger.evaluation)."""
    return GenerationSettings(**{f.name: node[f.name] for f in dataclasses.fields(GenerationSettings)})


@dataclass
class SamplesConfig(GenerationSettings):
    """Sample videos logged during training (0 disables), generated with the ``GenerationSettings`` fields."""

    every_n_steps: int = 0
    prompts: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # image paths; interp: "first.png|last.png" pairs
    fps: int = 7  # frame rate of the written files


@dataclass
class EvaluationConfig(GenerationSettings):
    """Metrics of a fixed generated set during training (0 disables; train/callbacks/evaluate_videos.py), generated
    with the ``GenerationSettings`` fields."""

    every_n_steps: int = 0
    prompts: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # as SamplesConfig.images
    videos_per_prompt: int = 1  # seeds seed, seed + 1, ... for each prompt or image
    clip_arch: str = "ViT-B-32"  # CLIPSIM's usual tower; "tiny" for tests
    clip_pretrained: str | None = None  # an open_clip tag or a local file; None leaves CLIP random
    features: str = "none"  # Frechet distance to `reference`: none | i3d (FVD, needs i3d_path) | clip
    i3d_path: str | None = None
    reference: list[str] = field(default_factory=list)  # shard specs of real clips
    num_reference: int = 64
    batch_size: int = 8


@dataclass
class LoggerConfig:
    wandb: bool = True
    wandb_mode: str = "offline"
    project: str = "svd-train"
    entity: str | None = None
    csv: bool = True
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
