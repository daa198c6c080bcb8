"""Full-size ViT-H-14 embedders on the meta device have exactly the released state-dict layouts."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.conditioners import (
    FrozenOpenCLIPEmbedder,
    FrozenOpenCLIPImageEmbedder,
    FrozenOpenCLIPImagePredictionEmbedder,
    build_sd21_text_conditioner,
    build_svd_conditioner,
)

_MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def _manifest(name: str, variant: str) -> dict[str, dict]:
    return json.loads((_MANIFESTS / name).read_text())["variants"][variant]["keys"]


def _layout(manifest: dict[str, dict], prefix: str) -> list[tuple[str, list[int]]]:
    return [(k[len(prefix) :], v["shape"]) for k, v in manifest.items() if k.startswith(prefix)]


def _ours(module: torch.nn.Module, prefix: str = "") -> list[tuple[str, list[int]]]:
    return [(k[len(prefix) :], list(v.shape)) for k, v in module.state_dict().items() if k.startswith(prefix)]


def test_svd_image_embedder_matches_manifest() -> None:
    expected = _layout(_manifest("svd_manifest.json", "svd"), "conditioner.embedders.0.")
    with torch.device("meta"):
        emb = FrozenOpenCLIPImagePredictionEmbedder(FrozenOpenCLIPImageEmbedder("ViT-H-14"))
    assert len(expected) == 398
    assert _ours(emb) == expected  # same keys, shapes and state_dict order
    assert all(v.dtype == torch.float32 for v in emb.state_dict().values())
    assert not any(p.requires_grad for p in emb.parameters())


def test_sd21_text_embedder_matches_ldm_manifest() -> None:
    expected = _layout(_manifest("sd21_manifest.json", "sd21_768_v_ldm"), "cond_stage_model.")
    with torch.device("meta"):
        emb = FrozenOpenCLIPEmbedder("ViT-H-14", layer="penultimate")
    assert len(expected) == 294
    assert _ours(emb) == expected
    assert len(emb.model.transformer.resblocks) == 24  # the unused last layer is kept


def test_sd21_text_conditioner_matches_sgm_manifest() -> None:
    expected = _layout(_manifest("sd21_manifest.json", "sd21_768_v_sgm"), "conditioner.")
    with torch.device("meta"):
        cond = build_sd21_text_conditioner()
    assert _ours(cond) == expected


def test_svd_conditioner_layout(stand_in_vae: torch.nn.Module) -> None:
    expected = _layout(_manifest("svd_manifest.json", "svd"), "conditioner.embedders.0.")
    with torch.device("meta"):
        cond = build_svd_conditioner(encoder=stand_in_vae.to("meta"))
    assert _ours(cond, "embedders.0.") == expected
    keys = list(cond.state_dict())
    assert not any(k.startswith(("embedders.1.", "embedders.2.", "embedders.4.")) for k in keys)
    enc = {k.split(".")[3] for k in keys if k.startswith("embedders.3.")}
    assert enc == {"encoder", "decoder", "quant_conv", "post_quant_conv"}
    assert all(k.startswith(("embedders.0.open_clip.model.", "embedders.3.encoder.")) for k in keys)
