"""The released checkpoint layouts: full-size key/shape equality on meta, and real loads of tiny files."""

from __future__ import annotations

import pytest
import torch

from models.checkpoints import save_state_dict
from models.checkpoints.official import (
    CheckpointSizes,
    OfficialCheckpointModel,
    load_official_checkpoint,
)
from models.conditioners import tiny_open_clip_config
from models.unet import tiny_unet_spec
from models.vae import tiny_autoencoder_spec


def _shapes(keys: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v["shape"]) for k, v in keys.items()}


def _expected_layout(manifest, variant: str) -> dict[str, tuple[int, ...]]:
    svd = _shapes(manifest("svd")["variants"]["svd"]["keys"])
    sd21 = manifest("sd21")["variants"]
    if variant in ("svd", "svd_xt"):
        assert variant == "svd" or manifest("svd")["variants"]["svd_xt"]["state_dict_identical_to_svd"]
        return svd
    if variant == "svd_image_decoder":
        info = manifest("svd")["variants"]["svd_image_decoder"]
        sd21_first_stage = {
            k: v for k, v in _shapes(sd21["sd21_768_v_ldm"]["keys"]).items() if k.startswith("first_stage_model.")
        }
        layout = {k: v for k, v in svd.items() if not k.startswith("first_stage_model.")} | sd21_first_stage
        assert len(layout) == info["num_keys"] and set(info["keys_not_in_svd"]) <= set(layout)
        assert len(set(svd) - set(layout)) == info["svd_keys_not_here_count"]
        return layout
    return _shapes(sd21["sd21_768_v_ldm" if variant == "sd21" else "sd21_768_v_sgm"]["keys"])


@pytest.mark.parametrize("variant", ["svd", "svd_xt", "svd_image_decoder", "sd21", "sd21_sgm"])
def test_full_size_layout_matches_manifest_exactly(manifest, variant):
    with torch.device("meta"):
        model = OfficialCheckpointModel(variant)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = _expected_layout(manifest, variant)
    assert sorted(set(expected) - set(ours)) == []  # nothing missing
    assert sorted(set(ours) - set(expected)) == []  # nothing unexpected
    assert ours == expected  # and every shape equal


def test_svd_parameter_counts_match_the_paper_analysis(manifest):
    with torch.device("meta"):
        model = OfficialCheckpointModel("svd")
    components = manifest("svd")["variants"]["svd"]["components"]
    assert sum(p.numel() for p in model.unet.parameters()) == components["model.diffusion_model"]["params"]
    assert sum(p.numel() for p in model.parameters()) == manifest("svd")["variants"]["svd"]["total_params"]


TINY = CheckpointSizes(unet=tiny_unet_spec(), autoencoder=tiny_autoencoder_spec(), clip_arch=tiny_open_clip_config())
TINY_SD21 = CheckpointSizes(
    unet=tiny_unet_spec(temporal=False, in_channels=4, adm_in_channels=None),
    autoencoder=tiny_autoencoder_spec(),
    clip_arch=tiny_open_clip_config(),
)


def _random_state_dict(variant: str, sizes: CheckpointSizes) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = OfficialCheckpointModel(variant, sizes=sizes)
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(v.shape, generator=g).to(v.dtype) for k, v in model.state_dict().items()}


def test_svd_file_without_the_unused_keys_loads_and_reports_them(tmp_path):
    state = _random_state_dict("svd", TINY)
    released = {
        k: v
        for k, v in state.items()
        if ".encoder.decoder." not in k and "post_quant_conv" not in k and "ln_final" not in k
    }
    path = tmp_path / "svd.safetensors"
    save_state_dict(released, path)
    loaded = load_official_checkpoint(path, variant="svd", sizes=TINY)
    assert set(loaded.report.absent) == set(state) - set(released) and loaded.report.absent
    got = loaded.model.state_dict()
    for key, value in released.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)
    assert all(torch.all(got[k] == 0) for k in loaded.report.absent)
    assert not any(t.device.type == "meta" for t in got.values())
    assert all(p.requires_grad for p in loaded.unet.parameters())
    # The loaded UNet runs.
    unet = loaded.unet
    out = unet(torch.randn(2, 8, 8, 8), torch.randn(2), torch.randn(2, 1, 64), torch.randn(2, 768), num_video_frames=2)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()


def test_sd21_ldm_ckpt_with_lightning_wrapper_loads(tmp_path):
    state = _random_state_dict("sd21", TINY_SD21)
    path = tmp_path / "v2-1.ckpt"
    torch.save({"state_dict": state, "global_step": 7}, path)
    loaded = load_official_checkpoint(path, variant="sd21", sizes=TINY_SD21)
    assert loaded.report.absent == []
    half = load_official_checkpoint(path, variant="sd21", sizes=TINY_SD21, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.unet.parameters())
    torch.testing.assert_close(loaded.model.alphas_cumprod, state["alphas_cumprod"])
    assert loaded.conditioner.embedders[0] is loaded.model.cond_stage_model


def test_mismatched_checkpoints_are_refused_with_the_reason():
    state = _random_state_dict("svd", TINY)
    with pytest.raises(ValueError, match="unexpected keys"):
        load_official_checkpoint({**state, "model_ema.decay": torch.zeros(())}, variant="svd", sizes=TINY)
    missing_unet = {k: v for k, v in state.items() if k != "model.diffusion_model.out.2.weight"}
    with pytest.raises(ValueError, match="missing keys"):
        load_official_checkpoint(missing_unet, variant="svd", sizes=TINY)
    with pytest.raises(ValueError, match="another variant"):
        load_official_checkpoint(state, variant="svd_image_decoder", sizes=TINY)
    with pytest.raises(ValueError, match="unknown checkpoint variant"):
        OfficialCheckpointModel("svd_xxl")
