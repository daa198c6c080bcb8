from dataclasses import replace

import pytest
import torch

from models.checkpoints.inflation import inflate_image_unet, is_temporal_unet_key
from models.unet import VideoUNet, tiny_unet_spec

T = 4


def _randomized_image_unet(spec) -> VideoUNet:
    torch.manual_seed(0)
    unet = VideoUNet(spec)
    with torch.no_grad():
        for p in unet.parameters():  # non-trivial weights, zero-initialised convs included
            p.add_(torch.randn_like(p) * 0.05)
    return unet


def _video_batch(spec, b: int = 2):
    g = torch.Generator().manual_seed(3)
    n = b * T
    x = torch.randn(n, spec.in_channels, 16, 16, generator=g)
    t = torch.randn(n, generator=g)
    ctx = torch.randn(b, 1, spec.context_dim, generator=g).repeat_interleave(T, 0)  # one context per video
    y = torch.randn(n, spec.adm_in_channels, generator=g) if spec.adm_in_channels else None
    return x, t, ctx, y


def test_inflation_reports_exactly_the_temporal_keys_and_keeps_the_image_output():
    video_spec = tiny_unet_spec()
    image = _randomized_image_unet(video_spec.image_only())
    video = VideoUNet(video_spec)
    report = inflate_image_unet(video, image.state_dict())
    temporal = sorted(k for k in video.state_dict() if is_temporal_unet_key(k))
    assert sorted(report.new_temporal) == temporal and temporal
    assert report.new_other == [] and report.widened == []

    x, t, ctx, y = _video_batch(video_spec)
    out_video = video(x, t, ctx, y, num_video_frames=T)  # video mode: image_only_indicator all zeros
    out_image = image(x, t, ctx, y)
    torch.testing.assert_close(out_video, out_image, atol=1e-5, rtol=1e-5)

    # The zeroed layers still learn: after one step the output depends on other frames.
    out_video.square().mean().backward()
    grads = [p.grad for n, p in video.named_parameters() if is_temporal_unet_key(n) and "mix_factor" not in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_inflation_widens_input_conv_and_adds_vector_conditioning():
    image_spec = tiny_unet_spec(temporal=False, in_channels=4, adm_in_channels=None)
    video_spec = tiny_unet_spec(in_channels=8, adm_in_channels=768)
    image = _randomized_image_unet(image_spec)
    video = VideoUNet(video_spec)
    report = inflate_image_unet(video, image.state_dict())
    assert report.widened and "input_blocks.0.0.weight" in report.widened[0]
    assert sorted(report.new_other) == sorted(k for k in video.state_dict() if k.startswith("label_emb."))
    x, t, ctx, y = _video_batch(video_spec)
    torch.testing.assert_close(video(x, t, ctx, y, num_video_frames=T), image(x[:, :4], t, ctx), atol=1e-5, rtol=1e-5)


def test_inflation_refuses_unexplained_mismatches():
    video = VideoUNet(tiny_unet_spec())
    image_sd = VideoUNet(tiny_unet_spec().image_only()).state_dict()
    with pytest.raises(ValueError, match="no place"):
        inflate_image_unet(video, {**image_sd, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape mismatch"):
        inflate_image_unet(video, {**image_sd, "out.2.weight": torch.zeros(1, 2, 3, 3)})
    partial = {k: v for k, v in image_sd.items() if not k.startswith("middle_block.0.in_layers")}
    with pytest.raises(ValueError, match="not a temporal key"):
        inflate_image_unet(video, partial)
    wider = replace(tiny_unet_spec(), model_channels=64)
    with pytest.raises(ValueError):
        inflate_image_unet(VideoUNet(wider), image_sd)
