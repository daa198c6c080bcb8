"""The task registry: what a task conditions on, how its conditioner is built and how it samples.

A task (``conditioner.task``) fixes the conditioner, the inputs built for it in training and at sampling, the UNet's
vector size and input channels, and whether the stage is a video stage. Each is one frozen ``TaskSpec`` in
``TASKS``; the config schema, validation, builders, the objective, sampling, the callbacks and the scripts look the
name up here and never compare task names. The three of the recipe:

- ``t2i`` (Stage I): SD 2.1 text conditioner; input ``txt``; unconditional ``txt = ""``.
- ``t2v`` (II, III text-to-video): text + ``fps_id`` + ``motion_bucket_id``; unconditional ``txt = ""``, vector kept.
- ``i2v`` (SVD / SVD-XT): the SVD image conditioner (RECIPE 2), its five keys; unconditional ``cond_frames*``
  zeroed, vector kept.

Adding a task is one ``register_task(TaskSpec(...))`` plus one ``conf/conditioner/<name>.yaml`` (``task: <name>``);
see ``train/README.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from models.conditioners import (
    CLIP_EMBEDDING_KEY,
    SVD_INPUT_KEYS,
    SVD_UC_ZERO_KEYS,
    GeneralConditioner,
    add_cond_noise,
    build_sd21_text_conditioner,
    build_svd_conditioner,
    build_text_video_conditioner,
)
from models.conditioners.presets import TEXT_VIDEO_INPUT_KEYS
from models.vae import AutoencoderKL, AutoencoderSpec

TEXT_KEY = "txt"
VECTOR_KEYS = ("fps_id", "motion_bucket_id")


@dataclass(frozen=True)
class ConditionerParts:
    """What a task's conditioner builder may use, taken from the config (``train.builders.conditioner_parts``)."""

    clip_arch: str | dict[str, Any]  # an open_clip model name, or the tiny test config
    clip_pretrained: str | None
    ucg_rates: dict[str, float]  # input key -> CFG dropout probability (conditioner.ucg_rates)
    clip_resize: str  # conditioner.clip_resize
    autoencoder: AutoencoderSpec  # the first stage's spec (the SVD concat-latent encoder is a copy of it)
    num_frames: int = 1  # stage.num_frames (the interpolation conditioner lays out a per-frame input)


# keyword sources (captions, fps_id, motion_bucket_id, cond_image, cond_aug, generator) -> the conditioner batch;
# a builder takes the ones it uses and ignores the others (**_).
InputsBuilder = Callable[..., dict[str, Any]]
# conditional batch -> (unconditional batch, embeddings zeroed there)
UncondBuilder = Callable[[dict[str, Any]], tuple[dict[str, Any], tuple[str, ...]]]


@dataclass(frozen=True)
class TaskSpec:
    """One task. ``image_conditioned`` tasks train on a clean first frame with noise ``cond_aug`` drawn per video
    (``train.conditioning.CondAugConfig``) and sample from an image; the others sample from a prompt. ``video``
    tasks train a video UNet (``model.unet.video``) and guide with a per-frame scale ramp (min_cfg -> max_cfg);
    image tasks sample one frame with a constant scale (max_cfg)."""

    name: str
    build_conditioner: Callable[[ConditionerParts], GeneralConditioner]
    input_keys: tuple[str, ...]
    vector_dim: int | None  # the UNet's adm_in_channels; None: no vector input
    conditional_inputs: InputsBuilder
    unconditional_inputs: UncondBuilder
    video: bool
    image_conditioned: bool = False
    in_channel_factor: int = 1  # UNet in_channels = factor x latent channels (i2v concatenates the frame's latent)
    extra_in_channels: int = 0  # + this many (interp's mask channel: 2 x 4 + 1 = 9)
    # The clip frames an image-conditioned task conditions on in training (i2v the first; interp the first and last,
    # then cond_image is (B, k, 3, H, W) and sampling takes k images).
    cond_frame_indices: tuple[int, ...] = (0,)
    # Hand-off hook (train.init_weights.load_init_weights): maps a source state dict onto this task's layout in place
    # before matching (e.g. mv's label_emb columns) and returns the lines the init report lists as widened.
    adapt_init: Callable[[dict[str, torch.Tensor], Mapping[str, torch.Tensor]], list[str]] | None = None

    @property
    def sample_input(self) -> str:
        """What a sampling request gives: ``image`` (a conditioning image) or ``prompt``."""
        return "image" if self.image_conditioned else "prompt"


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add ``spec`` to ``TASKS`` (``replace=True`` to redefine a name)."""
    if spec.name in TASKS and not replace:
        raise ValueError(f"task {spec.name!r} is registered already; pass replace=True to redefine it")
    TASKS[spec.name] = spec
    return spec


def unregister_task(name: str) -> TaskSpec:
    return TASKS.pop(get_task(name).name)


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"task={name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def text_inputs(*, captions: list[str], **_: Any) -> dict[str, Any]:
    return {TEXT_KEY: list(captions)}


def text_vector_inputs(
    *, captions: list[str], fps_id: torch.Tensor, motion_bucket_id: torch.Tensor, **_: Any
) -> dict[str, Any]:
    return {TEXT_KEY: list(captions), "fps_id": fps_id.float(), "motion_bucket_id": motion_bucket_id.float()}


def image_inputs(
    *,
    fps_id: torch.Tensor,
    motion_bucket_id: torch.Tensor,
    cond_image: torch.Tensor | None = None,
    cond_aug: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_image_embedding: torch.Tensor | None = None,
    **_: Any,
) -> dict[str, Any]:
    if cond_image is None or cond_aug is None:
        raise ValueError("i2v conditioning needs cond_image (the clean first frame) and cond_aug")
    inputs = {
        "cond_frames_without_noise": cond_image,
        "cond_frames": add_cond_noise(cond_image, cond_aug, generator=generator),
        "fps_id": fps_id.float(),
        "motion_bucket_id": motion_bucket_id.float(),
        "cond_aug": cond_aug.float(),
    }
    if clip_image_embedding is not None:  # cached: the conditioner skips its CLIP tower (same dtype as the tower's)
        inputs[CLIP_EMBEDDING_KEY] = clip_image_embedding.to(cond_image.dtype)
    return inputs


def empty_caption(inputs: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The text tasks' unconditional branch: the empty caption, the vector kept."""
    return {**inputs, TEXT_KEY: [""] * len(inputs[TEXT_KEY])}, ()


def zeroed_image(inputs: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """SVD's unconditional branch: the image embeddings zeroed, the vector kept."""
    return inputs, SVD_UC_ZERO_KEYS


def _sd21_text(parts: ConditionerParts) -> GeneralConditioner:
    unknown = set(parts.ucg_rates) - {TEXT_KEY}
    if unknown:
        raise ValueError(f"conditioner.ucg_rates has keys {sorted(unknown)}; the t2i conditioner has only 'txt'")
    return build_sd21_text_conditioner(
        arch=parts.clip_arch, pretrained=parts.clip_pretrained, ucg_rate=parts.ucg_rates.get(TEXT_KEY, 0.0)
    )


def _text_video(parts: ConditionerParts) -> GeneralConditioner:
    return build_text_video_conditioner(
        arch=parts.clip_arch, pretrained=parts.clip_pretrained, ucg_rates=parts.ucg_rates
    )


def _svd(parts: ConditionerParts) -> GeneralConditioner:
    return build_svd_conditioner(
        encoder=AutoencoderKL(parts.autoencoder),
        clip_arch=parts.clip_arch,
        clip_pretrained=parts.clip_pretrained,
        clip_resize=parts.clip_resize,
        ucg_rates=parts.ucg_rates,
    )


# The recipe's tasks, one row each: name, conditioner builder, input keys, vector size, conditional and
# unconditional inputs, then the keywords.
register_task(TaskSpec("t2i", _sd21_text, (TEXT_KEY,), None, text_inputs, empty_caption, video=False))
# t2i's text plus the fps_id and motion_bucket_id sinusoids (a 512 vector), on a video UNet.
register_task(TaskSpec("t2v", _text_video, TEXT_VIDEO_INPUT_KEYS, 512, text_vector_inputs, empty_caption, video=True))
# The released SVD / SVD-XT checkpoints' task (SVD_TASK): the clean frame's CLIP embedding, its noised latent
# concatenated to the UNet input, and the fps_id, motion_bucket_id and cond_aug vector (768).
SVD_TASK = register_task(
    TaskSpec(
        "i2v",
        _svd,
        SVD_INPUT_KEYS,
        768,
        image_inputs,
        zeroed_image,
        video=True,
        image_conditioned=True,
        in_channel_factor=2,
    )  # fmt: skip
).name

# Tasks defined in their own modules register themselves on import.
from train import task_interpolation  # noqa: E402, F401, I001
from train import task_multiview  # noqa: E402, F401, I001
