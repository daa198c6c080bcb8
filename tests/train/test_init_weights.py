"""Stage hand-off (``train.init_weights``) on tiny t2i / t2v / i2v models."""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import pytest
import torch
from torch import nn

from models.checkpoints import save_state_dict
from models.checkpoints.components import (
    DROP_OTHER_KIND,
    NEW_CONCAT,
    NEW_LABEL_EMB,
    NEW_TEMPORAL,
    NEW_UNUSED,
    InitReport,
)
from models.checkpoints.inflation import is_temporal_unet_key
from models.checkpoints.layouts import DROP_DENOISER, DROP_EMA, DROP_SCHEDULE
from models.conditioners import (
    build_tiny_sd21_text_conditioner,
    build_tiny_svd_conditioner,
    tiny_open_clip_config,
)
from models.conditioners.presets import build_text_video_conditioner
from models.diffusion.ddpm_schedule import LDM_SCHEDULE_BUFFER_NAMES, ldm_schedule_buffers
from models.latent_diffusion import LatentDiffusion
from models.unet import VideoUNet, tiny_unet_spec
from models.vae import AutoencoderKL, tiny_autoencoder_spec
from train.init_weights import load_init_weights

U = "model.diffusion_model."
T = 3
NEW_UNUSED_PATTERN = re.compile(
    r"conditioner\.embedders\.(0\.open_clip\.model\.(positional_embedding|text_projection|logit_scale|token_embedding\.weight"
    r"|ln_final\.(weight|bias))|3\.encoder\.(decoder|post_quant_conv)\..*)"
)


def _unet(*, temporal: bool, in_channels: int, adm: int | None) -> VideoUNet:
    spec = tiny_unet_spec(temporal=temporal, in_channels=in_channels, adm_in_channels=adm)
    return VideoUNet(replace(spec, context_dim=32))  # the tiny OpenCLIP context width


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights everywhere (zero-initialised layers included), so loads are visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module


def t2i() -> LatentDiffusion:
    unet = _unet(temporal=False, in_channels=4, adm=None)
    ae = AutoencoderKL(tiny_autoencoder_spec())
    return LatentDiffusion(unet=unet, first_stage=ae, conditioner=build_tiny_sd21_text_conditioner())


def t2v() -> LatentDiffusion:
    cond = build_text_video_conditioner(arch=tiny_open_clip_config())
    unet = _unet(temporal=True, in_channels=4, adm=512)
    return LatentDiffusion(unet=unet, first_stage=AutoencoderKL(tiny_autoencoder_spec()), conditioner=cond)


def i2v() -> LatentDiffusion:
    cond = build_tiny_svd_conditioner(encoder=AutoencoderKL(tiny_autoencoder_spec()))
    unet = _unet(temporal=True, in_channels=8, adm=768)
    return LatentDiffusion(unet=unet, first_stage=AutoencoderKL(tiny_autoencoder_spec()), conditioner=cond)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_loaded(target: nn.Module, source: dict[str, torch.Tensor], keys) -> None:
    state = target.state_dict()
    for key in keys:
        torch.testing.assert_close(state[key], source[key], rtol=0, atol=0, msg=key)


def test_same_layout_load_is_exact(caplog):
    source = _randomize(t2v(), 0).state_dict()
    target = t2v()
    with caplog.at_level(logging.INFO, logger="train.init_weights"):
        report = load_init_weights(target, source)
    _assert_loaded(target, source, source)
    assert sorted(report.loaded) == sorted(source)
    assert report.new == {} and report.dropped == {} and report.widened == [] and report.inflation is None
    assert f"{len(source)} keys loaded" in caplog.text


def test_safetensors_path_source(tmp_path):
    model = _randomize(t2i(), 1)
    path = tmp_path / "stage1.safetensors"
    save_state_dict(model.state_dict(), path)
    target = t2i()
    report = load_init_weights(target, path)
    _assert_loaded(target, model.state_dict(), model.state_dict())
    assert report.source == str(path)


def test_image_unet_inflates_into_video_unet():
    image = _randomize(t2i(), 2)
    target = t2v()
    report = load_init_weights(target, image.state_dict())
    temporal = sorted(U + k for k in target.unet.state_dict() if is_temporal_unet_key(k))
    assert report.inflation is not None and sorted(report.new[NEW_TEMPORAL]) == temporal and temporal
    assert sorted(report.new[NEW_LABEL_EMB]) == sorted(U + k for k in target.unet.state_dict() if "label_emb" in k)
    spatial = [k for k in image.state_dict() if k in target.state_dict()]
    _assert_loaded(target, image.state_dict(), spatial)

    # Identity at init: each frame's output equals the image UNet's, whatever the vector input.
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(2 * T, 4, 8, 8, generator=g), torch.randn(2 * T, generator=g)
    ctx = torch.randn(2, 1, 32, generator=g).repeat_interleave(T, 0)
    y = torch.randn(2 * T, 512, generator=g)
    with torch.no_grad():
        out = target.unet(x, t, ctx, y, num_video_frames=T)
        torch.testing.assert_close(out, image.unet(x, t, ctx), atol=1e-5, rtol=1e-5)


def test_t2v_to_i2v_widens_and_keeps_the_image_embedder():
    source = _randomize(t2v(), 4).state_dict()
    target = i2v()
    before = _snapshot(target)
    report = load_init_weights(target, source, keep=["conditioner"])
    state = target.state_dict()

    conv, label = U + "input_blocks.0.0.weight", U + "label_emb.0.0.weight"
    assert len(report.widened) == 2 and {conv, label} <= {w.split(" ")[0] for w in report.widened}
    torch.testing.assert_close(state[conv][:, :4], source[conv], rtol=0, atol=0)
    assert state[conv].shape[1] == 8 and not state[conv][:, 4:].any()
    torch.testing.assert_close(state[label][:, :512], source[label], rtol=0, atol=0)
    assert state[label].shape[1] == 768 and not state[label][:, 512:].any()
    same = [k for k in source if k.startswith(U) and k not in (conv, label)]
    _assert_loaded(target, source, same)

    text = sorted(k for k in source if k.startswith("conditioner."))
    assert sorted(report.dropped[DROP_OTHER_KIND]) == text
    concat = sorted(k for k in state if k.startswith("conditioner.embedders.3.encoder."))
    assert sorted(report.new[NEW_CONCAT]) == concat
    for key in concat:
        first_stage_key = "first_stage_model." + key.removeprefix("conditioner.embedders.3.encoder.")
        torch.testing.assert_close(state[key], source[first_stage_key], rtol=0, atol=0)
    clip = [k for k in state if k.startswith("conditioner.embedders.0.")]
    assert sorted(report.new["conditioner kept as built (keep=conditioner)"]) == sorted(clip)
    _assert_loaded(target, before, clip)
    assert "concat-latent encoder from the first stage" in report.summary()


def test_t2v_to_i2v_without_keep_is_an_error_and_changes_nothing():
    target = i2v()
    before = _snapshot(target)
    with pytest.raises(ValueError, match="conditioner.embedders.0.open_clip.*keep"):
        load_init_weights(target, _randomize(t2v(), 5).state_dict())
    _assert_loaded(target, before, before)


def test_sd21_ldm_layout_loads_into_t2i():
    model = _randomize(t2i(), 6)
    sgm = model.state_dict()
    ldm = {k.replace("conditioner.embedders.0.", "cond_stage_model."): v for k, v in sgm.items()}
    ldm |= ldm_schedule_buffers() | {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(3)}
    target = t2i()
    report = load_init_weights(target, ldm)
    _assert_loaded(target, sgm, sgm)
    assert sorted(report.dropped[DROP_SCHEDULE]) == sorted(LDM_SCHEDULE_BUFFER_NAMES)
    assert sorted(report.dropped[DROP_EMA]) == ["model_ema.decay", "model_ema.num_updates"]
    assert not report.new

    report = load_init_weights(t2i(), {**sgm, "denoiser.sigmas": torch.linspace(0.03, 14.6, 1000)})
    assert report.dropped == {DROP_DENOISER: ["denoiser.sigmas"]}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({U + "out.2.weight": torch.zeros(4, 16, 3, 3)}, "out.2.weight"),  # a spatial layer of another size
        ({U + "extra.weight": torch.zeros(1)}, "extra.weight"),
        ({"mystery.weight": torch.zeros(1)}, "mystery.weight"),
        ({"first_stage_model.encoder.conv_in.weight": torch.zeros(1)}, "encoder.conv_in.weight"),
        ({"conditioner.embedders.0.model.token_embedding.weight": torch.zeros(3, 32)}, "token_embedding"),
    ],
)
def test_unexplained_mismatch_names_the_key(edit, match):
    source = {**t2v().state_dict(), **edit}
    with pytest.raises(ValueError, match=match):
        load_init_weights(t2v(), source)


def test_video_source_into_image_target_is_an_error():
    with pytest.raises(ValueError, match="temporal layers"):
        load_init_weights(t2i(), t2v().state_dict())


def test_missing_first_stage_errors_unless_kept_or_given(tmp_path):
    source = _randomize(t2i(), 7).state_dict()
    no_vae = {k: v for k, v in source.items() if not k.startswith("first_stage_model.")}
    with pytest.raises(ValueError, match="first_stage"):
        load_init_weights(t2i(), no_vae)

    target = t2i()
    before = _snapshot(target)
    report = load_init_weights(target, no_vae, keep=["first_stage"])
    vae = [k for k in before if k.startswith("first_stage_model.")]
    _assert_loaded(target, before, vae)
    assert sorted(report.new["first_stage kept as built (keep=first_stage)"]) == sorted(vae)

    ae = _randomize(AutoencoderKL(tiny_autoencoder_spec()), 8)
    path = tmp_path / "vae.safetensors"
    save_state_dict(ae.state_dict(), path)  # a bare autoencoder state dict
    target = t2i()
    report = load_init_weights(target, no_vae, first_stage_source=str(path))
    _assert_loaded(target, {"first_stage_model." + k: v for k, v in ae.state_dict().items()}, vae)
    assert report.first_stage_source == str(path)


def test_autoencoder_export_starts_a_stage_from_scratch():
    ae = _randomize(AutoencoderKL(tiny_autoencoder_spec()), 9)
    export = {"first_stage_model." + k: v for k, v in ae.state_dict().items()}
    with pytest.raises(ValueError, match="'unet' to keep"):
        load_init_weights(t2i(), export, keep=["conditioner"])
    target = t2i()
    report = load_init_weights(target, export, keep=["unet", "conditioner"])
    _assert_loaded(target, export, export)
    assert set(report.new) == {"unet kept as built (keep=unet)", "conditioner kept as built (keep=conditioner)"}

    # The other way round: an autoencoder-only module takes the VAE of a full model and drops the rest.
    holder = nn.Module()
    holder.first_stage_model = AutoencoderKL(tiny_autoencoder_spec())
    full = _randomize(t2i(), 10).state_dict()
    report = load_init_weights(holder, full)
    assert set(report.dropped) == {"unet is not part of the target", "conditioner is not part of the target"}
    _assert_loaded(holder, full, holder.state_dict())


def test_keep_is_validated():
    with pytest.raises(ValueError, match="list"):
        load_init_weights(t2i(), t2i().state_dict(), keep="unet")
    with pytest.raises(ValueError, match="choose from unet, first_stage, conditioner"):
        load_init_weights(t2i(), t2i().state_dict(), keep=["vae"])


def test_summary_counts_reasons():
    report = InitReport(source="x", loaded=["a"], new={"why": ["b", "c", "d", "e"]}, widened=["w (1,) -> (2,)"])
    text = report.summary()
    assert "1 keys loaded, 4 new, 0 dropped, 1 widened" in text and "why: 4 (b, c, d, ... 1 more)" in text


def test_released_svd_layout_may_lack_the_unused_keys():
    """Official SVD files leave out the CLIP text leftovers and the concat VAE's decoder half (ABSENT_OK)."""
    source = _randomize(i2v(), 11).state_dict()
    unused = [k for k in source if NEW_UNUSED_PATTERN.fullmatch(k)]
    assert unused
    target = i2v()
    before = _snapshot(target)
    report = load_init_weights(target, {k: v for k, v in source.items() if k not in unused})
    assert sorted(report.new) == [NEW_UNUSED] and sorted(report.new[NEW_UNUSED]) == sorted(unused)
    _assert_loaded(target, before, unused)
    _assert_loaded(target, source, [k for k in source if k not in unused])
