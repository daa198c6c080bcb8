"""Sample videos with the EMA weights every ``every_n_steps`` optimizer steps and at the end of training.

Files go to ``<stage_dir>/samples/step_{step:06d}_{i}.mp4`` and ``.gif``; each ``WandbLogger`` of the trainer also
gets the MP4 as a ``wandb.Video`` under ``samples/{i}``. The schedule, rank 0 and the EMA swap are
``train.callbacks.periodic``'s: use this callback with DDP or one device, not with sharded weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import Logger, WandbLogger

from train.callbacks.periodic import PeriodicSampling
from train.config import GenerationSettings, SamplesConfig, generation_settings
from train.media import write_gif, write_mp4


def log_videos(loggers: Sequence[Logger], videos: Sequence[Path], *, step: int) -> None:
    """Log each MP4 to every ``WandbLogger`` as ``samples/{i}``; other loggers cannot show videos and are skipped."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            for i, path in enumerate(videos):
                logger.log_video(f"samples/{i}", [str(path)], step=step)


class SampleVideos(PeriodicSampling):
    """Sample ``prompts`` (text tasks) or ``images`` (image-conditioned tasks, paths of image files; interp:
    ``first.png|last.png`` pairs) with the stage's objective; ``fps`` is the frame rate of the written files."""

    config_key = "logger.samples"

    def __init__(
        self,
        every_n_steps: int,
        *,
        prompts: Sequence[str] = (),
        images: Sequence[str] = (),
        settings: GenerationSettings | None = None,
        fps: float = SamplesConfig.fps,
    ) -> None:
        super().__init__(every_n_steps, prompts=prompts, images=images, settings=settings)
        if fps <= 0:
            raise ValueError(f"fps={fps}; use a positive frame rate for the written files, e.g. 7")
        self.fps = fps

    @classmethod
    def from_config(cls, node: Any) -> SampleVideos:
        """From a ``SamplesConfig`` node (logger.samples)."""
        return cls(
            node.every_n_steps,
            prompts=list(node.prompts),
            images=list(node.images),
            settings=generation_settings(node),
            fps=node.fps,
        )

    def sample(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Path]:
        """Write (and log) one video per prompt or image for the current step; returns the MP4 paths."""
        step = trainer.global_step
        samples = self._generate(trainer, pl_module)
        if samples is None:
            return []
        out_dir = Path(pl_module.stage_dir) / "samples"
        videos = []
        for i, frames in enumerate(samples.videos):
            stem = out_dir / f"step_{step:06d}_{i}"
            videos.append(write_mp4(frames, stem.with_suffix(".mp4"), self.fps))
            write_gif(frames, stem.with_suffix(".gif"), self.fps)
        log_videos(trainer.loggers, videos, step=step)
        return videos

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sample(trainer, pl_module)
