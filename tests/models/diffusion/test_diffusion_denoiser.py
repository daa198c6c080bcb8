"""Denoiser wiring: D = c_skip x + c_out F(c_in x, c_noise), cond routing, and SD 2.1 sigma quantisation."""

from __future__ import annotations

import pytest
import torch

from models.diffusion import Denoiser, DiscreteDenoiser, VScaling, VScalingWithEDMcNoise, discrete_sigmas


class Recorder:
    """A toy network F that returns a fixed tensor and records what it was called with."""

    def __init__(self, out: torch.Tensor) -> None:
        self.out = out
        self.calls: list[dict] = []

    def __call__(self, x_in, c_noise, **kwargs):
        self.calls.append({"x_in": x_in, "c_noise": c_noise, **kwargs})
        return self.out


def test_denoiser_combines_skip_and_network_output() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=g)
    f = torch.randn(3, 4, 5, 5, generator=g)
    sigma = torch.tensor([0.05, 1.0, 20.0])
    net = Recorder(f)
    d = Denoiser(VScalingWithEDMcNoise())(net, x, sigma, {})
    s = sigma[:, None, None, None]
    torch.testing.assert_close(d, x / (s**2 + 1) - s / (s**2 + 1).sqrt() * f)
    torch.testing.assert_close(net.calls[0]["x_in"], x / (s**2 + 1).sqrt())
    torch.testing.assert_close(net.calls[0]["c_noise"], 0.25 * sigma.log())
    assert set(net.calls[0]) == {"x_in", "c_noise"}  # no context / y when cond lacks them


def test_concat_is_appended_after_c_in_and_cond_is_routed() -> None:
    x = torch.ones(2, 4, 3, 3)
    concat = torch.full((2, 4, 3, 3), 7.0)
    context = torch.randn(2, 1, 8)
    vector = torch.randn(2, 6)
    net = Recorder(torch.zeros(2, 4, 3, 3))
    sigma = torch.tensor([3.0, 3.0])
    Denoiser(VScalingWithEDMcNoise())(
        net, x, sigma, {"concat": concat, "crossattn": context, "vector": vector}, num_video_frames=1
    )
    call = net.calls[0]
    assert call["x_in"].shape == (2, 8, 3, 3)
    torch.testing.assert_close(call["x_in"][:, :4], x / 10**0.5)
    torch.testing.assert_close(call["x_in"][:, 4:], concat)  # unscaled
    assert call["context"] is context and call["y"] is vector and call["num_video_frames"] == 1


def test_scalar_sigma_is_broadcast_and_bad_input_rejected() -> None:
    x = torch.randn(2, 3, 4)
    net = Recorder(torch.zeros(2, 3, 4))
    d = Denoiser(VScalingWithEDMcNoise())(net, x, 1.0)
    torch.testing.assert_close(d, x / 2)
    with pytest.raises(ValueError, match="one sigma per sample"):
        Denoiser(VScalingWithEDMcNoise())(net, x, torch.ones(3))
    with pytest.raises(ValueError, match="unknown cond keys"):
        Denoiser(VScalingWithEDMcNoise())(net, x, 1.0, {"crosattn": x})


def test_discrete_denoiser_quantises_sigma_and_feeds_timestep_index() -> None:
    den = DiscreteDenoiser(VScaling())
    sigmas = discrete_sigmas()
    idx = torch.tensor([0, 17, 500, 999])
    torch.testing.assert_close(den.sigma_to_idx(sigmas[idx]), idx)
    torch.testing.assert_close(den.idx_to_sigma(idx), sigmas[idx])
    # Nudged sigmas snap back to the nearest level.
    nudged = sigmas[idx] * torch.tensor([1.001, 0.9999, 1.0001, 1.5])
    torch.testing.assert_close(den.quantize_sigma(nudged), sigmas[idx])

    x = torch.randn(4, 2, 3)
    net = Recorder(torch.zeros(4, 2, 3))
    d = den(net, x, nudged)
    assert net.calls[0]["c_noise"].dtype == torch.long
    torch.testing.assert_close(net.calls[0]["c_noise"], idx)
    # c_skip is evaluated at the quantised sigma.
    torch.testing.assert_close(d, x / (sigmas[idx] ** 2 + 1)[:, None, None])
    assert "sigmas" in den.state_dict()  # same key as sgm's denoiser.sigmas
