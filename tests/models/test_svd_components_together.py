"""The pieces of the SVD image-to-video model composed as sampling and training use them (tiny sizes)."""

from __future__ import annotations

import torch

from models.conditioners import SVD_UC_ZERO_KEYS, build_tiny_svd_conditioner
from models.diffusion import (
    Denoiser,
    EDMDiscretization,
    EDMSampling,
    EulerEDMSampler,
    LinearPredictionGuider,
    StandardDiffusionLoss,
    VScalingWithEDMcNoise,
    VWeighting,
)
from models.unet import UNetSpec, VideoUNet, tiny_unet_spec
from models.vae import AutoencoderKL, TemporalAutoencoder, tiny_autoencoder_spec

T, H, W = 3, 32, 32


def _build():
    torch.manual_seed(0)
    ae_spec = tiny_autoencoder_spec()
    conditioner = build_tiny_svd_conditioner(encoder=AutoencoderKL(ae_spec))
    unet = VideoUNet(UNetSpec(**{**tiny_unet_spec().__dict__, "context_dim": 32}))  # tiny CLIP embeds to 32
    return conditioner, unet, TemporalAutoencoder(ae_spec), Denoiser(VScalingWithEDMcNoise())


def _batch(g: torch.Generator) -> dict[str, torch.Tensor]:
    image = torch.rand(1, 3, H, W, generator=g) * 2 - 1
    cond_aug = torch.tensor([0.02])
    return {
        "cond_frames_without_noise": image,
        "cond_frames": image + cond_aug * torch.randn(image.shape, generator=g),
        "fps_id": torch.tensor([6.0]),
        "motion_bucket_id": torch.tensor([127.0]),
        "cond_aug": cond_aug,
    }


def _per_frame(c: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # crossattn and concat are copied over the time axis (RECIPE 2); the vector too, one per frame.
    return {k: v.repeat_interleave(T, dim=0) for k, v in c.items()}


def test_tiny_svd_samples_a_video_deterministically():
    conditioner, unet, first_stage, denoiser = _build()

    def sample(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        c, uc = conditioner.get_unconditional_conditioning(_batch(g), force_uc_zero_embeddings=SVD_UC_ZERO_KEYS)
        c, uc = _per_frame(c), _per_frame(uc)
        assert torch.all(uc["concat"] == 0) and torch.all(uc["crossattn"] == 0)
        assert torch.equal(uc["vector"], c["vector"])  # vector conditions are kept in the uncond branch
        sampler = EulerEDMSampler(
            EDMDiscretization(), guider=LinearPredictionGuider(2.5, num_frames=T, min_scale=1.0), num_steps=3
        )
        indicator = torch.zeros(2, T)  # CFG batch of 2, video mode

        def denoise(x, sigma, cond):
            return denoiser(unet, x, sigma, cond, num_video_frames=T, image_only_indicator=indicator)

        latent_hw = H // first_stage.spec.downsample_factor
        z = sampler(denoise, c, uc, shape=(T, 4, latent_hw, latent_hw), generator=g)
        return first_stage.decode_latents(z, chunk_size=T, num_frames=T)

    video = sample(0)
    assert video.shape == (T, 3, H, W) and torch.isfinite(video).all()
    torch.testing.assert_close(sample(0), video, rtol=0, atol=0)
    assert not torch.allclose(sample(1), video)


def test_tiny_svd_training_loss_backpropagates_to_the_unet_only():
    conditioner, unet, first_stage, denoiser = _build()
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(T, 3, H, W, generator=g) * 2 - 1
    with torch.no_grad():
        x0 = first_stage.encode_latents(frames, chunk_size=None, sample=True, generator=g)
    c = _per_frame(conditioner(_batch(g), generator=g))
    loss_fn = StandardDiffusionLoss(EDMSampling(p_mean=1.0, p_std=1.6), loss_weighting=VWeighting())
    kwargs = {"num_video_frames": T, "image_only_indicator": torch.zeros(1, T)}
    loss = loss_fn(unet, denoiser, x0, c, num_video_frames=T, generator=g, network_kwargs=kwargs)
    assert loss.shape == (T,) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert unet.out[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in conditioner.parameters())
