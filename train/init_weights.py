"""Stage hand-off: initialise a stage's model from the previous stage's export or any checkpoint file.

Weights only. The target is a ``LatentDiffusion`` (or any module whose keys use its prefixes, e.g. an autoencoder
export with only ``first_stage_model.*``); components are found by prefix: ``unet`` (``model.diffusion_model.``),
``first_stage`` (``first_stage_model.``), ``conditioner`` (``conditioner.``). Every target key ends up either
loaded from the source or explained as new; every source key either loaded or explained as dropped. Anything
else is a ``ValueError`` naming the first keys.

| difference | handling |
|---|---|
| SD 2.1 ldm layout | ``cond_stage_model.`` -> ``conditioner.embedders.0.``; schedule buffers, ``model_ema.*`` dropped |
| sgm SD 2.1 layout | ``denoiser.*`` (discrete sigmas) dropped |
| diffusers SVD folder | read as the svd layout (``train/interop_diffusers.py``); what it lacks is new, unused |
| image UNet -> video UNet | ``inflate_image_unet``: temporal layers new, identity init (RECIPE 1.4) |
| input conv gains input channels | old channels copied, new ones zero (4 -> 8: the I2V concat latent) |
| ``label_emb`` gains input columns | old columns copied, new ones zero (t2v 512 -> i2v 768: no ``cond_aug`` at first) |
| ``label_emb`` appears | its last linear is zero, so the vector conditioning adds nothing at first |
| conditioner embedder of another kind | source keys dropped; the target's own kept only with ``keep=["conditioner"]`` |
| SVD concat-latent encoder missing | filled from the loaded first stage (both are the SD 2.1 KL-f8 ``AutoencoderKL``) |
| component absent from the source | an error unless named in ``keep`` (then the target's weights stay) |
| component absent from the target | its source keys are dropped |

``keep`` never skips loading: a component the source has is always loaded, and must match.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from models.checkpoints import load_state_dict
from models.checkpoints.inflation import INPUT_CONV_KEY, InflationReport, inflate_image_unet, is_temporal_key
from models.checkpoints.official import ABSENT_OK
from models.diffusion.ddpm_schedule import LDM_SCHEDULE_BUFFER_NAMES
from models.latent_diffusion import COMPONENT_PREFIXES, CONDITIONER_PREFIX, FIRST_STAGE_PREFIX, UNET_PREFIX
from train.interop_diffusers import is_diffusers_folder, load_diffusers_state_dict

log = logging.getLogger(__name__)

COMPONENTS: tuple[str, ...] = tuple(COMPONENT_PREFIXES)
LDM_TEXT_PREFIX = "cond_stage_model."
SGM_TEXT_PREFIX = "conditioner.embedders.0."
LABEL_EMB_IN_KEY = "label_emb.0.0.weight"
LABEL_EMB_OUT_KEYS = ("label_emb.0.2.weight", "label_emb.0.2.bias")
# Weights whose input dimension (dim 1) may grow; the new inputs start at zero.
WIDENABLE_KEYS = (INPUT_CONV_KEY, LABEL_EMB_IN_KEY)
BARE_VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# The half of a concat-latent AutoencoderKL that ``encode()`` needs (the rest may be absent, see ABSENT_OK).
CONCAT_ENCODER_PARTS = ("encoder.", "quant_conv.")

_EMBEDDER_RE = re.compile(r"conditioner\.embedders\.(\d+)\.")
_CONCAT_ENCODER_RE = re.compile(r"(conditioner\.embedders\.\d+\.encoder\.)encoder\.conv_in\.weight")
_ABSENT_OK_RE = [re.compile(p) for p in ABSENT_OK["svd"]]

DROP_SCHEDULE = "ldm DDPM schedule buffer (the target builds its own noise schedule)"
DROP_EMA = "ldm model_ema.* shadow weights (the main weights initialise the model)"
DROP_DENOISER = "sgm denoiser buffer (the target builds its own noise schedule)"
DROP_OTHER_KIND = "conditioner embedder of another kind than the target's"
DROP_REPLACED_FIRST_STAGE = "first stage replaced by first_stage_source"
NEW_TEMPORAL = "temporal layer inflated from an image UNet (identity init)"
NEW_LABEL_EMB = "label_emb new: vector conditioning, last layer zero"
NEW_CONCAT = "concat-latent encoder from the first stage"
NEW_UNUSED = "unused by the official code (absent from released files), kept as built"


def _kept(component: str) -> str:
    return f"{component} kept as built (keep={component})"


def _absent(component: str) -> str:
    return f"{component} is not part of the target"


@dataclass
class InitReport:
    """What an initialisation did: ``new`` and ``dropped`` map a reason to full keys."""

    source: str
    loaded: list[str] = field(default_factory=list)
    new: dict[str, list[str]] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    widened: list[str] = field(default_factory=list)
    inflation: InflationReport | None = None
    first_stage_source: str | None = None

    def add_new(self, reason: str, keys: Sequence[str]) -> None:
        if keys:
            self.new.setdefault(reason, []).extend(keys)

    def add_dropped(self, reason: str, keys: Sequence[str]) -> None:
        if keys:
            self.dropped.setdefault(reason, []).extend(keys)

    def summary(self) -> str:
        """A few human lines: counts per reason and the first keys of each."""
        n_new = sum(len(v) for v in self.new.values())
        n_dropped = sum(len(v) for v in self.dropped.values())
        fs = f" (first stage from {self.first_stage_source})" if self.first_stage_source else ""
        lines = [
            f"init from {self.source}{fs}: {len(self.loaded)} keys loaded, {n_new} new, {n_dropped} dropped, "
            f"{len(self.widened)} widened"
        ]
        lines += [f"  new, {reason}: {len(keys)} ({_first(keys)})" for reason, keys in self.new.items()]
        lines += [f"  dropped, {reason}: {len(keys)} ({_first(keys)})" for reason, keys in self.dropped.items()]
        lines += [f"  widened: {w}" for w in self.widened]
        return "\n".join(lines)


def _first(keys: Sequence[str], n: int = 3) -> str:
    more = f", ... {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _read(source: str | os.PathLike[str] | Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    if isinstance(source, Mapping):
        return dict(source), "<state dict>"
    if is_diffusers_folder(source):
        return load_diffusers_state_dict(source), os.fspath(source)
    return load_state_dict(source), os.fspath(source)


def _sub(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _with(prefix: str, keys: Sequence[str]) -> list[str]:
    return [prefix + k for k in keys]


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


def _read_first_stage(source: str | os.PathLike[str] | Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """The ``first_stage_model.*`` keys of a checkpoint; a bare ``AutoencoderKL`` state dict is prefixed."""
    state, name = _read(source)
    first = {k: v for k, v in state.items() if k.startswith(FIRST_STAGE_PREFIX)}
    if not first and state and all(k.startswith(BARE_VAE_PREFIXES) for k in state):
        first = {FIRST_STAGE_PREFIX + k: v for k, v in state.items()}
    if not first:
        raise ValueError(
            f"first_stage_source {name} has no '{FIRST_STAGE_PREFIX}*' keys and is not a bare autoencoder state dict "
            f"(keys under {', '.join(BARE_VAE_PREFIXES)}); pass an autoencoder export, an SD 2.1 or an SVD file"
        )
    return first, name


def _check_exact(what: str, prefix: str, target: Mapping[str, Tensor], source: Mapping[str, Tensor], hint: str) -> None:
    unknown = sorted(set(source) - set(target))
    missing = sorted(set(target) - set(source))
    shapes = [
        f"{prefix}{k}: source {tuple(v.shape)} vs target {tuple(target[k].shape)}"
        for k, v in source.items()
        if k in target and v.shape != target[k].shape
    ]
    if unknown or missing or shapes:
        raise ValueError(
            f"{what} does not match the target: {len(unknown)} unknown keys {_with(prefix, unknown[:5])}, "
            f"{len(missing)} missing keys {_with(prefix, missing[:5])}, {len(shapes)} shape mismatches "
            f"{shapes[:3]}; {hint}"
        )


def _init_other(
    target_sd: Mapping[str, Tensor], state: dict[str, Tensor], merged: dict[str, Tensor], report: InitReport
) -> None:
    """Keys outside the three component prefixes must match exactly."""
    prefixes = tuple(COMPONENT_PREFIXES.values())
    target = {k: v for k, v in target_sd.items() if not k.startswith(prefixes)}
    source = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    hint = "is it a checkpoint of this model family? Trainer state (optimizer, EMA) is not part of an init"
    _check_exact("the source outside the unet/first_stage/conditioner prefixes", "", target, source, hint)
    merged.update(source)
    report.loaded += sorted(source)


def _init_first_stage(
    target_sd: Mapping[str, Tensor],
    state: dict[str, Tensor],
    merged: dict[str, Tensor],
    report: InitReport,
    keep: set[str],
) -> None:
    target, source = _sub(target_sd, FIRST_STAGE_PREFIX), _sub(state, FIRST_STAGE_PREFIX)
    if not source:
        if "first_stage" not in keep:
            raise ValueError(
                f"the source has no first-stage (VAE) keys '{FIRST_STAGE_PREFIX}*'; pass first_stage_source= an "
                "autoencoder export or SD 2.1/SVD file, or keep=['first_stage'] to keep the target's own VAE"
            )
        report.add_new(_kept("first_stage"), _with(FIRST_STAGE_PREFIX, sorted(target)))
        merged.update({FIRST_STAGE_PREFIX + k: v for k, v in target.items()})
        return
    hint = "the first stage must be the same autoencoder; pass first_stage_source= a file with the target's VAE"
    _check_exact("the source first stage", FIRST_STAGE_PREFIX, target, source, hint)
    merged.update({FIRST_STAGE_PREFIX + k: v for k, v in source.items()})
    report.loaded += _with(FIRST_STAGE_PREFIX, sorted(source))


def _widen(key: str, value: Tensor, want: torch.Size) -> Tensor | None:
    """``value`` zero-padded on its input dimension to ``want``, or None when that is not an explained widening."""
    if key not in WIDENABLE_KEYS or value.ndim != len(want) or value.ndim < 2:
        return None
    if value.shape[0] != want[0] or value.shape[2:] != want[2:] or value.shape[1] >= want[1]:
        return None
    wide = value.new_zeros(want)
    wide[:, : value.shape[1]] = value
    return wide


def _init_unet(
    target_sd: Mapping[str, Tensor],
    state: dict[str, Tensor],
    merged: dict[str, Tensor],
    report: InitReport,
    keep: set[str],
) -> dict[str, Tensor] | None:
    """Fill ``merged`` with the UNet; return the (widened) image state dict when it must be inflated instead."""
    target, source = _sub(target_sd, UNET_PREFIX), _sub(state, UNET_PREFIX)
    if not source:
        if "unet" not in keep:
            raise ValueError(
                f"the source has no UNet keys '{UNET_PREFIX}*'; add 'unet' to keep to train the UNet from scratch"
            )
        report.add_new(_kept("unet"), _with(UNET_PREFIX, sorted(target)))
        merged.update({UNET_PREFIX + k: v for k, v in target.items()})
        return None
    for key in WIDENABLE_KEYS:
        if key in source and key in target and (wide := _widen(key, source[key], target[key].shape)) is not None:
            report.widened.append(f"{UNET_PREFIX}{key} {tuple(source[key].shape)} -> {tuple(wide.shape)}")
            source[key] = wide
    source_video = [k for k in source if is_temporal_key(k)]
    target_video = any(is_temporal_key(k) for k in target)
    if source_video and not target_video:
        raise ValueError(
            f"the source UNet has temporal layers ({_first(_with(UNET_PREFIX, source_video))}) but the target UNet "
            "is an image UNet; a video checkpoint cannot initialise an image model, build the target with temporal="
        )
    report.loaded += _with(UNET_PREFIX, sorted(source))
    if target_video and not source_video:
        return source

    unknown = sorted(set(source) - set(target))
    shapes = [
        f"{UNET_PREFIX}{k}: source {tuple(v.shape)} vs target {tuple(target[k].shape)}"
        for k, v in source.items()
        if k in target and v.shape != target[k].shape
    ]
    missing = sorted(set(target) - set(source))
    new_label_emb = [k for k in missing if k.startswith("label_emb.")]
    if any(k.startswith("label_emb.") for k in source):
        new_label_emb = []  # a partial label_emb is not an explained difference
    missing = [k for k in missing if k not in new_label_emb]
    if unknown or shapes or missing:
        raise ValueError(
            f"the source UNet does not match the target: {len(unknown)} unknown keys {_with(UNET_PREFIX, unknown[:5])}"
            f", {len(shapes)} shape mismatches {shapes[:3]}, {len(missing)} missing keys "
            f"{_with(UNET_PREFIX, missing[:5])}. Explained differences are only the input conv and label_emb gaining "
            "inputs, label_emb appearing and image -> video inflation; check the UNet spec against the source's"
        )
    merged.update({UNET_PREFIX + k: v for k, v in source.items()})
    for key in new_label_emb:
        value = target[key]
        merged[UNET_PREFIX + key] = torch.zeros_like(value) if key in LABEL_EMB_OUT_KEYS else value
    report.add_new(NEW_LABEL_EMB, _with(UNET_PREFIX, new_label_emb))
    return None


def _group(keys: Sequence[str]) -> dict[str, list[str]]:
    """Conditioner keys by embedder (``conditioner.embedders.N.``); other keys form their own group."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        match = _EMBEDDER_RE.match(key)
        groups.setdefault(match.group(0) if match else key, []).append(key)
    return groups


def _fill_concat_encoder(
    missing: list[str], target: Mapping[str, Tensor], merged: dict[str, Tensor], source_keys: set[str]
) -> list[str]:
    """Fill the concat-latent VAE from the loaded first stage where the source has none of it; return the keys."""
    first_stage = _sub(merged, FIRST_STAGE_PREFIX)
    filled: list[str] = []
    for match in filter(None, map(_CONCAT_ENCODER_RE.fullmatch, target)):
        prefix = match.group(1)
        if any(k.startswith(prefix) for k in source_keys):
            continue
        keys = [k for k in missing if k.startswith(prefix)]
        fits = {k for k in keys if (v := first_stage.get(k[len(prefix) :])) is not None and v.shape == target[k].shape}
        if not all(k in fits for k in keys if k[len(prefix) :].startswith(CONCAT_ENCODER_PARTS)):
            continue
        for key in sorted(fits):
            merged[key] = first_stage[key[len(prefix) :]]
            filled.append(key)
    return filled


def _init_conditioner(
    target_sd: Mapping[str, Tensor],
    state: dict[str, Tensor],
    merged: dict[str, Tensor],
    report: InitReport,
    keep: set[str],
) -> None:
    target = {k: v for k, v in target_sd.items() if k.startswith(CONDITIONER_PREFIX)}
    source = {k: v for k, v in state.items() if k.startswith(CONDITIONER_PREFIX)}
    target_groups = _group(sorted(target))
    loaded_groups: set[str] = set()
    for gid, keys in _group(sorted(source)).items():
        shared = [k for k in keys if k in target]
        if not shared:
            report.add_dropped(DROP_OTHER_KIND, keys)
            continue
        unknown = [k for k in keys if k not in target]
        shapes = [f"{k}: source {tuple(source[k].shape)} vs target {tuple(target[k].shape)}" for k in shared]
        shapes = [s for k, s in zip(shared, shapes, strict=True) if source[k].shape != target[k].shape]
        if unknown or shapes:
            raise ValueError(
                f"conditioner embedder {gid}* matches the target's only in part: {len(unknown)} unknown keys "
                f"{unknown[:5]}, {len(shapes)} shape mismatches {shapes[:3]}; build the target conditioner with the "
                "source's embedder sizes"
            )
        merged.update({k: source[k] for k in keys})
        report.loaded += keys
        loaded_groups.add(gid)

    missing = [k for k in sorted(target) if k not in merged]
    filled = _fill_concat_encoder(missing, target, merged, set(source))
    report.add_new(NEW_CONCAT, filled)
    filled_groups = set(_group(filled))
    unresolved: list[str] = []
    for gid, keys in target_groups.items():
        rest = [k for k in keys if k not in merged]
        if gid in loaded_groups or gid in filled_groups:
            unused = [k for k in rest if any(p.fullmatch(k) for p in _ABSENT_OK_RE)]
            report.add_new(NEW_UNUSED, unused)
            rest = [k for k in rest if k not in unused]
            merged.update({k: target[k] for k in unused})
        if rest and "conditioner" in keep:
            report.add_new(_kept("conditioner"), rest)
            merged.update({k: target[k] for k in rest})
        else:
            unresolved += rest
    if unresolved:
        dropped = len(report.dropped.get(DROP_OTHER_KIND, []))
        raise ValueError(
            f"{len(unresolved)} target conditioner keys have no counterpart in the source (first: {unresolved[:5]}); "
            f"{dropped} source conditioner keys are of another kind. Add 'conditioner' to keep to keep the target's "
            "own (e.g. pretrained) embedders, or initialise from a source with the same conditioner"
        )


def _check_keep(keep: Sequence[str]) -> set[str]:
    if isinstance(keep, str):
        raise ValueError(f"keep={keep!r} must be a list of component names, e.g. keep=[{keep!r}]")
    unknown = sorted(set(keep) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"keep has unknown components {unknown}; choose from {', '.join(COMPONENTS)}")
    return set(keep)


@torch.no_grad()
def load_init_weights(
    target: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Tensor],
    *,
    keep: Sequence[str] = (),
    first_stage_source: str | os.PathLike[str] | Mapping[str, Tensor] | None = None,
) -> InitReport:
    """Initialise ``target`` from ``source`` (a checkpoint path or a state dict); log and return the report.

    ``first_stage_source`` supplies the ``first_stage_model.*`` keys instead of ``source``. ``keep`` names the
    components (``unet``, ``first_stage``, ``conditioner``) that may keep the target's own weights where the source
    has none for them. The target is loaded with ``strict=True``; nothing is modified when an error is raised.
    """
    keep_set = _check_keep(keep)
    target_sd = target.state_dict()
    raw, name = _read(source)
    state, dropped = normalise_layout(raw, target_keys=list(target_sd))
    report = InitReport(source=name, dropped=dropped)
    if first_stage_source is not None:
        first_stage, report.first_stage_source = _read_first_stage(first_stage_source)
        report.add_dropped(DROP_REPLACED_FIRST_STAGE, [k for k in state if k.startswith(FIRST_STAGE_PREFIX)])
        state = {k: v for k, v in state.items() if not k.startswith(FIRST_STAGE_PREFIX)} | first_stage

    present = {c for c, p in COMPONENT_PREFIXES.items() if any(k.startswith(p) for k in target_sd)}
    for component in sorted(set(COMPONENTS) - present):
        prefix = COMPONENT_PREFIXES[component]
        report.add_dropped(_absent(component), [k for k in state if k.startswith(prefix)])
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}

    merged: dict[str, Tensor] = {}
    _init_other(target_sd, state, merged, report)
    if "first_stage" in present:
        _init_first_stage(target_sd, state, merged, report, keep_set)
    if "conditioner" in present:
        _init_conditioner(target_sd, state, merged, report, keep_set)
    image_unet = _init_unet(target_sd, state, merged, report, keep_set) if "unet" in present else None
    if image_unet is not None:  # last: inflation modifies the UNet, and only once its own checks passed
        unet = target.get_submodule(UNET_PREFIX.rstrip("."))
        report.inflation = inflate_image_unet(unet, image_unet)
        report.add_new(NEW_TEMPORAL, _with(UNET_PREFIX, report.inflation.new_temporal))
        report.add_new(NEW_LABEL_EMB, _with(UNET_PREFIX, report.inflation.new_other))
        report.widened += [UNET_PREFIX + w for w in report.inflation.widened]
        merged.update({UNET_PREFIX + k: v for k, v in unet.state_dict().items()})
    target.load_state_dict(merged, strict=True)
    log.info(report.summary())
    return report
