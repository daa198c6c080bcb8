"""Build an open_clip model from a model name or a config dict, without touching the network by default: the one
builder of the conditioners, the CLIP scorer (``models/clip_scorer.py``: evaluation and curation) and the curation's
CoCa captioner.

``pretrained=None`` builds the architecture with random weights (this is how the SVD / SD 2.1 weights are
loaded: the official checkpoints already contain the CLIP towers). A hub tag such as ``"laion2b_s32b_b79k"`` or a
local file path is handed to open_clip, which downloads or reads the CLIP weights; only a user who asks for it
triggers a download. ``seed`` selects the seeded build the curation uses (see ``build_open_clip``).

open_clip is imported lazily so that importing ``models.conditioners`` stays cheap.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

Precision = Literal["fp32", "fp16", "bf16"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

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
    seed: int | None = None,
    precision: Precision = "fp32",
    model_class: Callable[..., nn.Module] | None = None,
) -> nn.Module:
    """An open_clip ``CLIP``, with one tower removed as the official embedders do, or with both.

    ``drop_tower="text"`` deletes ``model.transformer`` (the image embedder keeps the text leftovers
    ``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection``, ``logit_scale``, exactly as
    ``FrozenOpenCLIPImageEmbedder`` does); ``drop_tower="visual"`` deletes ``model.visual`` (SD 2.1's
    ``FrozenOpenCLIPEmbedder``). The non-persistent ``attn_mask`` buffer stays and is not in the state dict.
    ``drop_tower=None`` keeps both towers (the CLIP scorer of ``models/clip_scorer.py``).

    With ``pretrained=None`` nothing is downloaded and the model can be built under ``torch.device("meta")``.

    ``seed`` (the curation's models): the random initialisation runs under ``torch.manual_seed(seed)`` without
    touching the global RNG, a model name goes to ``open_clip.create_model`` (any open_clip model class, e.g. CoCa;
    ``precision`` applies), a config dict builds ``model_class`` (default ``CLIP``) and casts it to ``precision``;
    the model comes back in eval mode without gradients.
    """
    if drop_tower not in ("visual", "text", None):
        raise ValueError(f"drop_tower={drop_tower!r}; choose 'visual', 'text' or None (keep both towers)")
    if seed is not None:
        model = _build_seeded(arch, pretrained=pretrained, seed=seed, precision=precision, model_class=model_class)
    elif precision != "fp32" or model_class is not None:
        raise ValueError("precision and model_class apply to the seeded build only: pass seed=<int> as well")
    else:
        model = _build_plain(arch, pretrained=pretrained)
    if drop_tower == "text":
        del model.transformer
    elif drop_tower == "visual":
        del model.visual
    return model


def _build_plain(arch: str | Mapping[str, Any], *, pretrained: str | None) -> nn.Module:
    import open_clip
    from open_clip.model import CLIP

    cfg = resolve_open_clip_config(arch)
    if pretrained is None:
        return CLIP(**cfg)
    if isinstance(arch, str):
        # open_clip resolves hub tags (download) and file paths itself.
        return open_clip.create_model(arch, pretrained=pretrained, device=torch.device("cpu"))
    if os.path.isfile(pretrained):
        model = CLIP(**cfg)
        open_clip.load_checkpoint(model, pretrained)
        return model
    raise ValueError(
        f"pretrained={pretrained!r} is not a file; a hub tag needs a registered model name as arch "
        "(e.g. arch='ViT-H-14', pretrained='laion2b_s32b_b79k'), a config dict needs a local weights file"
    )


def _build_seeded(
    arch: str | Mapping[str, Any],
    *,
    pretrained: str | None,
    seed: int,
    precision: Precision,
    model_class: Callable[..., nn.Module] | None,
) -> nn.Module:
    import open_clip
    from open_clip.model import CLIP

    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}; got {precision!r}")
    if pretrained is not None and pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        if not os.path.isfile(pretrained):
            raise ValueError(f"pretrained weights file {pretrained!r} does not exist")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if not isinstance(arch, str):
            model = (model_class or CLIP)(**copy.deepcopy(dict(arch)))
            if pretrained is not None:
                if not os.path.isfile(pretrained):
                    raise ValueError(f"a config dict needs pretrained=None or a local weights file; got {pretrained!r}")
                open_clip.load_checkpoint(model, pretrained)
            model = model.to(DTYPES[precision])
        else:
            if ":" not in arch and open_clip.get_model_config(arch) is None:
                raise ValueError(
                    f"open_clip has no model named {arch!r}; use one of open_clip.list_models() (e.g. 'ViT-L-14', "
                    "'coca_ViT-L-14') or 'tiny'"
                )
            model = open_clip.create_model(arch, pretrained=pretrained, precision=precision, device="cpu")
        decoder = getattr(model, "text_decoder", None)
        if pretrained is None and decoder is not None:
            # open_clip never runs CoCa's MultimodalTransformer.init_parameters, so its text_projection is left as
            # torch.empty memory; give it the init that method intends, so random-weight captioners are seeded.
            width = decoder.text_projection.shape[0]
            with torch.no_grad():
                decoder.text_projection.normal_(std=width**-0.5)
    return model.eval().requires_grad_(False)


def eval_transform(model: nn.Module) -> Callable[[np.ndarray], torch.Tensor]:
    """(H, W, 3) uint8 RGB -> (3, S, S) float tensor through the model's open_clip eval transform (PIL resize, centre
    crop, normalise: exactly open_clip's ``preprocess`` of a PIL image)."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    cfg = {k: v for k, v in open_clip.get_model_preprocess_cfg(model).items() if v is not None}
    transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)

    def apply(frame: np.ndarray) -> torch.Tensor:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be (H, W, 3) uint8 RGB; got {frame.shape} {frame.dtype}")
        return transform(Image.fromarray(np.ascontiguousarray(frame)))

    return apply


def freeze_(module: nn.Module) -> nn.Module:
    """Turn off gradients and put ``module`` in eval mode, in place."""
    module.requires_grad_(False)
    return module.eval()
