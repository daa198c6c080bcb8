"""diffusers interop: write a ``StableVideoDiffusionPipeline`` folder from a stage export or a released SVD file,
and read such a folder back as an init checkpoint (``load_init_weights`` accepts the folder as ``source``).

The folder is what ``StableVideoDiffusionPipeline.from_pretrained(folder)`` reads: ``model_index.json``;
``unet/`` and ``vae/`` (``config.json`` + ``diffusion_pytorch_model.safetensors``); ``image_encoder/``
(``config.json`` + ``model.safetensors``); ``feature_extractor/preprocessor_config.json``;
``scheduler/scheduler_config.json``. Writing needs neither diffusers nor transformers (configs are plain JSON; the
tests load every folder with both). It is built under a temporary name beside ``out`` and renamed when complete;
an existing ``out`` is replaced only with ``overwrite=True``. What the conversion leaves out and why:
``models/checkpoints/diffusers_pipeline.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.checkpoints import CheckpointSizes, load_official_checkpoint, load_state_dict, save_state_dict
from models.checkpoints.diffusers_pipeline import (
    PIPELINE_CLASS,
    Component,
    ConversionNotes,
    from_diffusers_pipeline,
    to_diffusers_pipeline,
)
from train.checkpointing import TMP_MARK, replace_path
from train.sampling import PRESETS

log = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
# The image-to-video variants (sampling presets give their frame counts); svd_image_decoder's VAE is an
# AutoencoderKL (frame-wise decoder).
OFFICIAL_VARIANTS = tuple(sorted(PRESETS))
_OFFICIAL_SAMPLE_SIZE = 96  # the released unet/config.json value
_WEIGHTS = {"diffusers": "diffusion_pytorch_model", "transformers": "model"}
_CONFIG_FILE = {"scheduler": "scheduler_config.json", "feature_extractor": "preprocessor_config.json"}
_FORMAT_VERSION = "0.42.0"  # written as _diffusers_version when diffusers is not installed


def _diffusers_version() -> str:
    try:
        return metadata.version("diffusers")
    except metadata.PackageNotFoundError:
        return _FORMAT_VERSION


def is_diffusers_folder(path: str | os.PathLike[str] | Mapping[str, Tensor]) -> bool:
    """True for a directory holding ``model_index.json`` (a diffusers pipeline folder)."""
    return not isinstance(path, Mapping) and (Path(path) / MODEL_INDEX).is_file()


def _config_json(component: Component, dtype: torch.dtype | None) -> dict[str, Any]:
    if component.library == "diffusers":
        return {"_class_name": component.class_name, "_diffusers_version": _diffusers_version(), **component.config}
    config = dict(component.config)
    if component.state_dict is not None and dtype is not None:
        config["dtype"] = str(dtype).removeprefix("torch.")
    return config


def write_diffusers_folder(
    components: Mapping[str, Component],
    out: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``components`` as a pipeline folder at ``out`` (weights cast to ``dtype`` when given)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = out.with_name(f".{out.name}{TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        index: dict[str, Any] = {"_class_name": PIPELINE_CLASS, "_diffusers_version": _diffusers_version()}
        for name, component in sorted(components.items()):
            index[name] = [component.library, component.class_name]
            folder = tmp / name
            folder.mkdir()
            config = _config_json(component, dtype)
            (folder / _CONFIG_FILE.get(name, "config.json")).write_text(json.dumps(config, indent=2) + "\n")
            if component.state_dict is not None:
                weights = component.state_dict
                if dtype is not None:
                    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
                save_state_dict(weights, folder / f"{_WEIGHTS[component.library]}.safetensors")
        (tmp / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        if out.exists() and not overwrite:  # appeared while we were writing
            raise FileExistsError(f"{out} appeared while writing; pass overwrite=True to replace it")
        replace_path(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _read_weights(folder: Path, library: str) -> dict[str, Tensor]:
    """One component's safetensors weights: the plain file, a single variant (``*.fp16.safetensors``) or shards."""
    stem = _WEIGHTS[library]
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


def export_model(
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    num_frames: int,
    sample_size: int | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> ConversionNotes:
    """Write ``model`` (a ``LatentDiffusion`` or ``OfficialCheckpointModel`` of the i2v layout) as a pipeline."""
    out = Path(out)
    if out.exists() and not overwrite:  # before the conversion, which can take a while at full size
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    components, notes = to_diffusers_pipeline(model, num_frames=num_frames, sample_size=sample_size)
    write_diffusers_folder(components, out, dtype=dtype, overwrite=overwrite)
    return notes


def export_stage(
    export: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> ConversionNotes:
    """A stage export folder (``train.export``) of an i2v diffusion stage -> pipeline folder at ``out``."""
    from train.export import load_export  # the training stack, only for this route

    loaded = load_export(export)
    if loaded.task != "i2v":
        raise ValueError(f"{export} is a {loaded.task} export; StableVideoDiffusionPipeline is image-to-video (i2v)")
    down = loaded.model.first_stage.spec.downsample_factor
    return export_model(
        loaded.model, out, num_frames=loaded.num_frames, sample_size=loaded.height // down, dtype=dtype,
        overwrite=overwrite,
    )  # fmt: skip


def export_official(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    variant: str,
    sizes: CheckpointSizes | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> ConversionNotes:
    """A released ``svd`` / ``svd_xt`` / ``svd_image_decoder`` file -> pipeline folder at ``out``."""
    if variant not in OFFICIAL_VARIANTS:
        raise ValueError(f"variant={variant!r}; the SVD pipeline exists for {', '.join(OFFICIAL_VARIANTS)}")
    loaded = load_official_checkpoint(checkpoint, variant=variant, sizes=sizes)
    return export_model(
        loaded.model, out, num_frames=PRESETS[variant].num_frames, sample_size=_OFFICIAL_SAMPLE_SIZE, dtype=dtype,
        overwrite=overwrite,
    )  # fmt: skip
