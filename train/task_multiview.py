"""The multi-view task ``mv`` (SVD-MV, paper section 4.5 and App D.6; RECIPE 5 "SVD-MV details").

SVD-MV is SVD-XT turned into a novel-view generator: 21 frames orbiting an object, the first frame the given view.
It keeps the i2v conditioning (the clean first view's CLIP image embedding as cross-attention, its noised latent
concatenated to the UNet input, ``cond_aug`` as a vector entry) and replaces ``fps_id`` and ``motion_bucket_id`` by
the camera **elevation**, in degrees, through the same sinusoidal timestep-style embedding
(``models.conditioners.ConcatTimestepEmbedderND``: raw value, 256 features), concatenated to the vector:

| N | input_key | output |
|---|---|---|
| 0 | ``cond_frames_without_noise`` | crossattn (B, 1, 1024) |
| 1 | ``elevation`` | vector [0:256] |
| 2 | ``cond_frames`` | concat (B, 4, H/8, W/8) |
| 3 | ``cond_aug`` | vector [256:512] |

so the UNet's ``adm_in_channels`` is 512. Training reads ``elevation`` from each record's json (``data.micro_cond.
elevation_for``; a batch without it is a ValueError naming the fix); sampling takes ``GenerationSettings.elevation``
(``scripts/sample.py --elevation DEG``).

Hand-off from a 25-frame I2V export or SVD-XT's file (``handoff_to_multiview``, reported with the init's other
widenings): the conditioner's embedders move to the mv index of their input key (the concat-latent encoder
``embedders.3`` -> ``embedders.2``), and ``label_emb.0.0`` goes from 768 input columns [fps_id | motion_bucket_id |
cond_aug] to 512 [elevation | cond_aug]: the ``cond_aug`` columns are copied, the elevation columns start at zero,
and the fps/motion columns are folded into the bias at SVD's sampling defaults (``fps_id`` 6, ``motion_bucket_id``
127). At step 0 the multi-view model therefore computes exactly what the I2V model computes at fps 7 and motion 127,
at every elevation; the elevation columns get gradients from the first step. (The other choice, keeping 768 columns
with the elevation in the fps slot and a constant in the motion slot, would feed a pretrained frame-rate pathway a
new meaning.) A t2v source (512 columns [fps_id | motion_bucket_id], a 4-channel input conv) is mapped the same way
(fps/motion folded, elevation and cond_aug zero); an mv source loads as is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from models.conditioners import ConcatTimestepEmbedderND, EmbedderSpec, GeneralConditioner
from models.conditioners.presets import SVD_INPUT_KEYS
from models.latent_diffusion import CONDITIONER_PREFIX, UNET_PREFIX
from models.unet.embeddings import timestep_embedding
from train.tasks import SVD_TASK, ConditionerParts, TaskSpec, get_task, image_inputs, register_task, zeroed_image

MV_TASK = "mv"
ELEVATION_KEY = "elevation"
MV_INPUT_KEYS = ("cond_frames_without_noise", ELEVATION_KEY, "cond_frames", "cond_aug")
EMBED_DIM = 256  # per scalar, as SVD's fps_id / motion_bucket_id / cond_aug
# The vector layouts the hand-off knows, by the names of their 256-wide column blocks.
MV_VECTOR = (ELEVATION_KEY, "cond_aug")
I2V_VECTOR = ("fps_id", "motion_bucket_id", "cond_aug")
T2V_VECTOR = ("fps_id", "motion_bucket_id")
# Folded into the bias when fps/motion columns are dropped: SVD's sampling defaults (train.config.GenerationSettings,
# not imported: train.config imports the task registry, which imports this module).
HANDOFF_CONSTANTS = {"fps_id": 6.0, "motion_bucket_id": 127.0}
LABEL_EMB_W, LABEL_EMB_B = UNET_PREFIX + "label_emb.0.0.weight", UNET_PREFIX + "label_emb.0.0.bias"
INPUT_CONV = UNET_PREFIX + "input_blocks.0.0.weight"


def build_multiview_conditioner(parts: ConditionerParts) -> GeneralConditioner:
    """The i2v conditioner's CLIP, concat-latent and cond_aug embedders around a new elevation sinusoid."""
    rates = dict(parts.ucg_rates)
    unknown = sorted(set(rates) - set(MV_INPUT_KEYS))
    if unknown:
        raise ValueError(f"conditioner.ucg_rates has unknown keys {unknown}; the mv task's inputs are {MV_INPUT_KEYS}")
    elevation_rate = rates.pop(ELEVATION_KEY, 0.0)
    svd = get_task(SVD_TASK).build_conditioner(dataclasses.replace(parts, ucg_rates=rates))
    by_key = {spec.input_key: spec for spec in svd.specs}
    by_key[ELEVATION_KEY] = EmbedderSpec(ConcatTimestepEmbedderND(EMBED_DIM), ELEVATION_KEY, ucg_rate=elevation_rate)
    return GeneralConditioner([by_key[key] for key in MV_INPUT_KEYS])


def multiview_inputs(*, elevation: torch.Tensor | None = None, **sources: Any) -> dict[str, Any]:
    """The i2v inputs (``train.tasks.image_inputs``) with ``elevation`` (B,) degrees instead of fps and motion."""
    if elevation is None:
        raise ValueError(
            "the mv task conditions on the camera elevation and got none: training records need 'elevation' "
            "(degrees) in their json (as data/demo_orbits.py writes it); sampling needs --elevation DEG "
            "(scripts/sample.py) or logger.samples.elevation / logger.evaluation.elevation"
        )
    inputs = image_inputs(**sources)
    del inputs["fps_id"], inputs["motion_bucket_id"]
    return {**inputs, ELEVATION_KEY: elevation.float()}


def _source_vector(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    width = state[LABEL_EMB_W].shape[1]
    concat = INPUT_CONV in state and state[INPUT_CONV].shape[1] == target[INPUT_CONV].shape[1]
    for layout in (I2V_VECTOR, MV_VECTOR if concat else T2V_VECTOR):
        if width == EMBED_DIM * len(layout):
            return layout
    raise ValueError(
        f"{LABEL_EMB_W} of the source has {width} input columns; the mv hand-off knows an i2v source (768: fps_id, "
        "motion_bucket_id, cond_aug; SVD / SVD-XT or an img2vid_finetune export), a t2v one (512 with a 4-channel "
        "input conv) and an mv one (512)"
    )


def _renumber_embedders(state: dict[str, torch.Tensor]) -> list[str]:
    """An i2v source's conditioner keys moved to the mv embedder of the same input key (the concat-latent encoder
    ``embedders.3`` -> ``embedders.2``); fps_id and motion_bucket_id have no weights."""
    moves = {SVD_INPUT_KEYS.index(k): MV_INPUT_KEYS.index(k) for k in MV_INPUT_KEYS if k in SVD_INPUT_KEYS}
    moved: dict[str, torch.Tensor] = {}
    lines = []
    for old, new in moves.items():
        prefix = f"{CONDITIONER_PREFIX}embedders.{old}."
        keys = [k for k in state if k.startswith(prefix)]
        if keys and old != new:
            lines.append(
                f"{prefix}* -> {CONDITIONER_PREFIX}embedders.{new}.* ({SVD_INPUT_KEYS[old]}, {len(keys)} keys)"
            )
        moved.update({f"{CONDITIONER_PREFIX}embedders.{new}.{k[len(prefix) :]}": state.pop(k) for k in keys})
    state.update(moved)
    return lines


def _unused_concat_decoder(state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> list[str]:
    """The released SVD files leave out the concat-latent VAE's decoder (``ABSENT_OK`` names it at embedder 3); at
    the mv index it stays as built, as the i2v hand-off keeps it: ``encode()`` never uses it."""
    prefix = f"{CONDITIONER_PREFIX}embedders.{MV_INPUT_KEYS.index('cond_frames')}.encoder."
    if not any(k.startswith(prefix + "encoder.") for k in state):
        return []  # no concat encoder in the source: init_weights fills it from the first stage
    unused = [k for k in target if k.startswith((prefix + "decoder.", prefix + "post_quant_conv.")) and k not in state]
    state.update({k: target[k] for k in unused})
    return (
        [f"{prefix}decoder / post_quant_conv: {len(unused)} keys absent from the source, kept as built"]
        if unused
        else []
    )


@torch.no_grad()
def _remap_label_emb(state: dict[str, torch.Tensor], layout: tuple[str, ...]) -> str:
    weight, bias = state[LABEL_EMB_W], state[LABEL_EMB_B]
    blocks = dict(zip(layout, weight.double().split(EMBED_DIM, dim=1), strict=True))
    new = torch.zeros(weight.shape[0], EMBED_DIM * len(MV_VECTOR), dtype=torch.float64)
    for i, name in enumerate(MV_VECTOR):
        if name in blocks:
            new[:, i * EMBED_DIM : (i + 1) * EMBED_DIM] = blocks[name]
    folded = [name for name in layout if name not in MV_VECTOR]
    shift = torch.zeros(weight.shape[0], dtype=torch.float64)
    for name in folded:  # the features the conditioner would give that constant (float32, as at run time)
        features = timestep_embedding(torch.tensor([HANDOFF_CONSTANTS[name]]), EMBED_DIM)[0].double()
        shift += blocks[name] @ features
    state[LABEL_EMB_W] = new.to(weight.dtype)
    state[LABEL_EMB_B] = (bias.double() + shift).to(bias.dtype)
    copied = [n for n in MV_VECTOR if n in blocks]
    constants = ", ".join(f"{n}={HANDOFF_CONSTANTS[n]:g}" for n in folded)
    return (
        f"{LABEL_EMB_W} {tuple(weight.shape)} -> {tuple(new.shape)}: vector [{', '.join(layout)}] -> "
        f"[{', '.join(MV_VECTOR)}]; {', '.join(copied) or 'no'} columns copied, "
        f"{', '.join(n for n in MV_VECTOR if n not in blocks)} columns zero, {constants} folded into the bias"
    )


def handoff_to_multiview(state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> list[str]:
    """The mv task's ``adapt_init``: map an i2v (or t2v) source onto the mv layout in place (module docstring) and
    return the report lines. Nothing to do for a source without ``label_emb`` or with the mv layout already."""
    if LABEL_EMB_W not in state or LABEL_EMB_W not in target:
        return []
    layout = _source_vector(state, target)
    if layout == MV_VECTOR:
        return []
    lines = [*_renumber_embedders(state), *_unused_concat_decoder(state, target)] if layout == I2V_VECTOR else []
    return [*lines, _remap_label_emb(state, layout)]


# The multi-view task: i2v's image conditioning with the elevation in place of fps and motion (vector 512).
register_task(
    TaskSpec(
        MV_TASK,
        build_multiview_conditioner,
        MV_INPUT_KEYS,
        EMBED_DIM * len(MV_VECTOR),
        multiview_inputs,
        zeroed_image,
        video=True,
        image_conditioned=True,
        in_channel_factor=2,
        adapt_init=handoff_to_multiview,
    )  # fmt: skip
)
