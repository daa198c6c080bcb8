"""Loss weighting and StandardDiffusionLoss: formulas, the v-target identity, per-video sigma sharing."""

from __future__ import annotations

import pytest
import torch

from models.diffusion import (
    Denoiser,
    EDMSampling,
    EDMScaling,
    EDMWeighting,
    StandardDiffusionLoss,
    UnitWeighting,
    VScalingWithEDMcNoise,
    VWeighting,
    weighted_loss,
)

SIGMA = torch.tensor([0.002, 0.3, 1.0, 7.0, 700.0], dtype=torch.float64)


def test_weightings_closed_forms() -> None:
    torch.testing.assert_close(VWeighting()(SIGMA), (SIGMA**2 + 1) / SIGMA**2)
    torch.testing.assert_close(EDMWeighting(sigma_data=0.5)(SIGMA), (SIGMA**2 + 0.25) / (0.5 * SIGMA) ** 2)
    torch.testing.assert_close(UnitWeighting()(SIGMA), torch.ones_like(SIGMA))


@pytest.mark.parametrize(
    ("scaling", "weighting"),
    [(VScalingWithEDMcNoise(), VWeighting()), (EDMScaling(sigma_data=0.5), EDMWeighting(sigma_data=0.5))],
)
def test_weight_times_c_out_squared_is_one(scaling, weighting) -> None:
    _, c_out, _, _ = scaling(SIGMA)
    torch.testing.assert_close(weighting(SIGMA) * c_out**2, torch.ones_like(SIGMA))


def test_weighted_loss_per_sample() -> None:
    pred = torch.tensor([[1.0, 3.0], [0.0, -2.0]])
    target = torch.zeros(2, 2)
    w = torch.tensor([2.0, 0.5])
    torch.testing.assert_close(weighted_loss(pred, target, w), torch.tensor([10.0, 1.0]))
    torch.testing.assert_close(weighted_loss(pred, target, w, loss_type="l1"), torch.tensor([4.0, 0.5]))
    with pytest.raises(ValueError, match="'l2' or 'l1'"):
        weighted_loss(pred, target, w, loss_type="l3")


def _loss() -> StandardDiffusionLoss:
    return StandardDiffusionLoss(EDMSampling(p_mean=0.0, p_std=1.6), loss_weighting=VWeighting())


def test_loss_equals_unweighted_mse_on_v_target() -> None:
    """With VScalingWithEDMcNoise and VWeighting: w (D - x0)^2 = (F - v)^2 for any network output F."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    f = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    loss_fn = _loss()
    loss = loss_fn(lambda x_in, c_noise: f, Denoiser(VScalingWithEDMcNoise()), x0, {}, generator=g.manual_seed(5))

    # Replay the generator draws: sigma first, then the noise.
    g.manual_seed(5)
    sigma = loss_fn.sample_sigmas(4, generator=g).double()[:, None, None, None]
    n = loss_fn.sample_noise(x0, generator=g)
    v = (n - sigma * x0) / (1 + sigma**2).sqrt()
    torch.testing.assert_close(loss, ((f - v) ** 2).mean(dim=(1, 2, 3)))


def test_perfect_network_gives_zero_loss() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    # The oracle F = (c_skip x - x0) / -c_out is the v target, so D = x0 exactly.
    den = Denoiser(VScalingWithEDMcNoise())

    def oracle(x_in, c_noise):
        sigma = (4 * c_noise).exp()[:, None, None]
        x = x_in * (1 + sigma**2).sqrt()
        return (x / (1 + sigma**2) - x0) * (1 + sigma**2).sqrt() / sigma

    loss = _loss()(oracle, den, x0, {}, generator=g)
    assert loss.shape == (6,) and loss.abs().max().item() < 1e-10  # c_noise is float32


def test_video_frames_share_one_sigma_per_video() -> None:
    seen: list[torch.Tensor] = []

    def net(x_in, c_noise, **kwargs):
        seen.append(c_noise)
        assert kwargs == {"num_video_frames": 3}
        return torch.zeros_like(x_in)

    x0 = torch.randn(4 * 3, 2, 2, 2)  # 4 videos of 3 frames
    loss = _loss()(
        net,
        Denoiser(VScalingWithEDMcNoise()),
        x0,
        {},
        num_video_frames=3,
        generator=torch.Generator().manual_seed(0),
        network_kwargs={"num_video_frames": 3},
    )
    per_video = seen[0].reshape(4, 3)
    torch.testing.assert_close(per_video, per_video[:, :1].expand(4, 3), rtol=0, atol=0)
    assert per_video[:, 0].unique().numel() == 4
    assert loss.shape == (12,)


def test_video_offset_noise_is_shared_over_frames() -> None:
    loss_fn = StandardDiffusionLoss(EDMSampling(), loss_weighting=VWeighting(), offset_noise_level=100.0)
    noise = loss_fn.sample_noise(torch.zeros(2 * 5, 3, 4, 4), num_video_frames=5, generator=torch.Generator())
    # The offset dominates the per-pixel noise, so channel means are nearly equal across a video's frames.
    means = noise.mean(dim=(2, 3)).reshape(2, 5, 3)
    assert (means - means[:, :1]).abs().max().item() < 1.5
    assert (means[0, 0] - means[1, 0]).abs().max().item() > 1.5


def test_same_seed_same_loss_and_bad_frames_rejected() -> None:
    x0 = torch.randn(4, 2, 3)
    den = Denoiser(VScalingWithEDMcNoise())

    def net(x_in, c_noise):
        return x_in * 0.5

    a = _loss()(net, den, x0, {}, generator=torch.Generator().manual_seed(3))
    b = _loss()(net, den, x0, {}, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_video_frames"):
        _loss()(net, den, x0, {}, num_video_frames=3)
    with pytest.raises(ValueError, match="differs"):
        _loss()(net, den, x0, {}, num_video_frames=2, network_kwargs={"num_video_frames": 4})
