"""What a LoRA stage (``train/lora.py``) writes: checkpoints without the base, the LoRA file, the merged export.

``lora.safetensors`` holds the adapters alone (the EMA weights, as every export), under peft's state-dict names on
the module paths of diffusers' ``UNetSpatioTemporalConditionModel`` (``down_blocks.0.attentions.0.
temporal_transformer_blocks.0.attn1.to_q.lora_A.weight``; our module paths are mapped with
``models/checkpoints/diffusers_unet.py``). Its metadata: ``format: pt``, ``lora_adapter_metadata`` (diffusers' key:
the peft ``LoraConfig`` as JSON, ``target_modules`` the full diffusers module paths), the base it was trained on
(``base_source``, ``base_fingerprint``), ``stage`` and ``run_id``. Onto a diffusers UNet:
``peft.inject_adapter_in_model(LoraConfig(**json.loads(meta["lora_adapter_metadata"])), unet)`` then
``peft.set_peft_model_state_dict(unet, tensors)``. diffusers 0.42's ``UNetSpatioTemporalConditionModel`` has no
``load_lora_adapter`` (it lacks ``PeftAdapterMixin``) and ``StableVideoDiffusionPipeline`` no LoRA loader, so peft is
the way in.

The merged weights (``stage.lora.export_merged``) are base + peft's ``get_delta_weight`` (B A * alpha / rank) per
adapted Linear, under the ordinary export names, so later stages and ``scripts/export_diffusers.py`` take them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from models.checkpoints.diffusers_unet import from_diffusers_unet_state_dict, to_diffusers_unet_state_dict
from models.latent_diffusion import UNET_PREFIX
from train.lora import ADAPTER, BASE_KEY, LoraRun, is_lora_param, lora_modules

LORA_FILE = "lora.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY


class LoraCheckpoints(pl.Callback):
    """Checkpoints without the frozen base: the trained adapters, their EMA and optimizer state, and ``lora_base``.

    A resume runs with the base loaded from the init source (train/run.py); Lightning loads the checkpoint's tensors
    over it non-strictly (the base is not in it), then ``on_load_checkpoint`` checks that the checkpoint holds exactly
    this stage's adapters and names the same base (fingerprint)."""

    def __init__(self, base: Mapping[str, str]) -> None:
        self.base = dict(base)

    @staticmethod
    def _kept(pl_module: pl.LightningModule) -> set[str]:
        trained = {n for n, p in pl_module.named_parameters() if p.requires_grad}
        return trained | {k for k in pl_module.state_dict() if k.startswith("ema.")}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.strict_loading = False  # before a resume restores the module: its checkpoint lacks the base

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        kept = self._kept(pl_module)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in kept}
        checkpoint[BASE_KEY] = dict(self.base)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        base = checkpoint.get(BASE_KEY)
        if base is None:
            raise ValueError(
                "resuming a LoRA stage from a checkpoint without lora_base (not a LoRA checkpoint of this stage); "
                "start it afresh with resume=never"
            )
        if base["fingerprint"] != self.base["fingerprint"]:
            raise ValueError(
                f"the checkpoint's LoRA was trained on the base {base['source']} (sha256 {base['fingerprint'][:12]}),"
                f" but this run's base {self.base['source']} has other weights (sha256 "
                f"{self.base['fingerprint'][:12]}); "
                "resume with the same stage.init, or start afresh with resume=never"
            )
        saved, kept = set(checkpoint["state_dict"]), self._kept(pl_module)
        if saved != kept:
            odd = sorted(saved ^ kept)
            raise ValueError(
                f"the checkpoint holds other tensors than this stage's LoRA (stage.lora changed?): {odd[:3]} and "
                f"{len(odd) - min(len(odd), 3)} more differ; resume with the same stage.lora or resume=never"
            )


def _rename_modules(names: list[str], convert: Any, spec: Any) -> list[str]:
    """Module paths through a state-dict key converter (which maps by module-path prefix)."""
    renamed = convert({f"{n}.weight": torch.empty(0) for n in names}, spec=spec)
    return sorted(k.removesuffix(".weight") for k in renamed)


def lora_tensors(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The trained adapter's tensors, diffusers names (see the module docstring), on CPU."""
    from peft import get_peft_model_state_dict

    ours = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    return {k: v.detach().cpu().clone() for k, v in to_diffusers_unet_state_dict(ours, spec=unet.spec).items()}


def lora_file_metadata(unet: nn.Module, run: LoraRun) -> dict[str, str]:
    config = unet.peft_config[ADAPTER]
    adapter = {
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "init_lora_weights": config.init_lora_weights,
        "bias": "none",
        "use_rslora": False,
        "target_modules": _rename_modules(run.modules, to_diffusers_unet_state_dict, unet.spec),
    }
    return {
        "format": "pt",
        METADATA_KEY: json.dumps(adapter, sort_keys=True),
        "base_source": run.base["source"],
        "base_fingerprint": run.base["fingerprint"],
    }


def merged_state_dict(export_module: nn.Module) -> dict[str, torch.Tensor]:
    """The export module's state dict with every adapter merged into its base weight (ordinary names), on CPU."""
    unet = export_module.get_submodule(UNET_PREFIX.rstrip("."))
    deltas = {
        f"{UNET_PREFIX}{name}.weight": layer.get_delta_weight(ADAPTER) for name, layer in lora_modules(unet).items()
    }
    out = {}
    for key, value in export_module.state_dict().items():
        if is_lora_param(key):
            continue
        key = key.replace(".base_layer.", ".")
        out[key] = (value + deltas.pop(key) if key in deltas else value).detach().cpu().clone()
    assert not deltas, f"adapted modules without a base weight: {list(deltas)[:3]}"
    return out


def export_lora(module: Any, run: LoraRun) -> tuple[dict[str, torch.Tensor] | None, dict[str, tuple[dict, dict]]]:
    """(merged state dict or None, {LORA_FILE: (tensors, metadata)}) from the EMA weights of a ``StageModule``."""
    export_module = module.objective.export_module()
    unet = export_module.get_submodule(UNET_PREFIX.rstrip("."))
    with torch.no_grad(), module.ema_weights():
        tensors = lora_tensors(unet)
        merged = merged_state_dict(export_module) if run.node.export_merged else None
    return merged, {LORA_FILE: (tensors, lora_file_metadata(unet, run))}


def read_lora_file(path: str | Path, *, spec: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(peft ``LoraConfig`` on our module names, tensors under our peft names) of a ``LORA_FILE`` for the UNet
    ``spec`` describes; ValueError naming the file when it is not one."""
    from peft import LoraConfig
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--lora {path}: no such file (a camera_lora stage writes export/{LORA_FILE})")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if METADATA_KEY not in meta:
        raise ValueError(f"{path} has no {METADATA_KEY} metadata: not a LoRA file of this trainer ({LORA_FILE})")
    adapter = json.loads(meta[METADATA_KEY])
    try:
        adapter["target_modules"] = _rename_modules(adapter["target_modules"], from_diffusers_unet_state_dict, spec)
        ours = from_diffusers_unet_state_dict(tensors, spec=spec)
    except ValueError as err:
        raise ValueError(f"{path} was trained on another UNet than this model's: {err}") from None
    return LoraConfig(**adapter), ours
