"""The diffusion objective of Stages I to III: batch -> latents, sigma, conditions -> weighted denoising loss.

One step (RECIPE 3): latents from the frozen first stage (encoded here, or read from a latent cache), one sigma
per video from the stage's log-normal, ``x_noisy = x0 + sigma n``, the EDM-preconditioned denoiser around the UNet,
``lambda(sigma) = (1 + sigma^2) / sigma^2``. Conditions per task come from ``train/conditioning.py`` with the
conditioner's CFG dropout; images train as 1-frame clips (``image_only_indicator`` passes through to the UNet).
"""

from __future__ import annotations

import torch
from torch import nn

from data.batch import Batch
from data.transforms import to_model_range
from models.diffusion import Denoiser, StandardDiffusionLoss
from models.latent_diffusion import LatentDiffusion
from models.vae.distributions import DiagonalGaussianDistribution
from train.conditioning import CondAugConfig, cached_clip_embedding, conditioner_inputs, per_frame, sample_cond_aug
from train.objectives.base import Metrics, Objective
from train.tasks import get_task


class DiffusionObjective(Objective):
    def __init__(
        self,
        model: LatentDiffusion,
        *,
        task: str,
        denoiser: Denoiser,
        loss: StandardDiffusionLoss,
        num_frames: int,
        height: int,
        width: int,
        cond_aug: CondAugConfig | None = None,
        encode_chunk: int | None = 16,
    ) -> None:
        super().__init__()
        self.model = model
        self.task = get_task(task).name
        self.denoiser = denoiser
        self.loss = loss
        self.num_frames = num_frames
        self.height = height
        self.width = width
        self.cond_aug = cond_aug or CondAugConfig()
        self.encode_chunk = encode_chunk

    @property
    def is_video(self) -> bool:
        return self.model.unet.spec.is_video

    def export_module(self) -> nn.Module:
        return self.model

    def sampling_inputs(self) -> dict[str, object]:
        return {"task": self.task, "num_frames": self.num_frames, "height": self.height, "width": self.width}

    @torch.no_grad()
    def latents(self, batch: Batch, *, generator: torch.Generator) -> torch.Tensor:
        """(B*T, C, h, w) scaled latents: a posterior sample of the frames, or of the cached moments."""
        first_stage = self.model.first_stage
        if "latent_moments" in batch:
            moments = batch["latent_moments"].float()  # (B, T, 2C, h, w)
            posterior = DiagonalGaussianDistribution(moments.flatten(0, 1))
            return posterior.sample(generator=generator) * first_stage.scale_factor
        if "frames" not in batch:
            raise ValueError("the batch has neither frames nor latent_moments; check the data config")
        frames = batch["frames"]  # (B, T, 3, H, W) uint8
        if tuple(frames.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"frames are {tuple(frames.shape[-2:])} but the stage trains at {(self.height, self.width)}; the data "
                "config takes its size from stage.height/width"
            )
        x = to_model_range(frames.flatten(0, 1))
        with torch.autocast(x.device.type, enabled=False):  # the first stage runs in fp32 (sgm disables autocast)
            return first_stage.encode_latents(x.float(), chunk_size=self.encode_chunk, sample=True, generator=generator)

    def cond_image(self, batch: Batch) -> torch.Tensor:
        """The clean conditioning frame (B, 3, H, W) in [-1, 1]: frame 0, or the cached one; for a task conditioned
        on several frames (``TaskSpec.cond_frame_indices``, interp's first and last) (B, k, 3, H, W)."""
        indices = get_task(self.task).cond_frame_indices
        if indices != (0,):
            if "frames" not in batch:
                raise ValueError(f"task {self.task} conditions on frames {indices}: train on clips, not latents")
            return to_model_range(batch["frames"][:, list(indices)])
        frame = batch["cond_frame"] if "cond_frame" in batch else batch["frames"][:, 0]
        return to_model_range(frame)

    def forward(self, batch: Batch, *, generator: torch.Generator) -> tuple[torch.Tensor, Metrics]:
        indicator = batch["image_only_indicator"]  # (B, T)
        b, t = indicator.shape
        if self.is_video and t != self.num_frames:
            raise ValueError(f"batch clips have {t} frames but stage.num_frames={self.num_frames}")
        x0 = self.latents(batch, generator=generator)
        device = x0.device
        cond_image = cond_aug = None
        if get_task(self.task).image_conditioned:
            cond_image = self.cond_image(batch)
            cond_aug = sample_cond_aug(self.cond_aug, b, generator=generator, device=device)
        inputs = conditioner_inputs(
            self.task,
            captions=batch["caption"],
            fps_id=batch["fps_id"],
            motion_bucket_id=batch["motion_bucket_id"],
            elevation=batch.get("elevation"),  # multi-view orbits (the mv task); others ignore it
            cond_image=cond_image,
            cond_aug=cond_aug,
            generator=generator,
            clip_image_embedding=cached_clip_embedding(self.model.conditioner, batch),
        )
        cond = self.model.conditioner(inputs, generator=generator)
        kwargs = {}
        if self.is_video:
            cond = per_frame(cond, t)
            kwargs = {"num_video_frames": t, "image_only_indicator": indicator.to(x0.dtype)}
        per_sample = self.loss(
            self.model.unet, self.denoiser, x0, cond, num_video_frames=t, generator=generator, network_kwargs=kwargs
        )
        loss = per_sample.mean()
        return loss, {"latent_std": x0.detach().std()}
