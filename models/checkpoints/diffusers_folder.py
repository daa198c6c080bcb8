"""The on-disk form of a diffusers ``StableVideoDiffusionPipeline`` folder: its files, and reading one back.

The folder is what ``StableVideoDiffusionPipeline.from_pretrained(folder)`` reads: ``model_index.json``;
``unet/`` and ``vae/`` (``config.json`` + ``diffusion_pytorch_model.safetensors``); ``image_encoder/``
(``config.json`` + ``model.safetensors``); ``feature_extractor/preprocessor_config.json``;
``scheduler/scheduler_config.json``. Configs are plain JSON, so neither diffusers nor transformers is needed. Reading
gives the official SVD layout (``diffusers_pipeline.from_diffusers_pipeline``); writing (atomic, beside a training
run) is ``train/interop_diffusers.py``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .diffusers_pipeline import PIPELINE_CLASS, Component, from_diffusers_pipeline
from .safe_load import load_state_dict

log = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
WEIGHTS_STEM = {"diffusers": "diffusion_pytorch_model", "transformers": "model"}
CONFIG_FILE = {"scheduler": "scheduler_config.json", "feature_extractor": "preprocessor_config.json"}
_FORMAT_VERSION = "0.42.0"  # written as _diffusers_version when diffusers is not installed


def diffusers_version() -> str:
    try:
        return metadata.version("diffusers")
    except metadata.PackageNotFoundError:
        return _FORMAT_VERSION


def is_diffusers_folder(path: str | os.PathLike[str] | Mapping[str, Tensor]) -> bool:
    """True for a directory holding ``model_index.json`` (a diffusers pipeline folder)."""
    return not isinstance(path, Mapping) and (Path(path) / MODEL_INDEX).is_file()


def config_file_name(name: str) -> str:
    """The config file of the component ``name`` inside its sub-folder."""
    return CONFIG_FILE.get(name, "config.json")


def weights_file_name(component: Component) -> str:
    return f"{WEIGHTS_STEM[component.library]}.safetensors"


def config_json(component: Component, dtype: torch.dtype | None) -> dict[str, Any]:
    """The config file's content: diffusers classes carry their class and version, transformers ones the dtype."""
    if component.library == "diffusers":
        return {"_class_name": component.class_name, "_diffusers_version": diffusers_version(), **component.config}
    config = dict(component.config)
    if component.state_dict is not None and dtype is not None:
        config["dtype"] = str(dtype).removeprefix("torch.")
    return config


def model_index(components: Mapping[str, Component]) -> dict[str, Any]:
    """``model_index.json``: the pipeline class, then each component's library and class in name order."""
    index: dict[str, Any] = {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers_version()}
    for name, component in sorted(components.items()):
        index[name] = [component.library, component.class_name]
    return index


def _read_weights(folder: Path, library: str) -> dict[str, Tensor]:
    """One component's safetensors weights: the plain file, a single variant (``*.fp16.safetensors``) or shards."""
    stem = WEIGHTS_STEM[library]
    plain = folder / f"{stem}.safetensors"
    if plain.is_file():
        return load_state_dict(plain)
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_state_dict(folder / shard).items()}
    variants = sorted(folder.glob(f"{stem}.*.safetensors"))
    if len(variants) == 1:
        return load_state_dict(variants[0])
    found = sorted(p.name for p in folder.iterdir())
    raise ValueError(f"{folder} has no single safetensors weights file {plain.name} (found {found}); pickled "
                     ".bin weights are not read, convert them to safetensors")  # fmt: skip


def read_diffusers_folder(folder: str | os.PathLike[str]) -> dict[str, Component]:
    """The ``unet``, ``vae`` and ``image_encoder`` components (config and weights) of a pipeline folder."""
    folder = Path(folder)
    index = json.loads((folder / MODEL_INDEX).read_text())
    if index.get("_class_name") != PIPELINE_CLASS:
        raise ValueError(f"{folder} holds a {index.get('_class_name')}, not a {PIPELINE_CLASS}")
    components = {}
    for name in ("unet", "vae", "image_encoder"):
        library, class_name = index[name]
        sub = folder / name
        config = json.loads((sub / "config.json").read_text())
        components[name] = Component(library, class_name, config, _read_weights(sub, library))
    return components


def load_diffusers_state_dict(folder: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A pipeline folder as one state dict in the official SVD layout (what ``load_init_weights`` reads)."""
    state, notes = from_diffusers_pipeline(read_diffusers_folder(folder))
    for warning in notes.warnings:
        log.warning("%s: %s", folder, warning)
    return state
