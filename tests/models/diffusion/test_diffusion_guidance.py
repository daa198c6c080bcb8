"""Classifier-free guiders: [uc; c] stacking and the (per-frame) combination x_u + w (x_c - x_u)."""

from __future__ import annotations

import pytest
import torch

from models.diffusion import IdentityGuider, LinearPredictionGuider, VanillaCFG


def test_prepare_inputs_stacks_uncond_then_cond() -> None:
    x = torch.randn(2, 4, 3, 3)
    sigma = torch.tensor([1.0, 2.0])
    cond = {"crossattn": torch.ones(2, 1, 8), "vector": torch.ones(2, 6), "concat": torch.ones(2, 4, 3, 3)}
    uncond = {k: torch.zeros_like(v) for k, v in cond.items()}
    x2, s2, c2 = VanillaCFG(2.0).prepare_inputs(x, sigma, cond, uncond)
    torch.testing.assert_close(x2, torch.cat([x, x]))
    torch.testing.assert_close(s2, torch.cat([sigma, sigma]))
    for key in cond:
        torch.testing.assert_close(c2[key], torch.cat([uncond[key], cond[key]]))
    with pytest.raises(ValueError, match="uncond"):
        VanillaCFG(2.0).prepare_inputs(x, sigma, cond, None)


def test_vanilla_cfg_combination() -> None:
    x_u, x_c = torch.full((2, 3), 1.0), torch.full((2, 3), 3.0)
    out = VanillaCFG(7.5)(torch.cat([x_u, x_c]), torch.ones(4))
    torch.testing.assert_close(out, torch.full((2, 3), 1.0 + 7.5 * 2.0))
    # Eq 5 form: w D(c) - (w - 1) D(uc).
    torch.testing.assert_close(out, 7.5 * x_c - 6.5 * x_u)


def test_linear_prediction_guider_scales_rise_over_frames() -> None:
    b, t = 2, 5
    guider = LinearPredictionGuider(2.5, num_frames=t, min_scale=1.0)
    x_u = torch.zeros(b * t, 4, 2, 2)
    x_c = torch.ones(b * t, 4, 2, 2)
    out = guider(torch.cat([x_u, x_c]), torch.ones(2 * b * t))
    per_frame = out.reshape(b, t, -1)
    expected = torch.linspace(1.0, 2.5, t)  # (x_c - x_u) = 1, so out = scale
    for v in range(b):
        torch.testing.assert_close(per_frame[v], expected[:, None].expand(t, 16))
    with pytest.raises(ValueError, match="num_frames"):
        guider(torch.zeros(2 * 7, 1), torch.ones(14))


def test_identity_guider_passes_through() -> None:
    x = torch.randn(3, 2)
    cond = {"vector": torch.randn(3, 4)}
    x1, s1, c1 = IdentityGuider().prepare_inputs(x, torch.ones(3), cond)
    assert x1 is x and c1["vector"] is cond["vector"]
    assert IdentityGuider()(x, s1) is x
