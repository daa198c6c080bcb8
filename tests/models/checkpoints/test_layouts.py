"""Format recognition and normalisation (``models.checkpoints.layouts``) on small hand-made state dicts."""

from __future__ import annotations

import pytest
import torch

from models.checkpoints import save_state_dict
from models.checkpoints.layouts import (
    DROP_DENOISER,
    DROP_EMA,
    DROP_SCHEDULE,
    normalise_layout,
    read_checkpoint,
    read_first_stage,
)


def _t(value: float) -> torch.Tensor:
    return torch.full((2,), value)


def test_ldm_layout_becomes_ours_and_drops_what_the_target_builds() -> None:
    ldm = {
        "model.diffusion_model.out.2.weight": _t(1),
        "cond_stage_model.model.ln_final.weight": _t(2),
        "alphas_cumprod": _t(3),
        "betas": _t(4),
        "model_ema.decay": _t(5),
        "denoiser.sigmas": _t(6),
    }
    state, dropped = normalise_layout(ldm)
    assert list(state) == ["model.diffusion_model.out.2.weight", "conditioner.embedders.0.model.ln_final.weight"]
    assert torch.equal(
        state["conditioner.embedders.0.model.ln_final.weight"], ldm["cond_stage_model.model.ln_final.weight"]
    )
    assert dropped == {
        DROP_SCHEDULE: ["alphas_cumprod", "betas"],
        DROP_EMA: ["model_ema.decay"],
        DROP_DENOISER: ["denoiser.sigmas"],
    }
    # Keys the target has are never renamed or dropped.
    state, dropped = normalise_layout(ldm, target_keys=["betas", "cond_stage_model.model.ln_final.weight"])
    assert (
        "betas" in state
        and "cond_stage_model.model.ln_final.weight" in state
        and dropped[DROP_SCHEDULE] == ["alphas_cumprod"]
    )


def test_mixed_text_layouts_are_refused() -> None:
    mixed = {"cond_stage_model.a": _t(0), "conditioner.embedders.0.a": _t(0)}
    with pytest.raises(ValueError, match="mixes two layouts"):
        normalise_layout(mixed)


def test_sources_and_bare_first_stage(tmp_path) -> None:
    bare = {"encoder.conv_in.weight": _t(1), "decoder.conv_out.weight": _t(2), "quant_conv.bias": _t(3)}
    assert read_checkpoint(bare) == (bare, "<state dict>")
    path = tmp_path / "vae.safetensors"
    save_state_dict(bare, path)
    state, name = read_checkpoint(path)
    assert name == str(path) and state.keys() == bare.keys()
    first, name = read_first_stage(path)
    assert sorted(first) == sorted("first_stage_model." + k for k in bare) and name == str(path)
    full = {"first_stage_model.encoder.x": _t(0), "model.diffusion_model.y": _t(0)}
    assert read_first_stage(full)[0] == {"first_stage_model.encoder.x": full["first_stage_model.encoder.x"]}
    with pytest.raises(ValueError, match="is not a bare autoencoder state dict"):
        read_first_stage({"model.diffusion_model.y": _t(0)})
