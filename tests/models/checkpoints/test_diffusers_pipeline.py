"""Whole-pipeline conversion to diffusers/transformers classes, in memory: CLIP tower, scheduler, VAE, round trips.

The folder, ``from_pretrained`` and the pipeline run end to end are in tests/scripts/test_export_diffusers.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.checkpoints import OfficialCheckpointModel
from models.checkpoints.diffusers_clip import clip_vision_config, from_clip_vision_state_dict, to_clip_vision_state_dict
from models.checkpoints.diffusers_pipeline import (
    SCHEDULER_CONFIG,
    from_diffusers_pipeline,
    tiny_diffusers_sizes,
    to_diffusers_pipeline,
    unet_spec_from_config,
)
from models.checkpoints.diffusers_unet import to_diffusers_unet_config
from models.checkpoints.diffusers_vae import (
    autoencoder_spec_from_config,
    fold_quant_conv,
    to_diffusers_temporal_vae_state_dict,
    vae_config,
)
from models.conditioners import build_open_clip, build_tiny_sd21_text_conditioner, tiny_open_clip_config
from models.conditioners.open_clip_image import CLIP_MEAN, CLIP_STD
from models.diffusion import Denoiser, EDMDiscretization, EulerEDMSampler, IdentityGuider, VScalingWithEDMcNoise
from models.unet import UNetSpec, svd_unet_spec, tiny_unet_spec
from models.vae import AutoencoderSpec, TemporalAutoencoder, tiny_autoencoder_spec

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


def _perturb(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Noise on every parameter, so zero-init convs, mix factors and norms are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return module.eval()


def _hf_clip(config: dict) -> torch.nn.Module:
    kwargs = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    return transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**kwargs)).eval()


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_clip_tower_matches_transformers_and_round_trips(quick_gelu: bool) -> None:
    torch.manual_seed(0)
    visual = _perturb(build_open_clip(tiny_open_clip_config() | {"quick_gelu": quick_gelu}, drop_tower="text").visual)
    config = clip_vision_config(visual)
    assert config["hidden_act"] == ("quick_gelu" if quick_gelu else "gelu")
    theirs = _hf_clip(config)
    converted = to_clip_vision_state_dict(visual.state_dict())
    theirs.load_state_dict(converted, strict=True)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = visual(x), theirs(pixel_values=x).image_embeds
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    back = from_clip_vision_state_dict(converted)
    assert back.keys() == visual.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in visual.state_dict().items())


def test_clip_tower_with_layer_scale_is_refused() -> None:
    cfg = tiny_open_clip_config()
    cfg["vision_cfg"] = cfg["vision_cfg"] | {"ls_init_value": 0.1}
    with pytest.raises(ValueError, match="layer scale"):
        clip_vision_config(build_open_clip(cfg, drop_tower="text").visual)


def test_scheduler_config_samples_as_our_euler_edm_sampler() -> None:
    """Released scheduler config + a v-prediction network == our Denoiser + EulerEDMSampler, same noise."""
    scheduler = diffusers.EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)
    steps, shape, seed = 6, (2, 4, 3, 5), 7
    scheduler.set_timesteps(steps)
    sigmas = EDMDiscretization()(steps)
    torch.testing.assert_close(scheduler.sigmas, sigmas, rtol=1e-5, atol=0)
    torch.testing.assert_close(scheduler.timesteps, 0.25 * sigmas[:-1].log(), rtol=1e-5, atol=1e-6)

    def network(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:  # any smooth v-predictor
        return torch.tanh(x_in) * (0.5 + 0.1 * c_noise.view(-1, *([1] * (x_in.ndim - 1))))

    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        x = scheduler.step(network(x_in, t.expand(shape[0])), t, x).prev_sample

    denoiser = Denoiser(VScalingWithEDMcNoise())
    sampler = EulerEDMSampler(EDMDiscretization(), guider=IdentityGuider(), num_steps=steps)
    ours = sampler(
        lambda x, sigma, cond: denoiser(network, x, sigma, cond),
        {},
        shape=shape,
        generator=torch.Generator().manual_seed(seed),
    )
    assert x.abs().mean() > 0.01  # not collapsed to zero
    torch.testing.assert_close(x, ours, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "spec",
    [
        svd_unet_spec(),
        tiny_unet_spec(),
        UNetSpec(model_channels=32, channel_mult=(1, 2, 2), attention_resolutions=(2, 4), num_head_channels=16),
    ],
)
def test_unet_spec_from_config_inverts_to_diffusers_unet_config(spec: UNetSpec) -> None:
    back = unet_spec_from_config(to_diffusers_unet_config(spec))
    assert back == dataclasses.replace(spec, attention_resolutions=tuple(sorted(spec.attention_resolutions)))


def test_unet_config_without_spec_is_refused() -> None:
    config = to_diffusers_unet_config(tiny_unet_spec()) | {"num_attention_heads": (2, 2)}  # 16 and 32 channels/head
    with pytest.raises(ValueError, match="num_attention_heads"):
        unet_spec_from_config(config)


def test_quant_conv_folds_into_the_encoder_exactly() -> None:
    """A non-identity diffusers quant_conv, folded into our quant-free encoder, encodes as diffusers does."""
    spec = dataclasses.replace(tiny_autoencoder_spec(), num_res_blocks=2)
    torch.manual_seed(0)
    ours = _perturb(TemporalAutoencoder(spec))
    theirs = diffusers.AutoencoderKLTemporalDecoder(**vae_config(spec, temporal=True, scale_factor=0.18215)).eval()
    sd = to_diffusers_temporal_vae_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(2)
    sd["quant_conv.weight"] = torch.randn(sd["quant_conv.weight"].shape, generator=g)
    sd["quant_conv.bias"] = torch.randn(sd["quant_conv.bias"].shape, generator=g)
    theirs.load_state_dict(sd, strict=True)
    encoder = {k.removeprefix("encoder."): v for k, v in ours.state_dict().items() if k.startswith("encoder.")}
    ours.encoder.load_state_dict(fold_quant_conv(encoder, sd["quant_conv.weight"], sd["quant_conv.bias"]))
    x = torch.randn(2, 3, 16, 16, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x).mean, theirs.encode(x).latent_dist.mean, atol=1e-5, rtol=1e-5)
    identity = torch.eye(sd["quant_conv.weight"].shape[0])[:, :, None, None]
    assert fold_quant_conv(encoder, identity, torch.zeros(identity.shape[0])) == encoder  # the same tensors


def test_vae_configs_round_trip_and_limits() -> None:
    spec = dataclasses.replace(tiny_autoencoder_spec(), num_res_blocks=2, resolution=32)
    for temporal in (True, False):
        back = autoencoder_spec_from_config(vae_config(spec, temporal=temporal, scale_factor=0.18215))
        assert dataclasses.replace(back, resolution=spec.resolution) == spec
    with pytest.raises(ValueError, match="num_res_blocks=3"):  # 1 is written with identity blocks
        vae_config(dataclasses.replace(spec, num_res_blocks=3), temporal=True, scale_factor=0.18215)
    vae_config(tiny_autoencoder_spec(), temporal=False, scale_factor=0.18215)  # the image VAE has no such limit
    with pytest.raises(ValueError, match="embed_dim"):
        vae_config(AutoencoderSpec(embed_dim=8, ch=32, ch_mult=(1,)), temporal=False, scale_factor=0.18215)


@pytest.fixture(scope="module")
def official() -> OfficialCheckpointModel:
    torch.manual_seed(0)
    return _perturb(OfficialCheckpointModel("svd", sizes=tiny_diffusers_sizes()))


def test_pipeline_components_load_strictly_into_diffusers_classes(official) -> None:
    components, notes = to_diffusers_pipeline(official, num_frames=3)
    assert set(components) == {"unet", "vae", "image_encoder", "feature_extractor", "scheduler"}
    unet = diffusers.UNetSpatioTemporalConditionModel(**components["unet"].config)
    unet.load_state_dict(components["unet"].state_dict, strict=True)
    vae = diffusers.AutoencoderKLTemporalDecoder(**components["vae"].config)
    vae.load_state_dict(components["vae"].state_dict, strict=True)
    _hf_clip(components["image_encoder"].config).load_state_dict(components["image_encoder"].state_dict, strict=True)
    processor = transformers.CLIPImageProcessor(**components["feature_extractor"].config)
    assert (tuple(processor.image_mean), tuple(processor.image_std)) == (CLIP_MEAN, CLIP_STD)
    assert processor.crop_size == {"height": 224, "width": 224}
    assert sorted(notes.dropped) == [
        "OpenCLIP text-tower leftovers",
        "concat-latent VAE decoder (encode never uses it)",
        # two independent random encoders
        "first-stage encoder (diffusers has one VAE encoder), DIFFERS from the concat encoder written",
    ]


def test_round_trip_is_bitwise_for_everything_diffusers_carries(official) -> None:
    original = official.state_dict()
    back, _ = from_diffusers_pipeline(to_diffusers_pipeline(official, num_frames=3)[0])
    assert set(back) <= set(original)
    absent = set(original) - set(back)
    # Exactly what released files may leave out too: the text-tower leftovers and the concat VAE's decoder half.
    assert absent and all(official.absent_ok(k) for k in absent)
    assert sum(".open_clip.model." in k for k in absent) == 6
    differing = sorted(k for k in back if not torch.equal(back[k], original[k]))
    # diffusers carries one VAE encoder, the concat-latent one (with its quant_conv folded in for the first stage).
    assert differing == sorted(k for k in original if k.startswith("first_stage_model.encoder."))


def test_same_encoder_everywhere_round_trips_fully(official) -> None:
    """When the first stage encodes as the concat encoder does (our stages), nothing carried changes."""
    model = OfficialCheckpointModel("svd", sizes=tiny_diffusers_sizes())
    model.load_state_dict(official.state_dict())
    concat = model.conditioner.embedders[3].encoder
    with torch.no_grad():
        torch.nn.init.dirac_(concat.quant_conv.weight)
        concat.quant_conv.bias.zero_()
    model.first_stage.encoder.load_state_dict(concat.encoder.state_dict())
    components, notes = to_diffusers_pipeline(model, num_frames=3)
    assert any("identical" in reason for reason in notes.dropped)
    back, _ = from_diffusers_pipeline(components)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in back.items())


def test_layouts_diffusers_cannot_express_are_refused(official) -> None:
    class TextVideo(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet, self.first_stage = official.unet, official.first_stage
            self.conditioner = build_tiny_sd21_text_conditioner()

    with pytest.raises(ValueError, match="image-to-video"):
        to_diffusers_pipeline(TextVideo(), num_frames=3)
    model = OfficialCheckpointModel("svd", sizes=tiny_diffusers_sizes())
    model.first_stage_model = TemporalAutoencoder(model.first_stage.spec, quant_convs=True)
    with pytest.raises(ValueError, match="post_quant_conv"):
        to_diffusers_pipeline(model, num_frames=3)


def test_image_decoder_variant_gets_a_frame_wise_vae() -> None:
    """svd_image_decoder's AutoencoderKL first stage -> diffusers AutoencoderKL, post_quant_conv included."""
    torch.manual_seed(0)
    model = _perturb(OfficialCheckpointModel("svd_image_decoder", sizes=tiny_diffusers_sizes()), seed=3)
    components, _ = to_diffusers_pipeline(model, num_frames=3)
    assert components["vae"].class_name == "AutoencoderKL"
    vae = diffusers.AutoencoderKL(**components["vae"].config).eval()
    vae.load_state_dict(components["vae"].state_dict, strict=True)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z).sample, model.first_stage.decode(z), atol=1e-5, rtol=1e-5)
    back, _ = from_diffusers_pipeline(components)
    original = model.state_dict()
    # Random model: the first stage's encoder half and the concat VAE's decoder half come back from the other one.
    assert {k for k in back if not torch.equal(back[k], original[k])} == {
        k
        for k in original
        if k.startswith(("first_stage_model.encoder.", "first_stage_model.quant_conv."))
        or k.startswith(
            ("conditioner.embedders.3.encoder.decoder.", "conditioner.embedders.3.encoder.post_quant_conv.")
        )
    }
