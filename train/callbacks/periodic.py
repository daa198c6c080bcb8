"""The part ``SampleVideos`` and ``EvaluateVideos`` share: sampling the stage's objective on a schedule.

A ``PeriodicSampling`` callback runs every ``every_n_steps`` optimizer steps and once more at the end of training
(unless the last step already ran). Only global rank 0 samples, each prompt (text tasks) or conditioning image
(image-conditioned tasks, ``train.tasks.TaskSpec.sample_input``) with the EMA weights swapped in when the module
has them (``ema_weights``); ``sample_video`` puts the model in eval mode and restores it. Frame interpolation (task
``interp``) takes ``images`` entries ``first.png|last.png`` (``train.sample_inputs``) and samples through
``train.interpolation.interpolate_pair``, as ``scripts/sample.py --interpolate`` does: the clip's end frames are the
two images. With sharded strategies (FSDP, DeepSpeed ZeRO-3) rank 0 does not hold the full weights, so ``train.run``
leaves these callbacks out under ``deepspeed_zero3``: use them with DDP or one device.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch

from train.config import GenerationSettings
from train.interpolation import interpolate_pair, read_image_pair
from train.media import read_image
from train.sample_inputs import image_groups
from train.sampling import sample_video
from train.task_interpolation import INTERPOLATION_TASK
from train.tasks import TASKS, get_task

SAMPLING_ATTRS = ("model", "denoiser", "task", "num_frames", "height", "width")


def ema_weights(pl_module: pl.LightningModule) -> AbstractContextManager[Any]:
    """The module's ``ema_weights()`` swap when it has one, else a no-op."""
    swap = getattr(pl_module, "ema_weights", None)
    return swap() if swap is not None else nullcontext()


@dataclass(frozen=True)
class Samples:
    """One round of sampling: the objective, the requests (``prompt`` or ``image``, and ``seed``) and the videos.
    An interp request's ``image`` is uint8 (2, 3, H, W), its first and last frame; others' (3, H, W)."""

    objective: Any
    requests: list[dict[str, Any]]
    videos: list[torch.Tensor]  # uint8 (T, H, W, 3) on CPU, one per request


class PeriodicSampling(pl.Callback):
    """Sample ``prompts`` or ``images`` every ``every_n_steps`` optimizer steps and at the end; subclasses use them.

    Each prompt or image is sampled ``videos_per_prompt`` times with seeds ``settings.seed, settings.seed + 1, ...``
    and the other ``settings`` (steps, guidance, micro-conditioning) of ``train.sampling.sample_video``.
    """

    config_key: ClassVar[str]  # where the train config holds the settings, for the messages

    def __init__(
        self,
        every_n_steps: int,
        *,
        prompts: Sequence[str],
        images: Sequence[str],
        settings: GenerationSettings | None,
        videos_per_prompt: int = 1,
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}; use a positive number of optimizer steps")
        if videos_per_prompt < 1:
            raise ValueError(f"videos_per_prompt={videos_per_prompt}; use at least 1")
        self.every_n_steps = every_n_steps
        self.prompts, self.images = list(prompts), [str(p) for p in images]
        self.settings = settings if settings is not None else GenerationSettings()
        self.seed, self.videos_per_prompt = self.settings.seed, videos_per_prompt
        self._last_step = -1
        self._warned: set[str] = set()

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The scheduled work (it calls ``_generate``)."""
        raise NotImplementedError

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            warnings.warn(message, stacklevel=2)
            self._warned.add(key)

    def _objective(self, pl_module: pl.LightningModule) -> Any | None:
        objective = getattr(pl_module, "objective", None)
        task = getattr(objective, "task", None)
        if task not in TASKS or any(not hasattr(objective, a) for a in SAMPLING_ATTRS):
            self._warn_once(
                "objective",
                f"{type(self).__name__} does nothing: the objective ({type(objective).__name__}, task {task!r}) "
                f"cannot sample; it needs {', '.join(SAMPLING_ATTRS)} with a task in {tuple(TASKS)}. "
                f"Set {self.config_key}.every_n_steps=0 for this stage.",
            )
            return None
        return objective

    def _requests(self, objective: Any) -> list[dict[str, Any]]:
        task = objective.task
        what = get_task(task).sample_input  # "image" or "prompt"
        if what == "image":  # read as training reads images, at the stage size (what sample.py does too)
            size = (objective.height, objective.width)
            groups = image_groups(self.images, task=task, key=f"{self.config_key}.images")
            read = read_image_pair if len(get_task(task).cond_frame_indices) == 2 else read_image
            requests = [{"image": read(*group, size=size)} for group in groups]
        else:
            requests = [{"prompt": prompt} for prompt in self.prompts]
        if not requests:
            key = f"{what}s"
            self._warn_once(key, f"{type(self).__name__} has no {key} for the {task} task; set {self.config_key}.{key}")
        return [{**r, "seed": self.seed + k} for r in requests for k in range(self.videos_per_prompt)]

    def _generate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Samples | None:
        """Mark the current step done and, on global rank 0, sample every request; None when there is nothing."""
        self._last_step = trainer.global_step
        if not trainer.is_global_zero:
            return None
        objective = self._objective(pl_module)
        requests = self._requests(objective) if objective is not None else []
        if objective is None or not requests:
            return None
        with ema_weights(pl_module):
            videos = [self._sample(objective, request, pl_module.device) for request in requests]
        return Samples(objective, requests, videos)

    def _sample(self, objective: Any, request: dict[str, Any], device: torch.device) -> torch.Tensor:
        settings = dataclasses.replace(self.settings, seed=request["seed"])
        model, denoiser, frames = objective.model, objective.denoiser, objective.num_frames
        if get_task(objective.task).name == INTERPOLATION_TASK:  # scripts/sample.py --interpolate's path
            return interpolate_pair(
                model, denoiser, request["image"], num_frames=frames, settings=settings, device=device
            )
        return sample_video(
            model,
            denoiser,
            task=objective.task,
            num_frames=frames,
            height=objective.height,
            width=objective.width,
            device=device,
            prompt=request.get("prompt"),
            image=request.get("image"),
            settings=settings,
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # global_step counts optimizer steps; with gradient accumulation several batches end on the same step.
        if getattr(pl_module, "mid_accumulation", False):
            return
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self._run(trainer, pl_module)
