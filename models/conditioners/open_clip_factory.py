"""Build an open_clip ``CLIP`` from a model name or a config dict, without touching the network by default.

``pretrained=None`` builds the architecture with random weights (this is how the SVD / SD 2.1 weights are
loaded: the official checkpoints already contain the CLIP towers). A hub tag such as ``"laion2b_s32b_b79k"`` or a
local file path is handed to open_clip, which downloads or reads the CLIP weights; only a user who asks for it
triggers a download.

open_clip is imported lazily so that importing ``models.conditioners`` stays cheap.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

# Keys of an open_clip model config that select another model class (CustomTextCLIP, CoCa, timm / HF towers).
_UNSUPPORTED_CFG_KEYS = ("custom_text", "multimodal_cfg")
_UNSUPPORTED_TOWER_KEYS = ("timm_model_name", "hf_model_name")


def tiny_open_clip_config() -> dict[str, Any]:
    """A ViT-H-14-shaped open_clip config small enough for CPU unit tests (~1.7M parameters, mostly the vocab).

    The text tower keeps the real tokenizer's vocabulary (49408) and context length (77) so that
    ``open_clip.tokenize`` output can be fed to it unchanged.
    """
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }


def resolve_open_clip_config(arch: str | Mapping[str, Any]) -> dict[str, Any]:
    """The open_clip config dict for a registered model name (``"ViT-H-14"``) or a copy of a given dict."""
    import open_clip

    if isinstance(arch, str):
        cfg = open_clip.get_model_config(arch)
        if cfg is None:
            raise ValueError(
                f"open_clip has no model config named {arch!r}; pass a registered name such as 'ViT-H-14' "
                "(see open_clip.list_models()) or a config dict like tiny_open_clip_config()"
            )
    else:
        cfg = copy.deepcopy(dict(arch))
    bad = [k for k in _UNSUPPORTED_CFG_KEYS if cfg.get(k)]
    bad += [k for tower in ("vision_cfg", "text_cfg") for k in _UNSUPPORTED_TOWER_KEYS if k in cfg.get(tower, {})]
    if bad:
        raise ValueError(
            f"open_clip config uses {bad}, which builds a model other than the plain open_clip CLIP that the SVD "
            "and SD 2.1 embedders expect; use a ViT config such as 'ViT-H-14'"
        )
    return cfg


def build_open_clip(
    arch: str | Mapping[str, Any],
    *,
    pretrained: str | None = None,
    drop_tower: Literal["visual", "text"] | None,
) -> nn.Module:
    """An open_clip ``CLIP``, with one tower removed as the official embedders do, or with both.

    ``drop_tower="text"`` deletes ``model.transformer`` (the image embedder keeps the text leftovers
    ``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection``, ``logit_scale``, exactly as
    ``FrozenOpenCLIPImageEmbedder`` does); ``drop_tower="visual"`` deletes ``model.visual`` (SD 2.1's
    ``FrozenOpenCLIPEmbedder``). The non-persistent ``attn_mask`` buffer stays and is not in the state dict.
    ``drop_tower=None`` keeps both towers (CLIP scores of generated videos, ``train.evaluation.clip_metrics``).

    With ``pretrained=None`` nothing is downloaded and the model can be built under ``torch.device("meta")``.
    """
    if drop_tower not in ("visual", "text", None):
        raise ValueError(f"drop_tower={drop_tower!r}; choose 'visual', 'text' or None (keep both towers)")
    import open_clip
    from open_clip.model import CLIP

    cfg = resolve_open_clip_config(arch)
    if pretrained is None:
        model = CLIP(**cfg)
    elif isinstance(arch, str):
        # open_clip resolves hub tags (download) and file paths itself.
        model = open_clip.create_model(arch, pretrained=pretrained, device=torch.device("cpu"))
    elif os.path.isfile(pretrained):
        model = CLIP(**cfg)
        open_clip.load_checkpoint(model, pretrained)
    else:
        raise ValueError(
            f"pretrained={pretrained!r} is not a file; a hub tag needs a registered model name as arch "
            "(e.g. arch='ViT-H-14', pretrained='laion2b_s32b_b79k'), a config dict needs a local weights file"
        )
    if drop_tower == "text":
        del model.transformer
    elif drop_tower == "visual":
        del model.visual
    return model


def freeze_(module: nn.Module) -> nn.Module:
    """Turn off gradients and put ``module`` in eval mode, in place."""
    module.requires_grad_(False)
    return module.eval()
