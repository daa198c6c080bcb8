"""Stage exports: what one stage hands to the next, to ``scripts/sample.py`` and to users.

``<root>/<run_name>/<stage>/export/`` holds ``model.safetensors`` (the EMA weights of the stage's model with the
official key prefixes, see ``models/latent_diffusion.py``), ``config.yaml`` (the resolved training config) and
``export.json`` (stage, objective, task, step, frames and size). The folder is written under a temporary name
and renamed when complete; a previous export is replaced only then.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from models.checkpoints import load_state_dict, save_state_dict
from train.checkpointing import TMP_MARK, replace_path

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
META_FILE = "export.json"


def stage_dir(paths: Any, stage_name: str) -> Path:
    return Path(paths.root) / paths.run_name / stage_name


def export_dir(paths: Any, stage_name: str) -> Path:
    return stage_dir(paths, stage_name) / "export"


def write_export(
    folder: Path, state_dict: Mapping[str, torch.Tensor], *, config: DictConfig, meta: Mapping[str, Any]
) -> Path:
    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}{TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_state_dict(state_dict, tmp / MODEL_FILE, metadata={"stage": str(meta.get("stage", ""))})
    (tmp / CONFIG_FILE).write_text(OmegaConf.to_yaml(config, resolve=True))
    (tmp / META_FILE).write_text(json.dumps(dict(meta), indent=2) + "\n")
    replace_path(tmp, folder)
    return folder


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
    for name in (MODEL_FILE, CONFIG_FILE, META_FILE):
        if not (folder / name).exists():
            raise ValueError(f"{folder} is not a stage export: {name} is missing (a stage writes export/ when it ends)")
    config = OmegaConf.load(folder / CONFIG_FILE)
    meta = json.loads((folder / META_FILE).read_text())
    return config, meta


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
