"""Sample videos with the EMA weights every ``every_n_steps`` optimizer steps and at the end of training.

Files go to ``<stage_dir>/samples/step_{step:06d}_{i}.mp4`` and ``.gif``; each ``WandbLogger`` of the trainer also
gets the MP4 as a ``wandb.Video`` under ``samples/{i}``. The schedule, rank 0 and the EMA swap are
``train.callbacks.periodic``'s: use this callback with DDP or one device, not with sharded weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import Logger, WandbLogger

from train.callbacks.periodic import PeriodicSampling
from train.media import write_gif, write_mp4


def log_videos(loggers: Sequence[Logger], videos: Sequence[Path], *, step: int) -> None:
    """Log each MP4 to every ``WandbLogger`` as ``samples/{i}``; other loggers cannot show videos and are skipped."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            for i, path in enumerate(videos):
                logger.log_video(f"samples/{i}", [str(path)], step=step)


class SampleVideos(PeriodicSampling):
    """Sample ``prompts`` (t2i, t2v) or ``images`` (i2v, paths of image files) with the stage's objective."""

    config_key = "logger.samples"

    def __init__(
        self,
        every_n_steps: int,
        *,
        prompts: Sequence[str] = (),
        images: Sequence[str] = (),
        num_steps: int = 25,
        min_cfg: float = 1.0,
        max_cfg: float = 2.5,
        fps_id: int = 6,
        motion_bucket_id: int = 127,
        cond_aug: float = 0.02,
        seed: int = 0,
        fps: float = 7.0,
        decode_chunk: int = 14,
    ) -> None:
        super().__init__(
            every_n_steps,
            prompts=prompts,
            images=images,
            seed=seed,
            num_steps=num_steps,
            min_cfg=min_cfg,
            max_cfg=max_cfg,
            fps_id=fps_id,
            motion_bucket_id=motion_bucket_id,
            cond_aug=cond_aug,
            decode_chunk=decode_chunk,
        )
        if fps <= 0:
            raise ValueError(f"fps={fps}; use a positive frame rate for the written files, e.g. 7")
        self.fps = fps

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
