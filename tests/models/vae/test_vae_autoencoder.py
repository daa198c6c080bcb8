"""Tiny autoencoders: shapes, chunking, distribution, and what the temporal decoder equals at init."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from models.vae import (
    LATENT_SCALE_FACTOR,
    AutoencoderKL,
    AutoencoderSpec,
    Decoder,
    DiagonalGaussianDistribution,
    TemporalAutoencoder,
    VideoDecoder,
    build_autoencoder,
    tiny_autoencoder_spec,
)

B, T, H, W = 2, 3, 16, 16


def _randomize_temporal(model: torch.nn.Module, seed: int = 0) -> None:
    """Break the identity init (zero last conv, mix_factor 0) so temporal paths matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "time_stack.out_layers.3" in name or name.endswith("mix_factor"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


@pytest.fixture
def image_ae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(tiny_autoencoder_spec()).eval()


@pytest.fixture
def temporal_ae() -> TemporalAutoencoder:
    torch.manual_seed(0)
    model = TemporalAutoencoder(tiny_autoencoder_spec()).eval()
    _randomize_temporal(model)
    return model


def test_image_encode_decode_shapes(image_ae: AutoencoderKL) -> None:
    x = torch.randn(B, 3, H, W)
    posterior = image_ae.encode(x)
    f = tiny_autoencoder_spec().downsample_factor
    assert posterior.mean.shape == (B, 4, H // f, W // f)
    assert image_ae.decode(posterior.mode()).shape == x.shape
    recon, _ = image_ae(x, sample_posterior=False)
    assert recon.shape == x.shape


def test_temporal_encode_decode_shapes(temporal_ae: TemporalAutoencoder) -> None:
    x = torch.randn(B * T, 3, H, W)
    z = temporal_ae.encode(x).mode()
    assert z.shape == (B * T, 4, H // 2, W // 2)
    assert temporal_ae.decode(z, num_frames=T).shape == x.shape
    with pytest.raises(ValueError, match="num_frames"):
        temporal_ae.decode(z)
    with pytest.raises(ValueError, match="timesteps"):
        temporal_ae.decode(z, num_frames=4)


def test_full_size_downsamples_by_8() -> None:
    assert AutoencoderSpec().downsample_factor == 8


@torch.no_grad()
def test_image_chunked_equals_unchunked(image_ae: AutoencoderKL) -> None:
    x = torch.randn(5, 3, H, W)
    z = image_ae.encode_latents(x, chunk_size=None, sample=False)
    torch.testing.assert_close(image_ae.encode_latents(x, chunk_size=2, sample=False), z)
    torch.testing.assert_close(z, image_ae.encode(x).mode() * LATENT_SCALE_FACTOR)
    out = image_ae.decode_latents(z, chunk_size=None)
    torch.testing.assert_close(image_ae.decode_latents(z, chunk_size=2), out)
    torch.testing.assert_close(out, image_ae.decode(z / LATENT_SCALE_FACTOR))


@torch.no_grad()
def test_temporal_chunking_by_whole_clips_equals_unchunked(temporal_ae: TemporalAutoencoder) -> None:
    z = torch.randn(3 * T, 4, 8, 8)
    full = temporal_ae.decode_latents(z, chunk_size=None, num_frames=T)
    torch.testing.assert_close(temporal_ae.decode_latents(z, chunk_size=T, num_frames=T), full)
    torch.testing.assert_close(temporal_ae.decode_latents(z, chunk_size=2 * T, num_frames=T), full)
    with pytest.raises(ValueError, match="multiple of 3"):
        temporal_ae.decode_latents(z, chunk_size=2, num_frames=T)
    # sgm decoding_t < clip length: each chunk is its own short clip, which is a different result.
    short = temporal_ae.decode_latents(z, chunk_size=1, num_frames=1)
    assert not torch.allclose(short, full)


@torch.no_grad()
def test_temporal_mixing_stays_within_a_clip(temporal_ae: TemporalAutoencoder) -> None:
    z = torch.randn(B * T, 4, 8, 8)
    out = temporal_ae.decode(z, num_frames=T)
    z2 = z.clone()
    z2[T + 1] += 1.0  # change one frame of clip 1
    out2 = temporal_ae.decode(z2, num_frames=T)
    torch.testing.assert_close(out2[:T], out[:T])  # clip 0 untouched
    assert not torch.allclose(out2[T], out[T])  # neighbour frames of clip 1 see the change


@torch.no_grad()
def test_video_decoder_at_init_is_decoder_then_time_mix_conv() -> None:
    """At init time_stack is the identity (zero last conv) and alpha blends x with itself, so every
    VideoResnetBlock equals its spatial ResnetBlock; only AE3DConv's time_mix_conv (default random init, as
    in sgm) differs. Hence VideoDecoder == time_mix_conv(Decoder) over each clip."""
    spec = tiny_autoencoder_spec()
    torch.manual_seed(0)
    video = VideoDecoder(spec).eval()
    plain = Decoder(spec).eval()
    missing, unexpected = plain.load_state_dict(video.state_dict(), strict=False)
    assert missing == []
    assert all(".time_stack." in k or k.endswith("mix_factor") or "time_mix_conv" in k for k in unexpected)
    assert all(float(p) == 0.0 for n, p in video.named_parameters() if n.endswith("mix_factor"))

    z = torch.randn(B * T, 4, 8, 8)
    image = rearrange(plain(z), "(b t) c h w -> b c t h w", t=T)
    expected = rearrange(video.conv_out.time_mix_conv(image), "b c t h w -> (b t) c h w")
    torch.testing.assert_close(video(z, timesteps=T), expected)

    # With an identity time_mix_conv the video decoder reproduces the image decoder exactly.
    with torch.no_grad():
        conv = video.conv_out.time_mix_conv
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[:, :, conv.kernel_size[0] // 2, 0, 0] = torch.eye(conv.out_channels)
    torch.testing.assert_close(video(z, timesteps=T), plain(z))


def test_encode_latents_sampling_is_seeded(image_ae: AutoencoderKL) -> None:
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        a = image_ae.encode_latents(x, chunk_size=None, sample=True, generator=torch.Generator().manual_seed(1))
        b = image_ae.encode_latents(x, chunk_size=None, sample=True, generator=torch.Generator().manual_seed(1))
        mode = image_ae.encode_latents(x, chunk_size=None, sample=False)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, mode)


def test_diagonal_gaussian() -> None:
    mean = torch.randn(2, 4, 3, 3)
    logvar = torch.randn(2, 4, 3, 3)
    logvar[0, 0, 0, 0] = 100.0
    dist = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    assert float(dist.logvar.max()) == 20.0
    assert dist.mode() is dist.mean
    assert dist.kl().shape == (2,)
    standard = DiagonalGaussianDistribution(torch.zeros(1, 8, 2, 2))
    torch.testing.assert_close(standard.kl(), torch.zeros(1))
    torch.testing.assert_close(dist.kl(dist), torch.zeros(2), atol=1e-4, rtol=0)
    draws = dist.sample(generator=torch.Generator().manual_seed(0))
    assert draws.shape == mean.shape
    fixed = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1), deterministic=True)
    torch.testing.assert_close(fixed.sample(), mean)
    with pytest.raises(ValueError, match="double_z"):
        DiagonalGaussianDistribution(torch.zeros(1, 3, 2, 2))


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        AutoencoderSpec(ch=48)
    with pytest.raises(ValueError, match="embed_dim == z_channels"):
        TemporalAutoencoder(AutoencoderSpec(ch=32, ch_mult=(1,), embed_dim=8))
    with pytest.raises(ValueError, match="odd time size"):
        VideoDecoder(tiny_autoencoder_spec(), video_kernel_size=(2, 1, 1))
    with pytest.raises(ValueError, match="'image' or 'temporal'"):
        build_autoencoder("video")  # type: ignore[arg-type]
    assert isinstance(build_autoencoder("temporal", tiny_autoencoder_spec()), TemporalAutoencoder)
    assert AutoencoderSpec(ch_mult=[1, 2]).ch_mult == (1, 2)  # type: ignore[arg-type]


def test_backward_reaches_every_parameter(temporal_ae: TemporalAutoencoder) -> None:
    x = torch.randn(T, 3, H, W)
    recon, posterior = temporal_ae(x, num_frames=T, generator=torch.Generator().manual_seed(0))
    (recon.square().mean() + posterior.kl().mean()).backward()
    assert [n for n, p in temporal_ae.named_parameters() if p.grad is None] == []
