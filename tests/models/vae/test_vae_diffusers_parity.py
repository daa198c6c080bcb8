"""Parity with diffusers' AutoencoderKL and AutoencoderKLTemporalDecoder after converting our weights."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models.checkpoints.diffusers_vae import to_diffusers_temporal_vae_state_dict, to_diffusers_vae_state_dict
from models.vae import AutoencoderKL, TemporalAutoencoder, tiny_autoencoder_spec

diffusers = pytest.importorskip("diffusers")

T = 3
# diffusers' TemporalDecoder builds its mid block with layers_per_block resnets, while sgm always has two
# (block_1, block_2): the layouts only line up for num_res_blocks == 2, which is SVD's value.
SPEC = replace(tiny_autoencoder_spec(), num_res_blocks=2)


def _diffusers_kwargs() -> dict:
    spec = SPEC
    return {
        "in_channels": spec.in_channels,
        "out_channels": spec.out_ch,
        "down_block_types": ("DownEncoderBlock2D",) * spec.num_resolutions,
        "block_out_channels": tuple(spec.ch * m for m in spec.ch_mult),
        "layers_per_block": spec.num_res_blocks,
        "latent_channels": spec.z_channels,
    }


def _perturb_all(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values everywhere (norm affines, zero-init convs, mix_factor) so every weight is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


@torch.no_grad()
def test_temporal_vae_matches_diffusers() -> None:
    torch.manual_seed(0)
    ours = TemporalAutoencoder(SPEC).eval()
    _perturb_all(ours)
    theirs = diffusers.AutoencoderKLTemporalDecoder(**_diffusers_kwargs()).eval()
    theirs.load_state_dict(to_diffusers_temporal_vae_state_dict(ours.state_dict()), strict=True)

    x = torch.randn(2 * T, 3, 16, 16)
    ours_post = ours.encode(x)
    theirs_post = theirs.encode(x).latent_dist
    torch.testing.assert_close(ours_post.mean, theirs_post.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_post.logvar, theirs_post.logvar, atol=1e-5, rtol=1e-5)

    z = torch.randn(2 * T, 4, 8, 8)
    expected = theirs.decode(z, num_frames=T).sample
    torch.testing.assert_close(ours.decode(z, num_frames=T), expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_image_vae_matches_diffusers() -> None:
    torch.manual_seed(0)
    ours = AutoencoderKL(SPEC).eval()
    _perturb_all(ours)
    kwargs = _diffusers_kwargs()
    kwargs["up_block_types"] = ("UpDecoderBlock2D",) * len(kwargs["down_block_types"])
    theirs = diffusers.AutoencoderKL(**kwargs).eval()
    theirs.load_state_dict(to_diffusers_vae_state_dict(ours.state_dict()), strict=True)

    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ours.encode(x).mean, theirs.encode(x).latent_dist.mean, atol=1e-5, rtol=1e-5)
    z = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(ours.decode(z), theirs.decode(z).sample, atol=1e-5, rtol=1e-5)


def test_converters_reject_the_other_layout() -> None:
    image = AutoencoderKL(tiny_autoencoder_spec()).state_dict()
    video = TemporalAutoencoder(tiny_autoencoder_spec()).state_dict()
    with pytest.raises(ValueError, match="to_diffusers_vae_state_dict"):
        to_diffusers_temporal_vae_state_dict(image)
    with pytest.raises(ValueError, match="to_diffusers_temporal_vae_state_dict"):
        to_diffusers_vae_state_dict(video)
