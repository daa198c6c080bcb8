"""Reading a diffusers pipeline folder (``models.checkpoints.diffusers_folder``): weight-file forms and refusals.

Whole pipelines written from our models and read back are in tests/scripts/test_export_diffusers.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoints import save_state_dict
from models.checkpoints.diffusers_folder import (
    MODEL_INDEX,
    config_json,
    diffusers_version,
    is_diffusers_folder,
    model_index,
    read_diffusers_folder,
)
from models.checkpoints.diffusers_pipeline import PIPELINE_CLASS, Component

CLASSES = {
    "unet": ("diffusers", "UNetSpatioTemporalConditionModel"),
    "vae": ("diffusers", "AutoencoderKLTemporalDecoder"),
    "image_encoder": ("transformers", "CLIPVisionModelWithProjection"),
}


def _folder(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A pipeline folder whose unet is sharded, vae an fp16 variant and image encoder a plain file."""
    g = torch.Generator().manual_seed(0)
    weights = {name: {f"{name}.w{i}": torch.randn(2, 3, generator=g) for i in range(3)} for name in CLASSES}
    index = {"_class_name": PIPELINE_CLASS} | {name: list(lib_cls) for name, lib_cls in CLASSES.items()}
    (root / MODEL_INDEX).write_text(json.dumps(index))
    for name in CLASSES:
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps({"name": name}))
    unet = list(weights["unet"].items())
    shards = {"a.safetensors": dict(unet[:2]), "b.safetensors": dict(unet[2:])}
    for shard, part in shards.items():
        save_state_dict(part, root / "unet" / shard)
    weight_map = {k: shard for shard, part in shards.items() for k in part}
    (root / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )
    save_state_dict(weights["vae"], root / "vae" / "diffusion_pytorch_model.fp16.safetensors")
    save_state_dict(weights["image_encoder"], root / "image_encoder" / "model.safetensors")
    return weights


def test_reads_plain_sharded_and_variant_weights(tmp_path: Path) -> None:
    weights = _folder(tmp_path)
    assert is_diffusers_folder(tmp_path) and not is_diffusers_folder(tmp_path / "unet")
    assert not is_diffusers_folder({"a": torch.zeros(1)})
    components = read_diffusers_folder(tmp_path)
    assert sorted(components) == sorted(CLASSES)
    for name, component in components.items():
        assert (component.library, component.class_name) == CLASSES[name] and component.config == {"name": name}
        assert component.state_dict.keys() == weights[name].keys()
        assert all(torch.equal(component.state_dict[k], v) for k, v in weights[name].items())


def test_refuses_pickled_weights_and_other_pipelines(tmp_path: Path) -> None:
    _folder(tmp_path)
    (tmp_path / "vae" / "diffusion_pytorch_model.fp16.safetensors").rename(tmp_path / "vae" / "x.bin")
    with pytest.raises(ValueError, match=r"no single safetensors weights file .*'x.bin'.*convert them to safetensors"):
        read_diffusers_folder(tmp_path)
    (tmp_path / MODEL_INDEX).write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="holds a StableDiffusionPipeline, not a StableVideoDiffusionPipeline"):
        read_diffusers_folder(tmp_path)


def test_model_index_and_config_files() -> None:
    components = {
        "vae": Component("diffusers", "AutoencoderKL", {"a": 1}, {"w": torch.zeros(1)}),
        "image_encoder": Component("transformers", "CLIPVisionModelWithProjection", {"b": 2}, {"w": torch.zeros(1)}),
        "feature_extractor": Component("transformers", "CLIPImageProcessor", {"c": 3}),
    }
    index = model_index(components)
    assert list(index) == ["_class_name", "_diffusers_version", "feature_extractor", "image_encoder", "vae"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["_class_name"] == PIPELINE_CLASS
    version = diffusers_version()
    assert config_json(components["vae"], torch.float16) == {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": version,
        "a": 1,
    }
    assert config_json(components["image_encoder"], torch.float16) == {"b": 2, "dtype": "float16"}
    assert config_json(components["feature_extractor"], torch.float16) == {"c": 3}  # no weights, no dtype
