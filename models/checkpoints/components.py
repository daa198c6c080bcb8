"""Matching a (normalised, ``layouts``) source state dict against a target model, one component at a time.

Each ``match_*`` function fills ``Matching.merged`` (the target's full state dict to load) with the component's keys
and records in the ``InitReport`` every target key it did not take from the source (``new``) and every source key it did
not use (``dropped``), with the reason; anything it cannot explain is a ``ValueError`` naming the first keys (through
``keys.diff_keys``). Which components are matched, and what ``keep`` allows, is decided by the caller
(``train/init_weights.py``, whose docstring tabulates the explained differences).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..latent_diffusion import COMPONENT_PREFIXES, CONDITIONER_PREFIX, FIRST_STAGE_PREFIX, UNET_PREFIX
from .inflation import INPUT_CONV_KEY, InflationReport, is_temporal_unet_key
from .keys import add_prefix, diff_keys, strip_prefix, with_prefix
from .official import ABSENT_OK

LABEL_EMB_IN_KEY = "label_emb.0.0.weight"
LABEL_EMB_OUT_KEYS = ("label_emb.0.2.weight", "label_emb.0.2.bias")
# Weights whose input dimension (dim 1) may grow; the new inputs start at zero.
WIDENABLE_KEYS = (INPUT_CONV_KEY, LABEL_EMB_IN_KEY)
# The half of a concat-latent AutoencoderKL that ``encode()`` needs (the rest may be absent, see ABSENT_OK).
CONCAT_ENCODER_PARTS = ("encoder.", "quant_conv.")

_EMBEDDER_RE = re.compile(r"conditioner\.embedders\.(\d+)\.")
_CONCAT_ENCODER_RE = re.compile(r"(conditioner\.embedders\.\d+\.encoder\.)encoder\.conv_in\.weight")
_ABSENT_OK_RE = [re.compile(p) for p in ABSENT_OK["svd"]]

DROP_OTHER_KIND = "conditioner embedder of another kind than the target's"
DROP_REPLACED_FIRST_STAGE = "first stage replaced by first_stage_source"
NEW_TEMPORAL = "temporal layer inflated from an image UNet (identity init)"
NEW_LABEL_EMB = "label_emb new: vector conditioning, last layer zero"
NEW_CONCAT = "concat-latent encoder from the first stage"
NEW_UNUSED = "unused by the official code (absent from released files), kept as built"


def kept_reason(component: str) -> str:
    return f"{component} kept as built (keep={component})"


def absent_reason(component: str) -> str:
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


@dataclass
class Matching:
    """One initialisation in progress: the target's state dict, the (normalised) source, the components that may
    keep the target's own weights, the report, and ``merged``, the state dict being assembled for the target."""

    target: Mapping[str, Tensor]
    source: dict[str, Tensor]
    keep: set[str]
    report: InitReport
    merged: dict[str, Tensor] = field(default_factory=dict)


def _first(keys: Sequence[str], n: int = 3) -> str:
    more = f", ... {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _check_exact(what: str, prefix: str, target: Mapping[str, Tensor], source: Mapping[str, Tensor], hint: str) -> None:
    diff = diff_keys(source, target, prefix=prefix)
    if diff:
        raise ValueError(
            f"{what} does not match the target: {diff.listed('unexpected', 'unknown keys')}, {diff.listed('missing')}"
            f", {diff.listed('shapes')}; {hint}"
        )


def _keep_as_built(m: Matching, component: str, target: Mapping[str, Tensor], fix: str) -> None:
    """The source has no keys of ``component``: keep the target's own where ``keep`` allows, else raise ``fix``."""
    if component not in m.keep:
        raise ValueError(fix)
    prefix = COMPONENT_PREFIXES[component]
    m.report.add_new(kept_reason(component), with_prefix(prefix, sorted(target)))
    m.merged.update(add_prefix(prefix, target))


def match_other(m: Matching) -> None:
    """Keys outside the three component prefixes must match exactly."""
    prefixes = tuple(COMPONENT_PREFIXES.values())
    target = {k: v for k, v in m.target.items() if not k.startswith(prefixes)}
    source = {k: v for k, v in m.source.items() if not k.startswith(prefixes)}
    hint = "is it a checkpoint of this model family? Trainer state (optimizer, EMA) is not part of an init"
    _check_exact("the source outside the unet/first_stage/conditioner prefixes", "", target, source, hint)
    m.merged.update(source)
    m.report.loaded += sorted(source)


def match_first_stage(m: Matching) -> None:
    """The first stage must match exactly (or be kept as built when the source has none)."""
    target, source = strip_prefix(m.target, FIRST_STAGE_PREFIX), strip_prefix(m.source, FIRST_STAGE_PREFIX)
    if not source:
        fix = (
            f"the source has no first-stage (VAE) keys '{FIRST_STAGE_PREFIX}*'; pass first_stage_source= an "
            "autoencoder export or SD 2.1/SVD file, or keep=['first_stage'] to keep the target's own VAE"
        )
        _keep_as_built(m, "first_stage", target, fix)
        return
    hint = "the first stage must be the same autoencoder; pass first_stage_source= a file with the target's VAE"
    _check_exact("the source first stage", FIRST_STAGE_PREFIX, target, source, hint)
    m.merged.update(add_prefix(FIRST_STAGE_PREFIX, source))
    m.report.loaded += with_prefix(FIRST_STAGE_PREFIX, sorted(source))


def _widen(key: str, value: Tensor, want: torch.Size) -> Tensor | None:
    """``value`` zero-padded on its input dimension to ``want``, or None when that is not an explained widening."""
    if key not in WIDENABLE_KEYS or value.ndim != len(want) or value.ndim < 2:
        return None
    if value.shape[0] != want[0] or value.shape[2:] != want[2:] or value.shape[1] >= want[1]:
        return None
    wide = value.new_zeros(want)
    wide[:, : value.shape[1]] = value
    return wide


def match_unet(m: Matching) -> dict[str, Tensor] | None:
    """Fill ``m.merged`` with the UNet; return the (widened) image state dict when it must be inflated instead."""
    target, source = strip_prefix(m.target, UNET_PREFIX), strip_prefix(m.source, UNET_PREFIX)
    if not source:
        fix = f"the source has no UNet keys '{UNET_PREFIX}*'; add 'unet' to keep to train the UNet from scratch"
        _keep_as_built(m, "unet", target, fix)
        return None
    for key in WIDENABLE_KEYS:
        if key in source and key in target and (wide := _widen(key, source[key], target[key].shape)) is not None:
            m.report.widened.append(f"{UNET_PREFIX}{key} {tuple(source[key].shape)} -> {tuple(wide.shape)}")
            source[key] = wide
    source_video = [k for k in source if is_temporal_unet_key(k)]
    target_video = any(is_temporal_unet_key(k) for k in target)
    if source_video and not target_video:
        raise ValueError(
            f"the source UNet has temporal layers ({_first(with_prefix(UNET_PREFIX, source_video))}) but the target "
            "UNet is an image UNet; a video checkpoint cannot initialise an image model, build the target with "
            "temporal="
        )
    m.report.loaded += with_prefix(UNET_PREFIX, sorted(source))
    if target_video and not source_video:
        return source

    # A whole label_emb may be new (zero last layer); a partial one is not an explained difference.
    has_label_emb = any(k.startswith("label_emb.") for k in source)
    new_label_emb = None if has_label_emb else (lambda k: k.startswith("label_emb."))
    diff = diff_keys(source, target, prefix=UNET_PREFIX, absent_ok=new_label_emb)
    if diff:
        raise ValueError(
            f"the source UNet does not match the target: {diff.listed('unexpected', 'unknown keys')}, "
            f"{diff.listed('shapes')}, {diff.listed('missing')}. Explained differences are only the input conv and "
            "label_emb gaining inputs, label_emb appearing and image -> video inflation; check the UNet spec against "
            "the source's"
        )
    m.merged.update(add_prefix(UNET_PREFIX, source))
    for key in diff.absent:
        value = target[key]
        m.merged[UNET_PREFIX + key] = torch.zeros_like(value) if key in LABEL_EMB_OUT_KEYS else value
    m.report.add_new(NEW_LABEL_EMB, with_prefix(UNET_PREFIX, diff.absent))
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
    first_stage = strip_prefix(merged, FIRST_STAGE_PREFIX)
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


def match_conditioner(m: Matching) -> None:
    """Embedder by embedder: one the target has must match it; one of another kind is dropped."""
    target = {k: v for k, v in m.target.items() if k.startswith(CONDITIONER_PREFIX)}
    source = {k: v for k, v in m.source.items() if k.startswith(CONDITIONER_PREFIX)}
    target_groups = _group(sorted(target))
    loaded_groups: set[str] = set()
    for gid, keys in _group(sorted(source)).items():
        diff = diff_keys({k: source[k] for k in keys}, target)
        if len(diff.unexpected) == len(keys):  # no key in common
            m.report.add_dropped(DROP_OTHER_KIND, keys)
            continue
        if diff.unexpected or diff.shapes:
            raise ValueError(
                f"conditioner embedder {gid}* matches the target's only in part: "
                f"{diff.listed('unexpected', 'unknown keys')}, {diff.listed('shapes')}; build the target conditioner "
                "with the source's embedder sizes"
            )
        m.merged.update({k: source[k] for k in keys})
        m.report.loaded += keys
        loaded_groups.add(gid)

    missing = [k for k in sorted(target) if k not in m.merged]
    filled = _fill_concat_encoder(missing, target, m.merged, set(source))
    m.report.add_new(NEW_CONCAT, filled)
    filled_groups = set(_group(filled))
    unresolved: list[str] = []
    for gid, keys in target_groups.items():
        rest = [k for k in keys if k not in m.merged]
        if gid in loaded_groups or gid in filled_groups:
            unused = [k for k in rest if any(p.fullmatch(k) for p in _ABSENT_OK_RE)]
            m.report.add_new(NEW_UNUSED, unused)
            rest = [k for k in rest if k not in unused]
            m.merged.update({k: target[k] for k in unused})
        if rest and "conditioner" in m.keep:
            m.report.add_new(kept_reason("conditioner"), rest)
            m.merged.update({k: target[k] for k in rest})
        else:
            unresolved += rest
    if unresolved:
        dropped = len(m.report.dropped.get(DROP_OTHER_KIND, []))
        raise ValueError(
            f"{len(unresolved)} target conditioner keys have no counterpart in the source (first: {unresolved[:5]}); "
            f"{dropped} source conditioner keys are of another kind. Add 'conditioner' to keep to keep the target's "
            "own (e.g. pretrained) embedders, or initialise from a source with the same conditioner"
        )
