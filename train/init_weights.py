"""Stage hand-off: initialise a stage's model from the previous stage's export or any checkpoint file.

Weights only; this module decides which source, which components and what ``keep`` allows. Recognising and
converting the source's format is ``models/checkpoints/layouts.py``, matching each component (and explaining every
difference below) ``models/checkpoints/components.py``.

The target is a ``LatentDiffusion`` (or any module whose keys use its prefixes, e.g. an autoencoder export with only
``first_stage_model.*``); components are found by prefix: ``unet`` (``model.diffusion_model.``), ``first_stage``
(``first_stage_model.``), ``conditioner`` (``conditioner.``). Every target key ends up either loaded from the source
or explained as new; every source key either loaded or explained as dropped. Anything else is a ``ValueError``
naming the first keys.

| difference | handling |
|---|---|
| SD 2.1 ldm layout | ``cond_stage_model.`` -> ``conditioner.embedders.0.``; schedule buffers, ``model_ema.*`` dropped |
| sgm SD 2.1 layout | ``denoiser.*`` (discrete sigmas) dropped |
| diffusers SVD folder | read as the svd layout (``checkpoints/diffusers_folder.py``); what it lacks is new, unused |
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
from collections.abc import Sequence

import torch
from torch import nn

from models.checkpoints.components import (
    DROP_REPLACED_FIRST_STAGE,
    NEW_LABEL_EMB,
    NEW_TEMPORAL,
    InitReport,
    Matching,
    absent_reason,
    match_conditioner,
    match_first_stage,
    match_other,
    match_unet,
)
from models.checkpoints.inflation import inflate_image_unet
from models.checkpoints.keys import add_prefix, with_prefix
from models.checkpoints.layouts import CheckpointSource, normalise_layout, read_checkpoint, read_first_stage
from models.latent_diffusion import COMPONENT_PREFIXES, FIRST_STAGE_PREFIX, UNET_PREFIX

log = logging.getLogger(__name__)

COMPONENTS: tuple[str, ...] = tuple(COMPONENT_PREFIXES)


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
    source: CheckpointSource,
    *,
    keep: Sequence[str] = (),
    first_stage_source: CheckpointSource | None = None,
) -> InitReport:
    """Initialise ``target`` from ``source`` (a checkpoint path, a diffusers folder or a state dict); log and return
    the report.

    ``first_stage_source`` supplies the ``first_stage_model.*`` keys instead of ``source``. ``keep`` names the
    components (``unet``, ``first_stage``, ``conditioner``) that may keep the target's own weights where the source
    has none for them. The target is loaded with ``strict=True``; nothing is modified when an error is raised.
    """
    keep_set = _check_keep(keep)
    target_sd = target.state_dict()
    raw, name = read_checkpoint(source)
    state, dropped = normalise_layout(raw, target_keys=list(target_sd))
    report = InitReport(source=name, dropped=dropped)
    if first_stage_source is not None:
        first_stage, report.first_stage_source = read_first_stage(first_stage_source)
        report.add_dropped(DROP_REPLACED_FIRST_STAGE, [k for k in state if k.startswith(FIRST_STAGE_PREFIX)])
        state = {k: v for k, v in state.items() if not k.startswith(FIRST_STAGE_PREFIX)} | first_stage

    present = {c for c, p in COMPONENT_PREFIXES.items() if any(k.startswith(p) for k in target_sd)}
    for component in sorted(set(COMPONENTS) - present):
        prefix = COMPONENT_PREFIXES[component]
        report.add_dropped(absent_reason(component), [k for k in state if k.startswith(prefix)])
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}

    m = Matching(target_sd, state, keep_set, report)
    match_other(m)
    if "first_stage" in present:
        match_first_stage(m)
    if "conditioner" in present:
        match_conditioner(m)
    image_unet = match_unet(m) if "unet" in present else None
    if image_unet is not None:  # last: inflation modifies the UNet, and only once its own checks passed
        unet = target.get_submodule(UNET_PREFIX.rstrip("."))
        report.inflation = inflate_image_unet(unet, image_unet)
        report.add_new(NEW_TEMPORAL, with_prefix(UNET_PREFIX, report.inflation.new_temporal))
        report.add_new(NEW_LABEL_EMB, with_prefix(UNET_PREFIX, report.inflation.new_other))
        report.widened += [UNET_PREFIX + w for w in report.inflation.widened]
        m.merged.update(add_prefix(UNET_PREFIX, unet.state_dict()))
    target.load_state_dict(m.merged, strict=True)
    log.info(report.summary())
    return report
