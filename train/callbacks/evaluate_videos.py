"""Evaluate a fixed generated set with the EMA weights every ``every_n_steps`` optimizer steps and at the end.

The set is the same at every evaluation: each prompt (t2i, t2v) or conditioning image (i2v) sampled with seeds
``seed, seed + 1, ...`` (``videos_per_prompt`` of them), so the numbers move with the weights only. Metrics:

* ``eval/clipsim`` (text tasks) or ``eval/clip_image_similarity`` (i2v), and ``eval/clip_consistency`` (video);
* with ``features`` "i3d" (``eval/fvd``) or "clip" (``eval/fd_clip``): the Frechet distance to ``num_reference``
  clips from the ``reference`` shards, cut at the stage's frames and size (their statistics are computed once). A
  handful of generated videos gives a noisy, biased estimate: read it as a trend, never as the paper's FVD
  (``scripts/evaluate.py ucf101`` is the protocol).

They go to every logger of the trainer (``log_metrics`` at the current step) and as one json row per evaluation to
``<stage_dir>/eval_metrics.jsonl`` (kept apart from metrics.jsonl, whose rows are one per training batch). Only global
rank 0 evaluates, as ``SampleVideos`` samples: use it with DDP or one device, not with sharded weights.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from train.callbacks.sample_videos import SAMPLING_ATTRS
from train.conditioning import TASKS
from train.evaluation.clip_metrics import ClipScorer, score_videos
from train.evaluation.features import ClipVideoFeatures, I3DFeatures, VideoFeatureExtractor, accumulate_features
from train.evaluation.frechet import frechet_distance
from train.evaluation.generate import GenerationSettings, generate_video
from train.evaluation.video_files import iter_shard_clips
from train.media import read_image

FEATURES = ("none", "i3d", "clip")
EVAL_FILE = "eval_metrics.jsonl"


class EvaluateVideos(pl.Callback):
    """CLIP scores (and a Frechet distance to real clips) of a fixed generated set, logged during training."""

    def __init__(
        self,
        every_n_steps: int,
        *,
        prompts: Sequence[str] = (),
        images: Sequence[str] = (),
        videos_per_prompt: int = 1,
        num_steps: int = 25,
        min_cfg: float = 1.0,
        max_cfg: float = 2.5,
        fps_id: int = 6,
        motion_bucket_id: int = 127,
        cond_aug: float = 0.02,
        seed: int = 0,
        decode_chunk: int = 14,
        clip_arch: str = "ViT-B-32",
        clip_pretrained: str | None = None,
        features: str = "none",
        i3d_path: str | None = None,
        reference: Sequence[str] = (),
        num_reference: int = 64,
        batch_size: int = 8,
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}; use a positive number of optimizer steps")
        if videos_per_prompt < 1:
            raise ValueError(f"videos_per_prompt={videos_per_prompt}; use at least 1")
        if features not in FEATURES:
            raise ValueError(f"features={features!r} is not valid; choose one of {', '.join(FEATURES)}")
        if features == "i3d" and not i3d_path:
            raise ValueError("features=i3d needs i3d_path: the protocol's TorchScript I3D file (i3d_torchscript.pt)")
        if features != "none" and not reference:
            raise ValueError(f"features={features} needs reference: shard specs of real clips to compare with")
        self.every_n_steps = every_n_steps
        self.prompts, self.images = list(prompts), [str(p) for p in images]
        self.videos_per_prompt = videos_per_prompt
        self.sampling = dict(
            num_steps=num_steps,
            min_cfg=min_cfg,
            max_cfg=max_cfg,
            fps_id=fps_id,
            motion_bucket_id=motion_bucket_id,
            cond_aug=cond_aug,
            decode_chunk=decode_chunk,
        )
        self.seed = seed
        self.clip_arch, self.clip_pretrained = clip_arch, clip_pretrained
        self.features, self.i3d_path = features, i3d_path
        self.reference, self.num_reference, self.batch_size = list(reference), num_reference, batch_size
        self._scorer: ClipScorer | None = None
        self._extractor: VideoFeatureExtractor | None = None
        self._reference_stats: tuple[Any, Any] | None = None
        self._last_step = -1
        self._warned: set[str] = set()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            warnings.warn(message, stacklevel=2)
            self._warned.add(key)

    def _objective(self, pl_module: pl.LightningModule) -> Any | None:
        objective = getattr(pl_module, "objective", None)
        if getattr(objective, "task", None) not in TASKS or any(not hasattr(objective, a) for a in SAMPLING_ATTRS):
            self._warn_once(
                "objective",
                f"EvaluateVideos does nothing: {type(objective).__name__} cannot sample; "
                "remove logger.evaluation for this stage",
            )
            return None
        return objective

    def _requests(self, task: str) -> list[dict[str, Any]]:
        if task == "i2v":
            requests = [{"image": read_image(path)} for path in self.images]
        else:
            requests = [{"prompt": prompt} for prompt in self.prompts]
        if not requests:
            key = "images" if task == "i2v" else "prompts"
            self._warn_once(key, f"EvaluateVideos has no {key} for the {task} task; set logger.evaluation.{key}")
        return [{**r, "seed": self.seed + k} for r in requests for k in range(self.videos_per_prompt)]

    def _build(self, device: torch.device) -> None:
        if self._scorer is None:
            if self.clip_pretrained is None and self.clip_arch != "tiny":
                self._warn_once(
                    "clip",
                    "EvaluateVideos: logger.evaluation.clip_pretrained is unset, CLIP is random "
                    "and its scores mean nothing; give an open_clip tag or weights file",
                )
            self._scorer = ClipScorer.build(self.clip_arch, pretrained=self.clip_pretrained, device=device)
        if self._extractor is None and self.features == "i3d":
            assert self.i3d_path is not None
            self._extractor = I3DFeatures(self.i3d_path, device=device, batch_size=self.batch_size)
        elif self._extractor is None and self.features == "clip":
            self._extractor = ClipVideoFeatures(self._scorer)

    def _frechet(self, videos: list[torch.Tensor], objective: Any) -> dict[str, float]:
        extractor = self._extractor
        if extractor is None:
            return {}
        if len(videos) < 2 or objective.num_frames < 2:
            self._warn_once(
                "fd",
                "EvaluateVideos: a Frechet distance needs >= 2 generated videos of >= 2 frames; "
                "add prompts or raise videos_per_prompt",
            )
            return {}
        if self._reference_stats is None:
            clips = iter_shard_clips(
                self.reference,
                num_frames=objective.num_frames,
                size=(objective.height, objective.width),
                seed=self.seed,
            )
            stats = accumulate_features(
                extractor, clips, batch_size=self.batch_size, limit=self.num_reference, what="reference clips"
            )
            self._reference_stats = stats.stats()
        generated = accumulate_features(extractor, iter(videos), batch_size=self.batch_size, what="generated videos")
        name = "fvd" if extractor.name == "i3d" else f"fd_{extractor.name}"
        return {f"eval/{name}": frechet_distance(*generated.stats(), *self._reference_stats)}

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Generate the set, compute and log its metrics for the current step; returns them ({} off rank 0)."""
        step = trainer.global_step
        self._last_step = step
        if not trainer.is_global_zero:
            return {}
        objective = self._objective(pl_module)
        requests = self._requests(objective.task) if objective is not None else []
        if objective is None or not requests:
            return {}
        settings = GenerationSettings(
            num_frames=objective.num_frames, height=objective.height, width=objective.width, **self.sampling
        )
        swap = getattr(pl_module, "ema_weights", None)
        with swap() if swap is not None else nullcontext():
            videos = [
                generate_video(
                    objective.model,
                    objective.denoiser,
                    task=objective.task,
                    settings=settings,
                    device=pl_module.device,
                    **r,
                )
                for r in requests
            ]
        self._build(pl_module.device)
        assert self._scorer is not None
        texts = [r["prompt"] for r in requests] if objective.task != "i2v" else None
        images = [r["image"] for r in requests] if objective.task == "i2v" else None
        scores = score_videos(self._scorer, videos, prompts=texts, images=images)
        metrics = {f"eval/{k}": v for k, v in scores.summary().items()}
        metrics.update(self._frechet(videos, objective))
        self._log(trainer, pl_module, metrics, step=step)
        return metrics

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, metrics: dict[str, float], *, step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()
        stage_dir = getattr(pl_module, "stage_dir", None)
        if stage_dir is not None:
            Path(stage_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(stage_dir) / EVAL_FILE, "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # global_step counts optimizer steps; with gradient accumulation several batches end on the same step.
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.evaluate(trainer, pl_module)
