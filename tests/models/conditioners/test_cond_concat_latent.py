"""ConcatLatentEmbedder (posterior mode, scale 1.0, fp32 without autocast) and add_cond_noise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.conditioners import ConcatLatentEmbedder, add_cond_noise


def _frames(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 32, 48, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_encodes_posterior_mode_unscaled(stand_in_vae: nn.Module) -> None:
    emb = ConcatLatentEmbedder(stand_in_vae)
    x = _frames()
    out = emb(x)
    assert out.shape == (2, 4, 4, 6)
    torch.testing.assert_close(out, stand_in_vae.encode(x).mode())  # scale_factor 1.0, not 0.18215
    torch.testing.assert_close(ConcatLatentEmbedder(stand_in_vae, scale_factor=0.5)(x), 0.5 * out)
    assert set(k.split(".")[1] for k in emb.state_dict()) == {"encoder", "decoder", "quant_conv", "post_quant_conv"}
    assert not any(p.requires_grad for p in emb.parameters())


def test_chunking_copies_and_cond_frames(stand_in_vae: nn.Module) -> None:
    x = _frames(b=4)
    full = ConcatLatentEmbedder(stand_in_vae)(x)
    torch.testing.assert_close(ConcatLatentEmbedder(stand_in_vae, chunk_size=3)(x), full)
    copies = ConcatLatentEmbedder(stand_in_vae, n_copies=2)(x)
    assert copies.shape == (8, 4, 4, 6)
    torch.testing.assert_close(copies[0::2], full)
    torch.testing.assert_close(copies[1::2], full)
    two = ConcatLatentEmbedder(stand_in_vae, n_cond_frames=2)(x)  # (b t) c h w -> b (t c) h w
    assert two.shape == (2, 8, 4, 6)
    torch.testing.assert_close(two[1, 4:], full[3])


def test_runs_in_float32_under_autocast(stand_in_vae: nn.Module) -> None:
    x = _frames()
    emb = ConcatLatentEmbedder(stand_in_vae)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert stand_in_vae.encoder(x).dtype == torch.bfloat16  # autocast is live here
        out = emb(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, emb(x.bfloat16().float()))


def test_accepts_encoder_returning_tensor_and_rejects_others() -> None:
    class ModeOnly(nn.Module):
        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1, ::8, ::8].repeat(1, 4, 1, 1)

    assert ConcatLatentEmbedder(ModeOnly())(_frames()).shape == (2, 4, 4, 6)
    with pytest.raises(ValueError, match="encode"):
        ConcatLatentEmbedder(nn.Identity())


def test_add_cond_noise_is_seeded_and_per_sample() -> None:
    frames = _frames(b=3)
    sigma = torch.tensor([0.0, 0.02, 1.0])
    a = add_cond_noise(frames, sigma, generator=torch.Generator().manual_seed(7))
    b = add_cond_noise(frames, sigma, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)
    eps = torch.randn(frames.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, frames + sigma[:, None, None, None] * eps)
    torch.testing.assert_close(a[0], frames[0])
    video = torch.zeros(2, 5, 3, 4, 4)  # (B, T, C, H, W) also broadcasts per sample
    noisy = add_cond_noise(video, torch.tensor([0.0, 1.0]), generator=torch.Generator().manual_seed(0))
    assert noisy[0].abs().max() == 0 and noisy[1].abs().max() > 0
    with pytest.raises(ValueError, match="cond_aug"):
        add_cond_noise(frames, torch.zeros(2))
