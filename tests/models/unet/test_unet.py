from dataclasses import replace

import pytest
import torch

from models.activation_checkpointing import apply_activation_checkpointing
from models.unet import AlphaBlender, TemporalSpec, UNetSpec, VideoUNet, tiny_unet_spec
from models.unet.resblock import ResBlock

T = 3


def _inputs(spec: UNetSpec, *, b: int = 2, t: int = T, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = b * t
    return dict(
        x=torch.randn(n, spec.in_channels, 16, 16, generator=g),
        timesteps=torch.randn(n, generator=g),
        context=torch.randn(n, 1, spec.context_dim, generator=g),
        y=torch.randn(n, spec.adm_in_channels, generator=g) if spec.adm_in_channels else None,
    )


def _randomize(module: torch.nn.Module, seed: int = 1) -> None:
    """Give every parameter (zero-initialised ones included) small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_tiny_video_unet_forward_backward():
    torch.manual_seed(0)
    unet = VideoUNet(tiny_unet_spec())
    inp = _inputs(unet.spec)
    out = unet(**inp, num_video_frames=T)
    out.square().mean().backward()
    assert out.shape == (2 * T, 4, 16, 16)
    assert all(p.grad is not None for p in unet.parameters() if p.requires_grad)


def test_image_only_indicator_makes_the_video_unet_the_image_unet():
    torch.manual_seed(0)
    video = VideoUNet(tiny_unet_spec())
    _randomize(video)
    image = VideoUNet(video.spec.image_only())
    missing, unexpected = image.load_state_dict(video.state_dict(), strict=False)
    assert not missing and all("time_" in k for k in unexpected)
    inp = _inputs(video.spec)
    ones = torch.ones(2, T)
    torch.testing.assert_close(video(**inp, num_video_frames=T, image_only_indicator=ones), image(**inp))


def test_temporal_layers_mix_frames_only_in_video_mode():
    torch.manual_seed(0)
    unet = VideoUNet(tiny_unet_spec())
    _randomize(unet)
    inp = _inputs(unet.spec, b=1)
    poked = dict(inp, x=inp["x"].clone())
    poked["x"][0] += 1.0  # change frame 0 only
    for indicator, should_change in ((torch.zeros(1, T), True), (torch.ones(1, T), False)):
        a = unet(**inp, num_video_frames=T, image_only_indicator=indicator)
        b = unet(**poked, num_video_frames=T, image_only_indicator=indicator)
        changed = not torch.allclose(a[2], b[2])
        assert changed == should_change


def test_image_unet_has_no_temporal_modules_and_needs_no_frames():
    spec = tiny_unet_spec(temporal=False, in_channels=4, adm_in_channels=None)
    unet = VideoUNet(spec)
    assert not any("time_stack" in k or "time_mixer" in k for k in unet.state_dict())
    out = unet(**_inputs(spec, b=4, t=1))
    assert out.shape == (4, 4, 16, 16)


def test_alpha_blender_strategies():
    fixed = AlphaBlender(0.3, merge_strategy="fixed")
    assert "mix_factor" in dict(fixed.named_buffers()) and not list(fixed.parameters())
    learned = AlphaBlender(0.5, merge_strategy="learned")
    assert torch.allclose(learned.get_alpha(None), torch.sigmoid(torch.tensor([0.5])))
    with_images = AlphaBlender(0.5, merge_strategy="learned_with_images")
    alpha = with_images.get_alpha(torch.tensor([[1.0, 0.0]]))
    assert alpha[0, 0] == 1.0 and torch.isclose(alpha[0, 1], torch.sigmoid(torch.tensor(0.5)))
    x_s, x_t = torch.ones(2, 3, 4), torch.zeros(2, 3, 4)
    out = with_images(x_s, x_t, image_only_indicator=torch.tensor([[1.0, 0.0]]), layout="tokens")
    assert torch.all(out[0] == 1.0) and torch.allclose(out[1], torch.sigmoid(torch.tensor(0.5)).expand(3, 4))
    with pytest.raises(ValueError, match="image_only_indicator"):
        with_images.get_alpha(None)
    with pytest.raises(ValueError, match="merge_strategy"):
        AlphaBlender(0.5, merge_strategy="nope")


@pytest.mark.parametrize("strategy", ["fixed", "learned"])
def test_other_merge_strategies_run(strategy):
    spec = replace(tiny_unet_spec(), temporal=TemporalSpec(merge_strategy=strategy))
    unet = VideoUNet(spec)
    assert unet(**_inputs(spec), num_video_frames=T).shape == (2 * T, 4, 16, 16)


def test_fresh_temporal_resblock_is_identity():
    block = ResBlock(32, 64, dims=3, kernel_size=(3, 1, 1), exchange_temb_dims=True)
    x = torch.randn(2, 32, 5, 4, 4)
    torch.testing.assert_close(block(x, torch.randn(2, 5, 64)), x)


def test_activation_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    unet = VideoUNet(tiny_unet_spec())
    _randomize(unet)
    inp = _inputs(unet.spec)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        unet.zero_grad()
        out = unet(**inp, num_video_frames=T)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in unet.parameters()]

    ref_out, ref_grads = run()
    names = apply_activation_checkpointing(unet, "all")
    assert "middle_block" in names and any(n.startswith("input_blocks.") for n in names)
    out, grads = run()
    torch.testing.assert_close(out, ref_out)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b)
    assert apply_activation_checkpointing(unet, "output") == [
        f"output_blocks.{i}" for i in range(len(unet.output_blocks))
    ]
    with pytest.raises(ValueError):
        apply_activation_checkpointing(unet, "everything")


def test_bad_inputs_and_specs_raise_clear_errors():
    unet = VideoUNet(tiny_unet_spec())
    inp = _inputs(unet.spec)
    with pytest.raises(ValueError, match="num_video_frames"):
        unet(**inp, num_video_frames=4)
    with pytest.raises(ValueError, match="adm_in_channels"):
        unet(**dict(inp, y=None), num_video_frames=T)
    with pytest.raises(ValueError, match="multiple of 32"):
        UNetSpec(model_channels=48)
    with pytest.raises(ValueError, match="merge_strategy"):
        TemporalSpec(merge_strategy="sum")


def test_single_token_cross_attention_shortcut_is_exact_with_zero_gradients():
    from models.unet.attention import BasicTransformerBlock, cross_attention_residual

    torch.manual_seed(0)
    block = BasicTransformerBlock(32, heads=2, dim_head=16, context_dim=24)
    _randomize(block)
    x = torch.randn(6, 10, 32)
    context = torch.randn(3, 1, 24)  # one token per group of two rows

    full = x + block.attn2(block.norm2(x), context.repeat_interleave(2, dim=0))
    fast = cross_attention_residual(x, block.attn2, block.norm2, context)
    torch.testing.assert_close(fast, full)

    fast.square().sum().backward()
    skipped = [block.attn2.to_q.weight, block.attn2.to_k.weight, block.norm2.weight, block.norm2.bias]
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in skipped)  # DDP sees every parameter
    assert block.attn2.to_v.weight.grad.abs().sum() > 0
    # Longer contexts take the full attention path.
    long_context = torch.randn(3, 4, 24)
    torch.testing.assert_close(
        cross_attention_residual(x, block.attn2, block.norm2, long_context),
        x + block.attn2(block.norm2(x), long_context.repeat_interleave(2, dim=0)),
    )


def test_bf16_weights_and_autocast_run():
    spec = tiny_unet_spec()
    inp = _inputs(spec)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert VideoUNet(spec)(**inp, num_video_frames=T).dtype == torch.bfloat16
    unet = VideoUNet(spec).bfloat16()  # GroupNorm statistics still in float32
    out = unet(**{k: v.bfloat16() for k, v in inp.items()}, num_video_frames=T)
    out.float().square().mean().backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_attention_splits_huge_batches_without_changing_results(monkeypatch):
    from models.unet import attention

    torch.manual_seed(0)
    attn = attention.CrossAttention(32, heads=2, dim_head=16)
    x = torch.randn(10, 5, 32)
    expected = attn(x)
    monkeypatch.setattr(attention, "_MAX_ATTENTION_BATCH", 6)  # 3 rows per kernel call
    torch.testing.assert_close(attn(x), expected)
