"""Convert the OpenCLIP ViT image tower between open_clip and transformers' ``CLIPVisionModelWithProjection``.

Our keys are open_clip's ``VisionTransformer`` keys (``...open_clip.model.visual.*`` without the prefix). Renames
(ours -> transformers, all under ``vision_model.`` except the projection):

* ``class_embedding`` -> ``embeddings.class_embedding``; ``positional_embedding`` (N+1, W) ->
  ``embeddings.position_embedding.weight``; ``conv1`` -> ``embeddings.patch_embedding`` (both without bias);
* ``ln_pre`` -> ``pre_layrnorm`` (sic); ``ln_post`` -> ``post_layernorm``;
* ``transformer.resblocks.i.{ln_1, ln_2, attn.out_proj, mlp.c_fc, mlp.c_proj}`` -> ``encoder.layers.i.{layer_norm1,
  layer_norm2, self_attn.out_proj, mlp.fc1, mlp.fc2}``; the fused ``attn.in_proj_{weight,bias}`` (3W, ...) is
  split into ``self_attn.{q,k,v}_proj`` (torch's MultiheadAttention order q, k, v);
* ``proj`` (W, E), applied as ``x @ proj`` -> ``visual_projection.weight`` (E, W) = ``proj.T`` (a Linear).

Both towers pool the class token: open_clip applies ``ln_post`` to every token and takes token 0, transformers
takes token 0 and applies ``post_layernorm``; a per-token LayerNorm makes the two the same. Every tensor is
renamed, split, concatenated or transposed, never recomputed, so the round trip is bitwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

_TOP = {
    "class_embedding": "vision_model.embeddings.class_embedding",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
}
_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_QKV = ("q_proj", "k_proj", "v_proj")
_PROJ = "visual_projection.weight"
_THEIR_LAYER = "vision_model.encoder.layers."


def clip_vision_config(visual: nn.Module) -> dict[str, Any]:
    """The transformers ``CLIPVisionConfig`` (as a ``config.json`` dict) of an open_clip ``VisionTransformer``.

    Raises ValueError naming what transformers' CLIP vision tower cannot represent (attentional pooling, layer
    scale, no ``ln_pre``, another activation, pooling other than the class token).
    """
    problems = []
    if getattr(visual, "pool_type", "tok") != "tok" or getattr(visual, "attn_pool", None) is not None:
        problems.append("pooling other than the class token (pool_type='tok', no attentional pool)")
    if isinstance(getattr(visual, "ln_pre", None), nn.Identity):
        problems.append("no_ln_pre=True: transformers always applies pre_layrnorm")
    if getattr(visual, "proj", None) is None:
        problems.append("no output projection (proj=None): CLIPVisionModelWithProjection needs one")
    blocks = visual.transformer.resblocks
    block = blocks[0]
    if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
        problems.append("layer scale (ls_init_value): transformers' CLIP has none")
    plain_attention = isinstance(block.attn, nn.MultiheadAttention)
    if not plain_attention or not isinstance(getattr(block, "ln_attn", nn.Identity()), nn.Identity):
        problems.append("a custom attention (scale_attn / ln_attn): transformers' CLIP uses plain attention")
    act = getattr(block.mlp, "gelu", None)
    act_name = type(act).__name__
    if isinstance(act, nn.GELU) and act.approximate == "none":
        hidden_act = "gelu"
    elif act_name == "QuickGELU":
        hidden_act = "quick_gelu"
    else:
        hidden_act = ""
        problems.append(f"activation {act_name}: transformers' CLIP config has 'gelu' and 'quick_gelu'")
    image_size, patch_size = _square(visual.image_size), _square(visual.patch_size)
    if image_size is None or patch_size is None:
        problems.append(f"non-square image_size {visual.image_size} or patch_size {visual.patch_size}")
    if problems:
        raise ValueError(
            "this open_clip vision tower cannot be a CLIPVisionModelWithProjection: " + "; ".join(problems)
        )
    width = visual.conv1.out_channels
    return {
        "architectures": ["CLIPVisionModelWithProjection"],
        "model_type": "clip_vision_model",
        "hidden_size": width,
        "intermediate_size": block.mlp.c_fc.out_features,
        "projection_dim": visual.proj.shape[1],
        "num_hidden_layers": len(blocks),
        "num_attention_heads": block.attn.num_heads,
        "num_channels": visual.conv1.in_channels,
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_act": hidden_act,
        "layer_norm_eps": block.ln_1.eps,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
    }


def _square(size: Any) -> int | None:
    if isinstance(size, int):
        return size
    size = tuple(size)
    return size[0] if len(size) == 2 and size[0] == size[1] else None


def to_clip_vision_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip ``VisionTransformer`` keys -> transformers ``CLIPVisionModelWithProjection`` keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in _TOP:
            out[_TOP[key]] = value
        elif key == "proj":
            out[_PROJ] = value.t()
        elif m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", key):
            i, module, param = m.groups()
            if module not in _BLOCK:
                raise ValueError(f"unexpected open_clip vision key {key!r}; is this a plain ViT tower?")
            out[f"{_THEIR_LAYER}{i}.{_BLOCK[module]}.{param}"] = value
        elif m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key):
            i, param = m.groups()
            for name, part in zip(_QKV, value.chunk(3, dim=0), strict=True):
                out[f"{_THEIR_LAYER}{i}.self_attn.{name}.{param}"] = part
        else:
            raise ValueError(
                f"unexpected open_clip vision key {key!r}; pass the keys under '...open_clip.model.visual.'"
            )
    return out


def from_clip_vision_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``CLIPVisionModelWithProjection`` keys -> open_clip ``VisionTransformer`` keys (the inverse)."""
    top = {theirs: ours for ours, theirs in _TOP.items()}
    block = {theirs: ours for ours, theirs in _BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
        elif key == _PROJ:
            out["proj"] = value.t()
        elif m := re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv]_proj)\.(weight|bias)", key):
            i, name, param = m.groups()
            qkv.setdefault((i, param), {})[name] = value
        elif m := re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            i, module, param = m.groups()
            if module not in block:
                raise ValueError(f"unexpected transformers CLIP key {key!r}")
            out[f"transformer.resblocks.{i}.{block[module]}.{param}"] = value
        elif key != "vision_model.embeddings.position_ids":  # a buffer older transformers versions saved
            raise ValueError(f"unexpected transformers CLIP key {key!r}; pass a CLIPVisionModelWithProjection")
    for (i, param), parts in sorted(qkv.items()):
        if set(parts) != set(_QKV):
            raise ValueError(f"layer {i} has only {sorted(parts)} of q_proj, k_proj, v_proj ({param})")
        out[f"transformer.resblocks.{i}.attn.in_proj_{param}"] = torch.cat([parts[name] for name in _QKV])
    return out
