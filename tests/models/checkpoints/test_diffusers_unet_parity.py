"""Parity of our VideoUNet with diffusers' UNetSpatioTemporalConditionModel through the state-dict converter."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models.checkpoints.diffusers_unet import (
    forward_with_diffusers_inputs,
    from_diffusers_unet_state_dict,
    match_sgm_group_norm_eps,
    to_diffusers_unet_config,
    to_diffusers_unet_state_dict,
)
from models.unet import TemporalSpec, UNetSpec, VideoUNet, svd_unet_spec, tiny_unet_spec

diffusers = pytest.importorskip("diffusers")

B, T, H, W = 2, 3, 8, 8

# Attention at both levels; attention at level 0 only with 2 ResBlocks per level (plain, attention-free diffusers
# blocks and an Upsample right after a ResBlock); and three levels, no attention at level 0, transformer depth 2.
SPECS = {
    "depth2_three_levels": replace(
        tiny_unet_spec(), channel_mult=(1, 2, 2), attention_resolutions=(2, 4), transformer_depth=2
    ),
    "attn_both_levels": tiny_unet_spec(),
    "attn_level0_nrb2": replace(tiny_unet_spec(), num_res_blocks=2, attention_resolutions=(1,)),
}


def _random_unet(spec: UNetSpec, *, seed: int = 0) -> VideoUNet:
    """Default init plus noise on every parameter, so zero-init convs and the mix factors are not trivial."""
    torch.manual_seed(seed)
    unet = VideoUNet(spec)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            scale = 1.0 if name.endswith("mix_factor") else 0.05
            p.add_(scale * torch.randn(p.shape, generator=g))
    return unet.eval()


def _diffusers_unet(spec: UNetSpec, ours: VideoUNet) -> torch.nn.Module:
    ref = diffusers.UNetSpatioTemporalConditionModel(**to_diffusers_unet_config(spec))
    result = ref.load_state_dict(to_diffusers_unet_state_dict(ours.state_dict(), spec=spec), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # diffusers gives some ResBlocks GroupNorm eps 1e-6 where sgm (and we) use 1e-5; without this the outputs
    # differ by ~4e-5 and the tolerance below would fail for that reason alone.
    assert match_sgm_group_norm_eps(ref) > 0
    return ref.eval()


def _inputs(spec: UNetSpec, *, seed: int = 0, context_len: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sigma = torch.exp(torch.randn(B, generator=g))
    return {
        "x": torch.randn(B, T, spec.in_channels, H, W, generator=g),
        "c_noise": 0.25 * sigma.log(),
        "context": torch.randn(B, context_len, spec.context_dim, generator=g),
        # (fps_id, motion_bucket_id, cond_aug) per video
        "added_time_ids": torch.stack(
            [torch.tensor([5.0, 6.0]), torch.tensor([127.0, 40.0]), torch.tensor([0.02, 0.3])], dim=1
        ),
    }


def _run_ours(unet: VideoUNet, inp: dict[str, torch.Tensor], image_only_indicator=None) -> torch.Tensor:
    return forward_with_diffusers_inputs(
        unet, inp["x"], inp["c_noise"], inp["context"], inp["added_time_ids"], image_only_indicator=image_only_indicator
    )


def _run_ref(ref: torch.nn.Module, inp: dict[str, torch.Tensor]) -> torch.Tensor:
    return ref(inp["x"], inp["c_noise"], inp["context"], inp["added_time_ids"], return_dict=False)[0]


@pytest.mark.parametrize("context_len", [1, 2])  # 1 = SVD's single CLIP token (the exact shortcut path)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_forward_parity(name: str, context_len: int) -> None:
    spec = SPECS[name]
    ours = _random_unet(spec)
    ref = _diffusers_unet(spec, ours)
    inp = _inputs(spec, context_len=context_len)
    with torch.no_grad():
        expected = _run_ref(ref, inp)
        actual = _run_ours(ours, inp)
    assert expected.abs().mean() > 0.1  # not a trivially zero output
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_forward_parity_mixed_image_only_indicator() -> None:
    """diffusers' UNet always builds zeros; a pre-hook hands its blocks our mixed indicator instead."""
    spec = SPECS["attn_both_levels"]
    ours = _random_unet(spec)
    ref = _diffusers_unet(spec, ours)
    inp = _inputs(spec)
    indicator = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])

    def use_indicator(module, args, kwargs):
        assert "image_only_indicator" in kwargs
        return args, {**kwargs, "image_only_indicator": indicator}

    for block in [*ref.down_blocks, ref.mid_block, *ref.up_blocks]:
        block.register_forward_pre_hook(use_indicator, with_kwargs=True)
    with torch.no_grad():
        expected = _run_ref(ref, inp)
        actual = _run_ours(ours, inp, image_only_indicator=indicator)
        video = _run_ours(ours, inp)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert (actual - video).abs().max() > 1e-3  # the indicator does change the output


@pytest.mark.parametrize("name", sorted(SPECS))
def test_round_trip(name: str) -> None:
    spec = SPECS[name]
    sd = _random_unet(spec).state_dict()
    theirs = to_diffusers_unet_state_dict(sd, spec=spec)
    back = from_diffusers_unet_state_dict(theirs, spec=spec)
    assert list(back) == list(sd)
    for key, value in sd.items():
        assert torch.equal(back[key], value), key
    assert to_diffusers_unet_state_dict(back, spec=spec).keys() == theirs.keys()


def test_full_svd_keys_and_shapes_match_on_meta() -> None:
    spec = svd_unet_spec()
    config = to_diffusers_unet_config(spec)
    # The values of stabilityai/stable-video-diffusion-img2vid's unet/config.json.
    assert config["down_block_types"] == ("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",)
    assert config["up_block_types"] == ("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3
    assert config["block_out_channels"] == (320, 640, 1280, 1280)
    assert config["num_attention_heads"] == (5, 10, 20, 20)
    assert (config["addition_time_embed_dim"], config["projection_class_embeddings_input_dim"]) == (256, 768)
    assert (config["cross_attention_dim"], config["layers_per_block"], config["in_channels"]) == (1024, 2, 8)
    with torch.device("meta"):
        ours = VideoUNet(spec).state_dict()
        ref = diffusers.UNetSpatioTemporalConditionModel(**config).state_dict()
    converted = to_diffusers_unet_state_dict(ours, spec=spec)
    assert converted.keys() == ref.keys()
    assert all(converted[k].shape == ref[k].shape for k in ref)
    assert from_diffusers_unet_state_dict(ref, spec=spec).keys() == ours.keys()


@pytest.mark.parametrize(
    "spec",
    [
        SPECS["attn_both_levels"].image_only(),
        SPECS["attn_both_levels"].with_temporal(TemporalSpec(merge_strategy="fixed")),
        SPECS["attn_both_levels"].with_temporal(TemporalSpec(extra_ff_mix_layer=False)),
        UNetSpec(model_channels=32, channel_mult=(1, 2), use_linear_in_transformer=False, num_head_channels=16),
        UNetSpec(model_channels=32, channel_mult=(1, 2), adm_in_channels=None, num_head_channels=16),
    ],
)
def test_inexpressible_specs_raise(spec: UNetSpec) -> None:
    with pytest.raises(ValueError, match="cannot be expressed"):
        to_diffusers_unet_config(spec)
    with pytest.raises(ValueError, match="cannot be expressed"):
        to_diffusers_unet_state_dict({}, spec=spec)


def test_foreign_keys_raise() -> None:
    spec = SPECS["attn_both_levels"]
    sd = {f"model.diffusion_model.{k}": v for k, v in VideoUNet(spec).state_dict().items()}
    with pytest.raises(ValueError, match="strip the 'model.diffusion_model.' prefix"):
        to_diffusers_unet_state_dict(sd, spec=spec)
