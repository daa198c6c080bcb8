"""CUDA checks (marker ``gpu``; excluded from ``make test``): bf16 autocast training step and attention kernels."""

from __future__ import annotations

import pytest
import torch

from models.activation_checkpointing import apply_activation_checkpointing
from models.unet import VideoUNet, tiny_unet_spec

pytestmark = pytest.mark.gpu

T = 4


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


def _inputs(spec, device):
    g = torch.Generator().manual_seed(0)
    n = 2 * T
    return dict(
        x=torch.randn(n, spec.in_channels, 32, 32, generator=g).to(device),
        timesteps=torch.randn(n, generator=g).to(device),
        context=torch.randn(n, 1, spec.context_dim, generator=g).to(device),
        y=torch.randn(n, spec.adm_in_channels, generator=g).to(device),
    )


def test_bf16_autocast_step_matches_fp32_cpu(cuda):
    torch.manual_seed(0)
    unet = VideoUNet(tiny_unet_spec())
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    expected = unet(**_inputs(unet.spec, "cpu"), num_video_frames=T)
    unet = unet.to(cuda)
    apply_activation_checkpointing(unet, "all")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = unet(**_inputs(unet.spec, cuda), num_video_frames=T)
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in unet.parameters())
    torch.testing.assert_close(out.float().cpu(), expected, atol=5e-2, rtol=5e-2)


def test_temporal_attention_over_a_large_latent_runs(cuda):
    # 72x128 latents at level 0 give B*H*W*heads well above 65535 rows for the temporal attention.
    unet = VideoUNet(tiny_unet_spec()).to(cuda)
    spec = unet.spec
    n = 2 * T
    x = torch.randn(n, spec.in_channels, 144, 256, device=cuda)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = unet(
            x,
            torch.zeros(n, device=cuda),
            torch.randn(n, 1, spec.context_dim, device=cuda),
            torch.randn(n, spec.adm_in_channels, device=cuda),
            num_video_frames=T,
        )
    assert out.shape == (n, 4, 144, 256) and torch.isfinite(out).all()
