"""Evaluate a fixed generated set with the EMA weights every ``every_n_steps`` optimizer steps and at the end.

The set is the same at every evaluation: each prompt (text tasks) or conditioning image (image-conditioned tasks)
sampled with seeds ``seed, seed + 1, ...`` (``videos_per_prompt`` of them), so the numbers move with the weights
only. Metrics:

* ``eval/clipsim`` (text tasks) or ``eval/clip_image_similarity`` (image-conditioned tasks; for frame interpolation
  the mean of the scores against the first and the last image), and ``eval/clip_consistency`` (video);
* with ``features`` "i3d" (``eval/fvd``) or "clip" (``eval/fd_clip``): the Frechet distance to ``num_reference``
  clips from the ``reference`` shards, cut at the stage's frames and size (their statistics are computed once). A
  handful of generated videos gives a noisy, biased estimate: read it as a trend, never as the paper's FVD
  (``scripts/evaluate.py ucf101`` is the protocol).

They go to every logger of the trainer (``log_metrics`` at the current step) and as one json row per evaluation to
``<stage_dir>/eval_metrics.jsonl`` (kept apart from metrics.jsonl, whose rows are one per training batch). The
schedule, rank 0 and the EMA swap are ``train.callbacks.periodic``'s, as for ``SampleVideos``: use it with DDP or one
device, not with sharded weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from train.callbacks.periodic import PeriodicSampling
from train.config import EvaluationConfig, GenerationSettings, generation_settings
from train.evaluation.clip_metrics import ClipScorer, embed_videos, score_frame_embeddings
from train.evaluation.features import (
    ClipVideoFeatures,
    VideoFeatureExtractor,
    accumulate_features,
    build_extractor,
    metric_name,
)
from train.evaluation.frechet import FeatureStats, frechet_distance
from train.evaluation.video_files import iter_shard_clips
from train.run_folder import EVAL_METRICS_FILE
from train.tasks import get_task

FEATURES = ("none", "i3d", "clip")
EVAL_FILE = EVAL_METRICS_FILE  # trimmed on resume and emptied on a fresh start, as metrics.jsonl (train/run_folder.py)


class EvaluateVideos(PeriodicSampling):
    """CLIP scores (and a Frechet distance to real clips) of a fixed generated set, logged during training."""

    config_key = "logger.evaluation"

    def __init__(
        self,
        every_n_steps: int,
        *,
        prompts: Sequence[str] = (),
        images: Sequence[str] = (),
        videos_per_prompt: int = EvaluationConfig.videos_per_prompt,
        settings: GenerationSettings | None = None,
        clip_arch: str = EvaluationConfig.clip_arch,
        clip_pretrained: str | None = EvaluationConfig.clip_pretrained,
        features: str = EvaluationConfig.features,
        i3d_path: str | None = EvaluationConfig.i3d_path,
        reference: Sequence[str] = (),
        num_reference: int = EvaluationConfig.num_reference,
        batch_size: int = EvaluationConfig.batch_size,
    ) -> None:
        super().__init__(
            every_n_steps, prompts=prompts, images=images, settings=settings, videos_per_prompt=videos_per_prompt
        )
        if features not in FEATURES:
            raise ValueError(f"features={features!r} is not valid; choose one of {', '.join(FEATURES)}")
        if features == "i3d" and not i3d_path:
            raise ValueError("features=i3d needs i3d_path: the protocol's TorchScript I3D file (i3d_torchscript.pt)")
        if features != "none" and not reference:
            raise ValueError(f"features={features} needs reference: shard specs of real clips to compare with")
        self.clip_arch, self.clip_pretrained = clip_arch, clip_pretrained
        self.features, self.i3d_path = features, i3d_path
        self.reference, self.num_reference, self.batch_size = list(reference), num_reference, batch_size
        self._scorer: ClipScorer | None = None
        self._extractor: VideoFeatureExtractor | None = None
        self._reference_stats: tuple[Any, Any] | None = None

    @classmethod
    def from_config(cls, node: Any) -> EvaluateVideos:
        """From an ``EvaluationConfig`` node (logger.evaluation): its other keys are constructor arguments."""
        settings = generation_settings(node)
        rest = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not hasattr(settings, k)}
        return cls(**rest, settings=settings)

    def _build(self, device: torch.device) -> None:
        if self._scorer is None:
            if self.clip_pretrained is None and self.clip_arch != "tiny":
                self._warn_once(
                    "clip",
                    "EvaluateVideos: logger.evaluation.clip_pretrained is unset, CLIP is random "
                    "and its scores mean nothing; give an open_clip tag or weights file",
                )
            self._scorer = ClipScorer.build(self.clip_arch, pretrained=self.clip_pretrained, device=device)
        if self._extractor is None and self.features != "none":
            self._extractor = build_extractor(
                self.features, i3d_path=self.i3d_path, device=device, batch_size=self.batch_size, scorer=self._scorer
            )

    def _frechet(self, videos: list[torch.Tensor], frames: list[torch.Tensor], objective: Any) -> dict[str, float]:
        """Frechet distance of ``videos`` to the reference clips; ``frames`` are their (T, D) CLIP frame embeddings,
        which CLIP features reuse instead of running CLIP over the videos again."""
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
        if isinstance(extractor, ClipVideoFeatures):
            generated = FeatureStats()
            generated.add(extractor.pool(torch.stack(frames)))  # (N, T, D) -> (N, dim)
        else:
            generated = accumulate_features(
                extractor, iter(videos), batch_size=self.batch_size, what="generated videos"
            )
        return {f"eval/{metric_name(extractor)}": frechet_distance(*generated.stats(), *self._reference_stats)}

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Generate the set, compute and log its metrics for the current step; returns them ({} off rank 0)."""
        step = trainer.global_step
        samples = self._generate(trainer, pl_module)
        if samples is None:
            return {}
        videos = [v.permute(0, 3, 1, 2).contiguous() for v in samples.videos]  # (T, H, W, 3) -> (T, 3, H, W)
        self._build(pl_module.device)
        assert self._scorer is not None
        from_image = get_task(samples.objective.task).image_conditioned
        texts = None if from_image else [r["prompt"] for r in samples.requests]
        images = [r["image"] for r in samples.requests] if from_image else None
        frames = list(embed_videos(self._scorer, videos))  # (T, D) per video, for the scores and CLIP features
        ends = images is not None and images[0].ndim == 4  # interp: (2, 3, H, W), the first and last frame
        scores = score_frame_embeddings(self._scorer, frames, prompts=texts, images=None if ends else images)
        if ends:
            assert images is not None
            per_end = [
                score_frame_embeddings(self._scorer, frames, images=[pair[j] for pair in images]).image_similarity
                for j in range(images[0].shape[0])
            ]
            scores.image_similarity = [sum(s) / len(s) for s in zip(*per_end, strict=True)]
        metrics = {f"eval/{k}": v for k, v in scores.summary().items()}
        metrics.update(self._frechet(videos, frames, samples.objective))
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

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.evaluate(trainer, pl_module)
