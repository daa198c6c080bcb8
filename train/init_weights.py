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
| ``label_emb`` columns remapped | the task's ``adapt_init`` (i2v 768 -> mv 512, ``train/task_multiview.py``) |
| ``label_emb`` appears | its last linear is zero, so the vector conditioning adds nothing at first |
| conditioner embedder of another kind | source keys dropped; the target's own kept only with ``keep=["conditioner"]`` |
| SVD concat-latent encoder missing | filled from the loaded first stage (both are the SD 2.1 KL-f8 ``AutoencoderKL``) |
| component absent from the source | an error unless named in ``keep`` (then the target's weights stay) |
| component absent from the target | its source keys are dropped |

``keep`` never skips loading: a component the source has is always loaded, and must match.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
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
from train.export import MODEL_FILE, check_export_run_id, export_dir, resolve_weights_file
from train.tasks import get_task

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
    adapt_source: Callable[[dict[str, torch.Tensor], Mapping[str, torch.Tensor]], list[str]] | None = None,
) -> InitReport:
    """Initialise ``target`` from ``source`` (a checkpoint path, a diffusers folder or a state dict); log and return
    the report.

    ``first_stage_source`` supplies the ``first_stage_model.*`` keys instead of ``source``. ``keep`` names the
    components (``unet``, ``first_stage``, ``conditioner``) that may keep the target's own weights where the source
    has none for them. ``adapt_source`` (the target task's ``TaskSpec.adapt_init``) maps the source onto the
    target's layout first (e.g. the mv task's ``label_emb`` columns); its lines are reported as widened. The target
    is loaded with ``strict=True``; nothing is modified when an error is raised.
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

    if adapt_source is not None:
        report.widened += adapt_source(state, target_sd)
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


# --- the temporal (deflickering) decoder of a video diffusion stage -------------------------------------------------
# A video diffusion stage decodes with a trained temporal_decoder stage export: the one stage.init.temporal_decoder_path
# names, or this run's export of stage.init.temporal_decoder_from_stage ("temporal_decoder") when it exists, found
# automatically at the start of the stage and written into temporal_decoder_path (so config.yaml records it). The
# stage's first stage is then that export's: the KL encoder and quant_conv it was trained on, bit for bit (checked
# against the first stage the stage would load otherwise), with the video decoder. Latents and losses are unchanged.

ENCODER_PARTS = ("encoder.", "quant_conv.")


def resolve_temporal_decoder(cfg: Any, *, resumed: Path | None = None) -> Path | None:
    """The temporal decoder export of a diffusion stage (None: the KL decoder); fills temporal_decoder_path.

    ``resumed``: the stage folder when the stage resumes a checkpoint; then the decoder its config.yaml (written when
    it started) names is kept, whatever exists now, since the checkpoint holds that first stage.
    """
    init = cfg.stage.init
    if cfg.stage.objective != "diffusion" or cfg.model.autoencoder.temporal_decoder:
        if init.temporal_decoder_path:
            raise ValueError(
                "stage.init.temporal_decoder_path is for diffusion stages whose first stage is the KL autoencoder; "
                "this stage trains an autoencoder or already has SVD's temporal one "
                "(model.autoencoder.temporal_decoder)"
            )
        return None
    video = get_task(cfg.conditioner.task).video
    if init.temporal_decoder_path:
        if not video:
            raise ValueError(
                f"stage.init.temporal_decoder_path: task {cfg.conditioner.task} samples single images; the temporal "
                "decoder decodes clips, name it in a video stage (or leave it unset here)"
            )
        path = resolve_weights_file(init.temporal_decoder_path)
        if not path.is_file():
            raise ValueError(f"stage.init.temporal_decoder_path={init.temporal_decoder_path}: no such export or file")
        return path
    if not init.temporal_decoder_from_stage or not video:
        return None
    if resumed is not None and (resumed / "config.yaml").is_file():
        previous = OmegaConf.select(OmegaConf.load(resumed / "config.yaml"), "stage.init.temporal_decoder_path")
        if not previous:
            log.info("%s started with the KL decoder and resumes with it (resume=never starts afresh)", resumed)
            return None
        init.temporal_decoder_path = previous
        return resolve_weights_file(previous)
    folder = export_dir(cfg.paths, init.temporal_decoder_from_stage)
    if not (folder / MODEL_FILE).is_file():
        log.info(
            "no %s export in this run (%s): decoding with the KL decoder", init.temporal_decoder_from_stage, folder
        )
        return None
    init.temporal_decoder_path = str(folder)
    return folder / MODEL_FILE


def _first_stage(path: Path, parts: tuple[str, ...] = ("",)) -> dict[str, torch.Tensor]:
    """The ``first_stage_model.<part>*`` tensors of a checkpoint (empty: it has no first stage)."""
    prefixes = tuple(FIRST_STAGE_PREFIX + p for p in parts)
    if path.suffix == ".safetensors" and path.is_file():  # only the first stage's tensors, not a whole UNet
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)}  # noqa: SIM118
    try:
        first, _ = read_first_stage(path)
    except ValueError:
        return {}
    return {k: v for k, v in first.items() if k.startswith(prefixes)}


def temporal_first_stage_source(cfg: Any, *, source: Path | None, first_stage: Path | None) -> Path | None:
    """The first-stage source of a diffusion stage: its temporal decoder export when it has one, else ``first_stage``.

    The export's encoder and ``quant_conv`` must equal those of the first stage the stage would otherwise load
    (``first_stage``, else the ``source``'s), so the latents stay bit for bit what the KL autoencoder gives.
    """
    path = OmegaConf.select(cfg, "stage.init.temporal_decoder_path")
    if cfg.stage.objective != "diffusion" or not path:
        return first_stage
    weights = resolve_weights_file(path)
    if Path(path).is_dir():
        check_export_run_id(path)
    temporal = _first_stage(weights)
    if not any(".time_stack." in k for k in temporal) or any(".post_quant_conv." in k for k in temporal):
        raise ValueError(
            f"{path} is not a temporal_decoder stage export (a KL encoder with quant_conv and a video decoder without "
            "post_quant_conv); train one with `python -m train stage=temporal_decoder ...`"
        )
    temporal = _first_stage(weights, ENCODER_PARTS)
    reference = first_stage if first_stage is not None else source
    expected = _first_stage(Path(reference), ENCODER_PARTS) if reference is not None else {}
    if expected:
        differing = sorted(set(expected) ^ set(temporal))
        differing = differing or [k for k in expected if not torch.equal(expected[k], temporal[k])]
        if differing:
            raise ValueError(
                f"the temporal decoder {path} was trained from another autoencoder than this stage's first stage "
                f"({reference}): {differing[0]} differs (and {len(differing) - 1} more). Train the temporal_decoder "
                "stage from the same autoencoder (stage.init.first_stage_from_stage), name another one with "
                "stage.init.temporal_decoder_path, or decode with the KL decoder: "
                "stage.init.temporal_decoder_from_stage=null"
            )
    same = f", encoder identical to {reference}'s" if expected else ""
    print(f"[init] decoder: temporal, from {path}{same}", flush=True)
    return weights
