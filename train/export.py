"""Stage exports: what one stage hands to the next, to ``scripts/sample.py`` and to users.

``<root>/<run_name>/<stage>/export/`` holds ``model.safetensors`` (the EMA weights of the stage's model with the
official key prefixes, see ``models/latent_diffusion.py``), ``config.yaml`` (the resolved training config) and
``export.json`` (stage, objective, task, step, frames, size and ``run_id``). The folder is written under a temporary
name and renamed when complete; a previous export is replaced only then, and a full disk leaves no temporary folder.

Which decoder a stage decodes with is in ``export.json`` too (``decoder_meta``): ``decoder`` (``kl`` or
``temporal``) for a diffusion stage, with ``temporal_decoder`` (the temporal_decoder export it took, and its
``temporal_decoder_run_id``) and ``kl_autoencoder`` (the autoencoder export that decoder was trained from, whose KL
decoder ``kl_first_stage`` gives back, e.g. for ``scripts/sample.py --decoder kl``); a temporal_decoder export names
its ``kl_autoencoder`` as well.

The run id (new at every fresh start, carried through resumes by the checkpoints) is written into all three files:
the safetensors metadata, ``export.json`` and a first comment line of ``config.yaml`` (a comment, so the file stays
a plain training config). Loading an export or handing it to the next stage checks that they agree, so weights
and config of two different runs are never taken for one export.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from models.checkpoints import load_state_dict, save_state_dict
from train.checkpointing import TMP_MARK, disk_full_error, is_disk_full, replace_path, tensor_bytes

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
META_FILE = "export.json"
RUN_ID_KEY = "run_id"
_RUN_ID_LINE = re.compile(r"^# run_id: (\S+)")


def stage_dir(paths: Any, stage_name: str) -> Path:
    return Path(paths.root) / paths.run_name / stage_name


def export_dir(paths: Any, stage_name: str) -> Path:
    return stage_dir(paths, stage_name) / "export"


def write_export(
    folder: Path,
    state_dict: Mapping[str, torch.Tensor] | None,
    *,
    config: DictConfig,
    meta: Mapping[str, Any],
    extra: Mapping[str, tuple[Mapping[str, torch.Tensor], Mapping[str, str]]] | None = None,
) -> Path:
    """Write ``export/`` atomically; ``meta["run_id"]``, when given, goes into all three files. ``extra``: more
    safetensors files, {name: (tensors, metadata)} (a LoRA stage's lora.safetensors, whose model.safetensors, the
    merged model, is optional: ``state_dict`` None)."""
    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}{TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    run_id = str(meta.get(RUN_ID_KEY, ""))
    metadata = {"stage": str(meta.get("stage", "")), **({RUN_ID_KEY: run_id} if run_id else {})}
    header = f"# run_id: {run_id} (also in {MODEL_FILE} and {META_FILE})\n" if run_id else ""
    try:
        tmp.mkdir(parents=True)
        if state_dict is not None:
            save_state_dict(state_dict, tmp / MODEL_FILE, metadata=metadata)
        for name, (tensors, more) in (extra or {}).items():
            save_state_dict(tensors, tmp / name, metadata={**more, **metadata})
        (tmp / CONFIG_FILE).write_text(header + OmegaConf.to_yaml(config, resolve=True))
        (tmp / META_FILE).write_text(json.dumps(dict(meta), indent=2) + "\n")
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception) and is_disk_full(err):
            raise disk_full_error(
                folder, tensor_bytes([state_dict or {}, *(t for t, _ in (extra or {}).values())])
            ) from None
        raise
    replace_path(tmp, folder)
    return folder


def export_run_ids(folder: str | os.PathLike[str]) -> dict[str, str | None]:
    """The run id each file of an export carries (None: that file has none, e.g. an export from before run ids)."""
    folder = Path(folder)
    ids: dict[str, str | None] = {MODEL_FILE: None, CONFIG_FILE: None, META_FILE: None}
    try:
        from safetensors import safe_open

        with safe_open(str(folder / MODEL_FILE), framework="pt") as f:
            ids[MODEL_FILE] = (f.metadata() or {}).get(RUN_ID_KEY)
    except Exception:
        ids.pop(MODEL_FILE)  # unreadable: loading the weights reports it (models.checkpoints.load_state_dict)
    if (folder / CONFIG_FILE).is_file():
        with open(folder / CONFIG_FILE) as f:
            match = _RUN_ID_LINE.match(f.readline())
        ids[CONFIG_FILE] = match.group(1) if match else None
    if (folder / META_FILE).is_file():
        with contextlib.suppress(ValueError):
            ids[META_FILE] = json.loads((folder / META_FILE).read_text()).get(RUN_ID_KEY)
    return ids


def check_export_run_id(folder: str | os.PathLike[str]) -> None:
    """Raise ``ValueError`` naming both files when two files of an export come from different runs.

    An export without run ids anywhere (written before they existed) passes; one where only some files carry one
    does not: a file was copied in from elsewhere.
    """
    ids = export_run_ids(folder)
    if not any(ids.values()):
        return
    (first, first_id), *rest = ids.items()
    for name, run_id in rest:
        if run_id != first_id:
            raise ValueError(
                f"{Path(folder) / first} (run {first_id}) and {Path(folder) / name} (run {run_id}) come from "
                "different training runs, so the weights and the config of this export do not belong together; "
                "export the stage again (rerun it with resume=auto) or copy the whole export/ folder of one run"
            )


def resolve_weights_file(source: str | os.PathLike[str]) -> Path:
    """A weights file from a path: an export folder (its model.safetensors) or a file."""
    path = Path(source)
    if path.is_dir():
        path = path / MODEL_FILE
    return path


@dataclass
class LoadedExport:
    model: Any  # LatentDiffusion for diffusion stages
    denoiser: Any
    task: str
    num_frames: int
    height: int
    width: int
    config: DictConfig
    meta: dict[str, Any]


def read_export_meta(folder: str | os.PathLike[str]) -> tuple[DictConfig, dict[str, Any]]:
    folder = Path(folder)
    if not (folder / MODEL_FILE).exists() and (folder / "lora.safetensors").exists():
        raise ValueError(
            f"{folder} holds a LoRA alone (lora.safetensors): sample its base export with --lora "
            f"{folder / 'lora.safetensors'}, or train the stage with stage.lora.export_merged=true for a full export"
        )
    for name in (MODEL_FILE, CONFIG_FILE, META_FILE):
        if not (folder / name).exists():
            raise ValueError(f"{folder} is not a stage export: {name} is missing (a stage writes export/ when it ends)")
    check_export_run_id(folder)
    config = OmegaConf.load(folder / CONFIG_FILE)
    meta = json.loads((folder / META_FILE).read_text())
    return config, meta


def _kl_source(cfg: Any) -> Path | None:
    """The autoencoder a stage took its first stage from (first_stage_from_stage / _path, else its init source)."""
    init = cfg.stage.init
    for from_stage, path in ((init.first_stage_from_stage, init.first_stage_path), (init.from_stage, init.path)):
        if from_stage or path:
            return resolve_weights_file(export_dir(cfg.paths, from_stage) if from_stage else path).resolve()
    return None


def decoder_meta(cfg: Any) -> dict[str, Any]:
    """The ``export.json`` entries that say which decoder the stage's export decodes with (module docstring)."""
    kl = _kl_source(cfg)
    if cfg.stage.objective == "temporal_decoder":
        return {"kl_autoencoder": str(kl)} if kl else {}
    if cfg.stage.objective != "diffusion":
        return {}
    if cfg.model.autoencoder.temporal_decoder:
        return {"decoder": "temporal"}  # SVD's own first stage
    path = OmegaConf.select(cfg, "stage.init.temporal_decoder_path")
    if not path:
        return {"decoder": "kl"}
    folder = resolve_weights_file(path).resolve().parent
    meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
    kl_source = meta.get("kl_autoencoder") or (str(kl) if cfg.stage.init.first_stage_from_stage else None)
    return {
        "decoder": "temporal",
        "temporal_decoder": str(folder),
        "temporal_decoder_run_id": meta.get(RUN_ID_KEY),
        "kl_autoencoder": kl_source,
    }


def kl_first_stage(loaded: LoadedExport) -> torch.nn.Module:
    """The KL autoencoder of a diffusion export that decodes with a trained temporal decoder: the one its
    ``export.json`` names (``kl_autoencoder``), checked to have the export's encoder, on its device and dtype."""
    from models.checkpoints.keys import strip_prefix
    from models.checkpoints.layouts import read_first_stage
    from models.vae import AutoencoderKL

    path = loaded.meta.get("kl_autoencoder")
    if not path:
        raise ValueError(
            "this export names no KL autoencoder (export.json kl_autoencoder): its temporal decoder stage did not "
            "record one; sample with its temporal decoder (--decoder temporal)"
        )
    weights = resolve_weights_file(path)
    if not weights.is_file():
        raise ValueError(f"the KL autoencoder this export names ({path}, export.json kl_autoencoder) does not exist")
    first_stage = loaded.model.first_stage
    kl = AutoencoderKL(first_stage.spec, scale_factor=first_stage.scale_factor)
    state = strip_prefix(read_first_stage(weights)[0], "first_stage_model.")
    kl.load_state_dict(state, strict=True)
    ours = first_stage.state_dict()
    if any(not torch.equal(v, ours[k].cpu()) for k, v in state.items() if k.startswith(("encoder.", "quant_conv."))):
        raise ValueError(f"{path} has another encoder than this export's first stage; it is not its KL autoencoder")
    reference = next(first_stage.parameters())
    return kl.to(device=reference.device, dtype=reference.dtype).eval().requires_grad_(False)


def load_export(folder: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> LoadedExport:
    """Rebuild a diffusion stage's model from its export (config + EMA weights), in eval mode."""
    from train.builders import build_objective

    config, meta = read_export_meta(folder)
    if meta.get("objective") != "diffusion":
        raise ValueError(f"{folder} is a {meta.get('objective')} export; sampling needs a diffusion stage's export")
    config.model.clip.pretrained = None  # the export carries every weight; no tower download
    objective = build_objective(config)
    state = load_state_dict(Path(folder) / MODEL_FILE)
    objective.export_module().load_state_dict(state, strict=True)
    objective.to(device).eval()
    return LoadedExport(
        model=objective.model,
        denoiser=objective.denoiser,
        task=objective.task,
        num_frames=objective.num_frames,
        height=objective.height,
        width=objective.width,
        config=config,
        meta=meta,
    )
