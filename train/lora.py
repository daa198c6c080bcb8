"""LoRA on the UNet's temporal attention with peft: the camera-motion LoRAs of the SVD paper (section 4.3.1, App
D.4.2; RECIPE 5: rank 16, temporal attention only, 5k iterations), as ``stage.lora`` of any diffusion stage.

``stage.lora.rank > 0`` injects peft ``LoraConfig`` adapters (``inject_adapter_in_model``) into the projections of
the UNet's temporal transformer blocks that ``stage.lora.target_modules`` names (default: q, k, v and out of both
attentions of every ``time_stack`` block, ``models/unet/temporal.py``), after the base weights are loaded
(``train.run.initialise``: the previous stage's export or a released file is the base). Only the adapters' A and B
train: every other parameter is frozen, so the optimizer, its states, the gradients and the EMA hold only them.

Checkpoints (``train.lora_export.LoraCheckpoints``) hold the adapters, their EMA and the optimizer state, not the
base again: they name the base (its source and a sha256 fingerprint of its weights, ``lora_base``), and a resume loads
the base from the init source first and refuses a checkpoint whose base fingerprint differs. The stage export
(``train/lora_export.py``) is ``lora.safetensors`` with peft / diffusers key names, and with
``stage.lora.export_merged`` also the merged ``model.safetensors`` of an ordinary export. ``load_loras`` puts one or
more such files onto a model with peft at a scale each (``scripts/sample.py --lora FILE[:SCALE]``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

ADAPTER = "default"  # peft's adapter name of the trained LoRA
# Our module names (relative to the UNet) of the temporal transformer blocks' attention projections.
TEMPORAL_ATTENTION = r".*\.time_stack\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
# peft init_lora_weights: default (A kaiming-uniform, B zero) or gaussian (A normal, B zero); both leave the model
# unchanged at the start. peft's other inits (pissa, olora, ...) rewrite the base weights, which this stage freezes.
INITS = {"default": True, "gaussian": "gaussian"}
BASE_KEY = "lora_base"  # the checkpoint entry naming the base
LORA_PARAM = re.compile(r"\.lora_[AB]\.")


@dataclass
class LoraSchema:
    """``stage.lora``: a peft LoRA on the UNet (rank 0: none, the stage trains its own parameters)."""

    rank: int = 0
    alpha: float | None = None  # lora_alpha; None: = rank (scale alpha / rank = 1)
    dropout: float = 0.0
    target_modules: str = TEMPORAL_ATTENTION  # a regex (full match) over the UNet's module names
    init: str = "default"  # INITS
    export_merged: bool = False  # also write the merged model.safetensors (a full export, like any stage's)


def lora_config(node: Any) -> Any:
    """The peft ``LoraConfig`` of a ``stage.lora`` node; ValueError on a bad value."""
    from peft import LoraConfig

    if node.rank < 1:
        raise ValueError(f"stage.lora.rank={node.rank}: a LoRA needs rank >= 1 (the paper's camera LoRAs use 16)")
    if node.init not in INITS:
        raise ValueError(f"stage.lora.init={node.init!r} is not valid; choose one of {', '.join(INITS)}")
    if not 0.0 <= node.dropout < 1.0:
        raise ValueError(f"stage.lora.dropout={node.dropout} must be in [0, 1)")
    try:
        re.compile(node.target_modules)
    except re.error as err:
        raise ValueError(f"stage.lora.target_modules={node.target_modules!r} is not a regex: {err}") from None
    return LoraConfig(
        r=int(node.rank),
        lora_alpha=float(node.rank if node.alpha is None else node.alpha),
        lora_dropout=float(node.dropout),
        target_modules=node.target_modules,
        init_lora_weights=INITS[node.init],
    )


def is_lora_param(name: str) -> bool:
    return LORA_PARAM.search(name) is not None


def lora_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """{module name relative to ``unet``: peft LoRA layer} of every adapted module."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in unet.named_modules() if isinstance(m, LoraLayer)}


def inject_lora(objective: Any, node: Any) -> list[str]:
    """Inject the LoRA of ``node`` into the objective's UNet and freeze everything else; returns the adapted modules.

    Works on fake tensors too (the planner, ``train/planner/plan.py``)."""
    from peft import inject_adapter_in_model

    config = lora_config(node)
    unet = objective.model.unet
    if unet.spec.temporal is None:
        raise ValueError("stage.lora targets the temporal attention of a video UNet; this stage has an image UNet")
    try:
        inject_adapter_in_model(config, unet, adapter_name=ADAPTER)
    except ValueError as err:
        raise ValueError(
            f"stage.lora.target_modules={node.target_modules!r} names no Linear module of the UNet ({err}); "
            f"the temporal attention projections match {TEMPORAL_ATTENTION!r}"
        ) from None
    for name, param in objective.export_module().named_parameters():
        param.requires_grad_(is_lora_param(name))
    return sorted(lora_modules(unet))


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict: which base a LoRA was trained on."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def base_source(cfg: Any) -> str:
    """What the stage's base weights come from (stage.init), for the checkpoint and the export to name."""
    init = cfg.stage.init
    if init.from_stage:
        from train.export import export_dir

        return str(export_dir(cfg.paths, init.from_stage).resolve())
    return str(Path(init.path).resolve()) if init.path else "built (stage.init.keep)"


@dataclass
class LoraRun:
    """A LoRA stage after injection: its settings, adapted modules (our names) and base."""

    node: Any  # stage.lora
    modules: list[str]
    base: dict[str, str]  # source, fingerprint

    def checkpoints(self) -> Any:
        """The callback that writes and checks this stage's checkpoints (``train.lora_export.LoraCheckpoints``)."""
        from train.lora_export import LoraCheckpoints

        return LoraCheckpoints(self.base)

    def meta(self) -> dict[str, Any]:
        """The export.json entry."""
        alpha = self.node.rank if self.node.alpha is None else self.node.alpha
        return {"rank": int(self.node.rank), "alpha": float(alpha), "modules": len(self.modules), **self.base}


def attach_lora(cfg: Any, objective: Any) -> LoraRun | None:
    """With ``stage.lora.rank > 0``: fingerprint the loaded base, inject the LoRA, log what trains (else None)."""
    node = cfg.stage.lora
    if not node.rank:
        return None
    if cfg.stage.objective != "diffusion":
        raise ValueError(f"stage.lora is for diffusion stages (a UNet); stage.objective={cfg.stage.objective}")
    from train.strategy_registry import get_strategy

    if get_strategy(cfg.strategy.name).zero_options:
        raise ValueError(
            f"stage.lora with strategy={cfg.strategy.name}: LoRA checkpoints hold the adapters alone, which "
            "DeepSpeed's checkpoints cannot; use strategy=ddp or auto (the adapters' states are small)"
        )
    base = {"source": base_source(cfg), "fingerprint": fingerprint(objective.export_module().state_dict())}
    modules = inject_lora(objective, node)
    trained = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    print(f"[lora] rank {node.rank} on {len(modules)} modules ({trained / 1e6:.3f}M parameters); base {base['source']}"
          f" (sha256 {base['fingerprint'][:12]})", flush=True)  # fmt: skip
    return LoraRun(node, modules, base)


# ----- LoRA files onto a model (sampling) ---------------------------------------------------------------------------
def parse_lora_arg(text: str) -> tuple[Path, float]:
    """``FILE[:SCALE]`` -> (file, scale); the scale defaults to 1."""
    path, sep, scale = text.rpartition(":")
    if sep and path:
        try:
            return Path(path), float(scale)
        except ValueError:
            pass
    return Path(text), 1.0


def load_loras(unet: nn.Module, loras: Sequence[tuple[str | Path, float]]) -> list[str]:
    """Put each LoRA file (``train/lora_export.py`` format) onto ``unet`` with peft at its scale; all are active and
    add up. Returns the adapter names (``lora0``, ``lora1``, ...). The UNet's parameters end up frozen."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    from train.lora_export import read_lora_file

    names = []
    for i, (path, scale) in enumerate(loras):
        name = f"lora{i}"
        config, state = read_lora_file(path, spec=unet.spec)
        with warnings.catch_warnings():  # several adapters on one model are what this function is for
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(config, unet, adapter_name=name)
        result = set_peft_model_state_dict(unet, state, adapter_name=name)
        missing = [k for k in result.missing_keys if f".{name}." in k]
        if result.unexpected_keys or missing:
            raise ValueError(f"{path} does not fit this UNet: {(result.unexpected_keys + missing)[:3]}")
        names.append(name)
        print(f"[lora] {path} at scale {scale:g} (rank {config.r}, {len(config.target_modules)} modules)", flush=True)
    scales = dict(zip(names, (float(s) for _, s in loras), strict=True))
    for layer in lora_modules(unet).values():
        present = [n for n in names if n in layer.lora_A]
        layer.set_adapter(present)
        for n in present:
            layer.set_scale(n, scales[n])  # scaling = scale * alpha / rank
    unet.requires_grad_(False)
    return names
