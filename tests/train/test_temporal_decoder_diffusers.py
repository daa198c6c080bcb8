"""A stage export whose first stage is a trained temporal decoder -> scripts/export_diffusers.py -> diffusers'
StableVideoDiffusionPipeline with an ``AutoencoderKLTemporalDecoder`` that decodes as ours (demo sizes: one ResBlock
per level, written with identity blocks; quant_conv kept, no post_quant_conv)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from models.vae import AutoencoderKL, TemporalAutoencoder, temporal_from_kl, tiny_autoencoder_spec
from tests.conftest import load_script
from tests.scripts.test_export_diffusers import _perturb
from train.builders import build_objective
from train.config import register_configs
from train.export import write_export
from train.interop_diffusers import decoder_parity

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
T = 4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    register_configs()
    root = tmp_path_factory.mktemp("td_diffusers")
    overrides = ["stage=img2vid_finetune", "experiment=demo", f"stage.init.temporal_decoder_path={root / 'td'}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=[*overrides, f"stage.num_frames={T}"])
    torch.manual_seed(0)
    model = _perturb(build_objective(cfg).export_module(), seed=2)
    assert isinstance(model.first_stage, TemporalAutoencoder) and model.first_stage.post_quant_conv is None
    assert model.first_stage.spec.num_res_blocks == 1  # the demo size diffusers' temporal VAE has no place for
    # As the stages build it: the concat-latent VAE's encoder and quant_conv are the first stage's.
    concat = model.conditioner.embedders[3].encoder
    encoder = {k: v for k, v in model.first_stage.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
    assert not concat.load_state_dict(encoder, strict=False).unexpected_keys
    write_export(root / "export", model.state_dict(), config=cfg, meta={"objective": "diffusion"})
    assert load_script("export_diffusers").main(["--export", str(root / "export"), "--out", str(root / "pipe")]) == 0
    pipe = diffusers.StableVideoDiffusionPipeline.from_pretrained(root / "pipe", local_files_only=True)
    return model, pipe, root


def test_the_pipeline_decodes_with_our_temporal_decoder(exported) -> None:
    model, pipe, root = exported
    assert isinstance(pipe.vae, diffusers.AutoencoderKLTemporalDecoder)
    assert json.loads((root / "pipe" / "vae" / "config.json").read_text())["layers_per_block"] == 2
    g = torch.Generator().manual_seed(6)
    z = torch.randn(2 * T, 4, 12, 16, generator=g)
    x = torch.rand(2, 3, 48, 64, generator=g) * 2 - 1
    with torch.no_grad():
        ours = model.first_stage.decode(z, num_frames=T)
        theirs = pipe.vae.decode(z, num_frames=T).sample
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            pipe.vae.encode(x).latent_dist.mode(), model.first_stage.encode(x).mode(), atol=1e-5, rtol=1e-5
        )
        # the temporal layers matter: decoding the same latents as clips of 2 frames differs
        assert (pipe.vae.decode(z, num_frames=2).sample - theirs).abs().max() > 1e-3
    assert ours.abs().mean() > 0.05
    frames = pipe(
        torch.rand(1, 3, 32, 32, generator=g), height=48, width=64, num_frames=T, num_inference_steps=2,
        generator=torch.Generator().manual_seed(0), output_type="pt",
    ).frames  # fmt: skip
    assert frames.shape == (1, T, 3, 48, 64) and torch.isfinite(frames).all()


def test_decoder_parity_is_exact_in_float64(exported) -> None:
    """What ``export_diffusers.py --check`` prints: in float64 the two decoders agree to rounding (the mapping is
    exact); in float32 each side's own rounding bounds the difference."""
    _, _, root = exported
    parity = decoder_parity(root / "export", root / "pipe")
    assert parity["vae"] == "AutoencoderKLTemporalDecoder" and parity["output_max_abs"] > 0.05
    assert parity["max_abs_fp64"] < 1e-12
    assert parity["max_abs_fp32"] < 1e-5 and parity["ours_fp32_vs_fp64"] < 1e-5


def test_identity_blocks_and_the_fold_are_exact() -> None:
    """num_res_blocks=1 padded to diffusers' 2 computes the same; the folded post_quant_conv is exact inside."""
    torch.manual_seed(1)
    kl = _perturb(AutoencoderKL(tiny_autoencoder_spec()), seed=3)
    folded = temporal_from_kl(kl, fold_post_quant_conv=True)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        inside = (kl.decoder.conv_in(kl.post_quant_conv(z)) - folded.decoder.conv_in(z))[:, :, 1:-1, 1:-1]
        ring = kl.decoder.conv_in(kl.post_quant_conv(z)) - folded.decoder.conv_in(z)
        torch.testing.assert_close(inside, torch.zeros_like(inside), atol=1e-5, rtol=0)
        assert ring.abs().max() > 1e-3  # the zero padding of P z + p: the one place the fold is not exact
        torch.testing.assert_close(
            folded.encode(torch.ones(1, 3, 16, 16)).mean, kl.encode(torch.ones(1, 3, 16, 16)).mean
        )
