"""Sample videos with the EMA weights every ``every_n_steps`` optimizer steps and at the end of training.

Files go to ``<stage_dir>/samples/step_{step:06d}_{i}.mp4`` and ``.gif``; each ``WandbLogger`` of the trainer also
gets the MP4 as a ``wandb.Video`` under ``samples/{i}``. Only global rank 0 samples: with sharded strategies
(FSDP, DeepSpeed ZeRO-3) rank 0 does not hold the full weights, so use this callback with DDP or one device.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import Logger, WandbLogger

from train.conditioning import TASKS
from train.media import read_image, write_gif, write_mp4
from train.sampling import sample_video

SAMPLING_ATTRS = ("model", "denoiser", "task", "num_frames", "height", "width")


def log_videos(loggers: Sequence[Logger], videos: Sequence[Path], *, step: int) -> None:
    """Log each MP4 to every ``WandbLogger`` as ``samples/{i}``; other loggers cannot show videos and are skipped."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            for i, path in enumerate(videos):
                logger.log_video(f"samples/{i}", [str(path)], step=step)


class SampleVideos(pl.Callback):
    """Sample ``prompts`` (t2i, t2v) or ``images`` (i2v, paths of image files) with the stage's objective."""

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
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}; use a positive number of optimizer steps")
        if fps <= 0:
            raise ValueError(f"fps={fps}; use a positive frame rate for the written files, e.g. 7")
        self.every_n_steps = every_n_steps
        self.prompts = list(prompts)
        self.images = [str(p) for p in images]
        self.sampling = dict(
            num_steps=num_steps,
            min_cfg=min_cfg,
            max_cfg=max_cfg,
            fps_id=fps_id,
            motion_bucket_id=motion_bucket_id,
            cond_aug=cond_aug,
            seed=seed,
            decode_chunk=decode_chunk,
        )
        self.fps = fps
        self._last_step = -1
        self._warned = False

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            warnings.warn(message, stacklevel=2)
            self._warned = True

    def _objective(self, pl_module: pl.LightningModule) -> Any | None:
        objective = getattr(pl_module, "objective", None)
        task = getattr(objective, "task", None)
        if task not in TASKS or any(not hasattr(objective, a) for a in SAMPLING_ATTRS):
            self._warn_once(
                f"SampleVideos does nothing: the objective ({type(objective).__name__}, task {task!r}) cannot "
                f"sample; it needs {', '.join(SAMPLING_ATTRS)} with a task in {TASKS}. Remove the callback "
                "for this stage."
            )
            return None
        return objective

    def _requests(self, task: str) -> list[dict[str, Any]]:
        if task == "i2v":
            if not self.images:
                self._warn_once("SampleVideos has no images for the i2v task; set callbacks.sample_videos.images")
            return [{"image": read_image(path)} for path in self.images]
        if not self.prompts:
            self._warn_once(f"SampleVideos has no prompts for the {task} task; set callbacks.sample_videos.prompts")
        return [{"prompt": prompt} for prompt in self.prompts]

    def sample(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Path]:
        """Write (and log) one video per prompt or image for the current step; returns the MP4 paths."""
        step = trainer.global_step
        self._last_step = step
        if not trainer.is_global_zero:
            return []
        objective = self._objective(pl_module)
        if objective is None:
            return []
        requests = self._requests(objective.task)
        if not requests:
            return []
        out_dir = Path(pl_module.stage_dir) / "samples"
        swap = getattr(pl_module, "ema_weights", None)
        videos = []
        with swap() if swap is not None else nullcontext():
            for i, request in enumerate(requests):
                frames = sample_video(
                    objective.model,
                    objective.denoiser,
                    task=objective.task,
                    num_frames=objective.num_frames,
                    height=objective.height,
                    width=objective.width,
                    device=pl_module.device,
                    **request,
                    **self.sampling,
                )
                stem = out_dir / f"step_{step:06d}_{i}"
                videos.append(write_mp4(frames, stem.with_suffix(".mp4"), self.fps))
                write_gif(frames, stem.with_suffix(".gif"), self.fps)
        log_videos(trainer.loggers, videos, step=step)
        return videos

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # global_step counts optimizer steps; with gradient accumulation several batches end on the same step.
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.sample(trainer, pl_module)
