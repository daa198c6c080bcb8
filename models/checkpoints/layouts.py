"""Recognise a checkpoint's format and bring it to our keys (the official sgm / SVD layout, ``latent_diffusion.py``).

| source | recognised by | becomes |
|---|---|---|
| a state dict | a ``Mapping`` | itself |
| diffusers ``StableVideoDiffusionPipeline`` folder | ``model_index.json`` | the svd layout (``diffusers_folder``) |
| a file (official SVD / SD 2.1, our stage export, a bare VAE) | anything else | ``load_state_dict`` (``safe_load``) |
| SD 2.1 ldm layout | ``cond_stage_model.*`` | ``conditioner.embedders.0.*``; schedule, ``model_ema.*`` dropped |
| sgm SD 2.1 layout | ``denoiser.*`` | those buffers dropped |
| bare ``AutoencoderKL`` (first stage) | only ``encoder.``, ``decoder.``, quant conv keys | ``first_stage_model.*`` |

sgm/svd files and our stage exports already have our keys. Writing goes the other way: a stage export is our state
dict as is, a diffusers folder is ``diffusers_pipeline.to_diffusers_pipeline``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from torch import Tensor

from ..diffusion.ddpm_schedule import LDM_SCHEDULE_BUFFER_NAMES
from ..latent_diffusion import FIRST_STAGE_PREFIX
from .diffusers_folder import is_diffusers_folder, load_diffusers_state_dict
from .keys import add_prefix
from .safe_load import load_state_dict

CheckpointSource = str | os.PathLike[str] | Mapping[str, Tensor]

LDM_TEXT_PREFIX = "cond_stage_model."
SGM_TEXT_PREFIX = "conditioner.embedders.0."
BARE_VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")

DROP_SCHEDULE = "ldm DDPM schedule buffer (the target builds its own noise schedule)"
DROP_EMA = "ldm model_ema.* shadow weights (the main weights initialise the model)"
DROP_DENOISER = "sgm denoiser buffer (the target builds its own noise schedule)"


def read_checkpoint(source: CheckpointSource) -> tuple[dict[str, Tensor], str]:
    """``(state dict, name for messages)`` of a state dict, a diffusers pipeline folder or a checkpoint file."""
    if isinstance(source, Mapping):
        return dict(source), "<state dict>"
    if is_diffusers_folder(source):
        return load_diffusers_state_dict(source), os.fspath(source)
    return load_state_dict(source), os.fspath(source)


def normalise_layout(
    state: Mapping[str, Tensor], *, target_keys: Sequence[str] = ()
) -> tuple[dict[str, Tensor], dict[str, list[str]]]:
    """Bring an SD 2.1 ldm / sgm file to our layout: ``(state, {reason: dropped keys})``.

    ``cond_stage_model.*`` becomes ``conditioner.embedders.0.*``; ldm schedule buffers, ``model_ema.*`` and sgm's
    ``denoiser.*`` are dropped unless the target has those keys. sgm/svd files and our exports pass unchanged.
    """
    wanted = set(target_keys)
    if any(k.startswith(LDM_TEXT_PREFIX) for k in state) and any(k.startswith(SGM_TEXT_PREFIX) for k in state):
        raise ValueError(
            f"the source has both '{LDM_TEXT_PREFIX}*' (ldm) and '{SGM_TEXT_PREFIX}*' (sgm) text-encoder keys; "
            "it mixes two layouts, re-export it from one model"
        )
    out: dict[str, Tensor] = {}
    dropped: dict[str, list[str]] = {}
    for key, value in state.items():
        if key in wanted:
            out[key] = value
        elif key in LDM_SCHEDULE_BUFFER_NAMES:
            dropped.setdefault(DROP_SCHEDULE, []).append(key)
        elif key.startswith("model_ema."):
            dropped.setdefault(DROP_EMA, []).append(key)
        elif key.startswith("denoiser."):
            dropped.setdefault(DROP_DENOISER, []).append(key)
        elif key.startswith(LDM_TEXT_PREFIX):
            out[SGM_TEXT_PREFIX + key[len(LDM_TEXT_PREFIX) :]] = value
        else:
            out[key] = value
    return out, dropped


def read_first_stage(source: CheckpointSource) -> tuple[dict[str, Tensor], str]:
    """The ``first_stage_model.*`` keys of a checkpoint; a bare ``AutoencoderKL`` state dict is prefixed."""
    state, name = read_checkpoint(source)
    first = {k: v for k, v in state.items() if k.startswith(FIRST_STAGE_PREFIX)}
    if not first and state and all(k.startswith(BARE_VAE_PREFIXES) for k in state):
        first = add_prefix(FIRST_STAGE_PREFIX, state)
    if not first:
        raise ValueError(
            f"first_stage_source {name} has no '{FIRST_STAGE_PREFIX}*' keys and is not a bare autoencoder state dict "
            f"(keys under {', '.join(BARE_VAE_PREFIXES)}); pass an autoencoder export, an SD 2.1 or an SVD file"
        )
    return first, name
