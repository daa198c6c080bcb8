"""Full-size autoencoders built on the meta device have exactly the official state-dict keys and shapes."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn

from models.vae import AutoencoderKL, AutoencoderSpec, TemporalAutoencoder

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


@cache
def _variant_keys(manifest: str, variant: str) -> dict[str, dict]:
    return json.loads((MANIFESTS / manifest).read_text())["variants"][variant]["keys"]


def _expected(manifest: str, variant: str, prefix: str) -> dict[str, tuple[int, ...]]:
    keys = _variant_keys(manifest, variant)
    return {k.removeprefix(prefix): tuple(v["shape"]) for k, v in keys.items() if k.startswith(prefix)}


def _actual(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    ("manifest", "variant", "prefix", "build", "num_keys"),
    [
        ("svd_manifest.json", "svd", "first_stage_model.", TemporalAutoencoder, 372),
        ("svd_manifest.json", "svd", "conditioner.embedders.3.encoder.", AutoencoderKL, 248),
        ("sd21_manifest.json", "sd21_768_v_ldm", "first_stage_model.", AutoencoderKL, 248),
    ],
)
def test_state_dict_matches_manifest(manifest: str, variant: str, prefix: str, build: type, num_keys: int) -> None:
    expected = _expected(manifest, variant, prefix)
    assert len(expected) == num_keys
    with torch.device("meta"):
        model = build(AutoencoderSpec())
    actual = _actual(model)
    assert sorted(set(expected) - set(actual)) == [], "missing keys"
    assert sorted(set(actual) - set(expected)) == [], "extra keys"
    assert actual == expected
    assert list(actual) == list(expected), "state_dict order differs from the official one"
    assert not list(model.buffers()), "official VAEs have no buffers"


def test_mix_factor_is_a_parameter() -> None:
    with torch.device("meta"):
        model = TemporalAutoencoder()
    params = dict(model.named_parameters())
    mix = [k for k in params if k.endswith("mix_factor")]
    assert len(mix) == 14  # 2 mid + 3 x 4 up ResnetBlocks (RECIPE 4)
    assert sum(p.numel() for p in model.decoder.parameters()) == 63_579_183
    assert sum(p.numel() for p in model.encoder.parameters()) == 34_163_592
