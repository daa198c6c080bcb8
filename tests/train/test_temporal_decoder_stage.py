"""The temporal decoder end to end (tiny real runs): a video stage in a run with a temporal_decoder export decodes,
exports and samples with it, trains bit for bit as without it, and refuses a decoder trained on another encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.checkpoints import load_state_dict, save_state_dict
from models.vae import AutoencoderKL, TemporalAutoencoder
from tests.conftest import load_script
from train.export import load_export
from train.module import read_metrics
from train.run import run
from train.sampling import decode_in_chunks

from .conftest import compose_train, tiny_stage_overrides

VIDEO_SCRATCH = (  # a video stage on the autoencoder's VAE, UNet and conditioner from scratch: seconds
    "stage.init.from_stage=null",
    "stage.init.first_stage_from_stage=autoencoder",
    "stage.init.keep=[unet,conditioner]",
    "stage.max_steps=2",
)


@pytest.fixture(scope="module")
def runs(demo_shards, tmp_path_factory) -> Path:
    """autoencoder -> temporal_decoder -> video_pretrain twice: decoder found automatically (video_pretrain) and
    turned off (stage folder video_kl)."""
    root = tmp_path_factory.mktemp("td") / "runs"

    def go(stage: str, *extra: str) -> None:
        assert run(compose_train(tiny_stage_overrides(stage, *extra, root=root, data_root=demo_shards))) == 0

    go("autoencoder", "stage.max_steps=2")
    go("temporal_decoder", "stage.max_steps=2")
    go("video_pretrain", *VIDEO_SCRATCH, "stage.name=video_kl", "stage.init.temporal_decoder_from_stage=null")
    go("video_pretrain", *VIDEO_SCRATCH)
    return root / "demo"


def _first_stage(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_state_dict(path / "export" / "model.safetensors").items() if "first_stage" in k}


def test_video_stage_exports_the_temporal_decoder_with_the_same_losses(runs: Path) -> None:
    losses = [
        [r["train/loss"] for r in read_metrics(runs / s / "metrics.jsonl")] for s in ("video_kl", "video_pretrain")
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 2  # same latents, same conditioner, same draws: bit for bit

    temporal, kl = _first_stage(runs / "video_pretrain"), _first_stage(runs / "video_kl")
    assert _first_stage(runs / "temporal_decoder").keys() == temporal.keys()
    for key, value in _first_stage(runs / "temporal_decoder").items():  # the whole first stage is the export's
        assert torch.equal(temporal[key], value), key
    for key, value in _first_stage(runs / "autoencoder").items():  # ... whose encoder is the autoencoder's
        assert torch.equal(kl[key], value), key
        if ".encoder." in key or ".quant_conv." in key:
            assert torch.equal(temporal[key], value), key
    assert any(".time_stack." in k for k in temporal) and not any("post_quant_conv" in k for k in temporal)

    meta = json.loads((runs / "video_pretrain" / "export" / "export.json").read_text())
    td_meta = json.loads((runs / "temporal_decoder" / "export" / "export.json").read_text())
    assert meta["decoder"] == "temporal" and meta["temporal_decoder_run_id"] == td_meta["run_id"]
    assert Path(meta["temporal_decoder"]) == (runs / "temporal_decoder" / "export").resolve()
    kl_weights = (runs / "autoencoder" / "export" / "model.safetensors").resolve()
    assert Path(meta["kl_autoencoder"]) == Path(td_meta["kl_autoencoder"]) == kl_weights
    assert json.loads((runs / "video_kl" / "export" / "export.json").read_text())["decoder"] == "kl"
    assert (
        "temporal_decoder_path: " + str(runs / "temporal_decoder" / "export")
        in (runs / "video_pretrain" / "export" / "config.yaml").read_text()
    )
    loaded = load_export(runs / "video_pretrain" / "export")
    assert isinstance(loaded.model.first_stage, TemporalAutoencoder)
    assert isinstance(load_export(runs / "video_kl" / "export").model.first_stage, AutoencoderKL)


def test_decode_in_chunks_decodes_each_chunk_as_one_clip(runs: Path) -> None:
    first_stage = load_export(runs / "video_pretrain" / "export").model.first_stage
    z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        halves = decode_in_chunks(first_stage, z, chunk=2)
        expected = torch.cat([first_stage.decode_latents(p, chunk_size=None, num_frames=2) for p in z.split(2)])
        whole = decode_in_chunks(first_stage, z, chunk=4)
    assert torch.equal(halves, expected) and not torch.equal(halves, whole)


def _gif(path: Path) -> bytes:
    with Image.open(path) as gif:
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(gif.convert("RGB").tobytes())
    return b"".join(frames)


def test_sample_cli_picks_the_decoder(runs: Path, tmp_path: Path, capsys) -> None:
    script = load_script("sample")
    base = ["--prompt", "a red square", "--steps", "2", "--out", str(tmp_path)]
    export = ["--export", str(runs / "video_pretrain" / "export")]
    for name, extra in (("default", []), ("temporal", ["--decoder", "temporal"]), ("kl", ["--decoder", "kl"])):
        assert script.main([*export, *base, "--name", name, *extra]) == 0
        assert (tmp_path / f"{name}.mp4").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "[decoder] temporal (the export's" in printed and "[decoder] kl (from" in printed
    assert _gif(tmp_path / "default.gif") == _gif(tmp_path / "temporal.gif")  # default: the export's decoder
    assert _gif(tmp_path / "kl.gif") != _gif(tmp_path / "temporal.gif")
    with pytest.raises(ValueError, match="has no temporal decoder"):
        script.main(["--export", str(runs / "video_kl" / "export"), *base, "--decoder", "temporal"])


def test_a_temporal_decoder_of_another_encoder_is_refused(runs: Path, demo_shards: Path, tmp_path: Path) -> None:
    state = load_state_dict(runs / "temporal_decoder" / "export" / "model.safetensors")
    state["first_stage_model.encoder.conv_in.bias"] = state["first_stage_model.encoder.conv_in.bias"] + 1e-3
    save_state_dict(state, tmp_path / "other_td.safetensors")
    root = runs.parent

    def video(*extra: str) -> None:
        run(compose_train(tiny_stage_overrides("video_pretrain", *VIDEO_SCRATCH, "stage.name=video_x", *extra,
                                               root=root, data_root=demo_shards)))  # fmt: skip

    with pytest.raises(ValueError, match=r"another autoencoder .*encoder\.conv_in\.bias differs"):
        video(f"stage.init.temporal_decoder_path={tmp_path / 'other_td.safetensors'}")
    with pytest.raises(ValueError, match="is not a temporal_decoder stage export"):
        video(f"stage.init.temporal_decoder_path={runs / 'autoencoder' / 'export'}")
    with pytest.raises(ValueError, match="no such export"):
        video(f"stage.init.temporal_decoder_path={tmp_path / 'nope'}")


def test_decoder_consistency_script_measures_both_decoders(runs: Path, demo_shards: Path, capsys) -> None:
    script = load_script("decoder_consistency")
    td = ["--temporal-decoder", str(runs / "temporal_decoder" / "export"), "--shards", str(demo_shards / "clips/*.tar")]
    assert script.main(td) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["clips"] >= 2 and (figures["num_frames"], figures["height"], figures["width"]) == (4, 32, 32)
    assert figures["frame_diff_source"] > 0
    for name in ("kl", "temporal"):
        assert 0 < figures[f"recon_{name}"] < 1
        # mean |a - b| >= |mean |a| - mean |b||: the flicker bounds the change in frame-to-frame difference
        assert figures[f"flicker_{name}"] >= abs(figures[f"frame_diff_{name}"] - figures["frame_diff_source"]) - 1e-6
    assert figures["recon_kl"] != figures["recon_temporal"]
    other = runs / "other_ae.safetensors"
    state = load_state_dict(runs / "autoencoder" / "export" / "model.safetensors")
    state["first_stage_model.encoder.conv_out.bias"] = state["first_stage_model.encoder.conv_out.bias"] + 1.0
    save_state_dict(state, other)
    with pytest.raises(ValueError, match="another encoder"):
        script.main([*td, "--autoencoder", str(other)])


def test_a_resumed_stage_keeps_the_decoder_it_started_with(runs: Path, demo_shards: Path) -> None:
    """video_kl started with the KL decoder; resumed (one more step) in a run that now has a temporal decoder export,
    it keeps the KL first stage its checkpoint holds."""
    overrides = tiny_stage_overrides("video_pretrain", *VIDEO_SCRATCH, "stage.name=video_kl", "stage.max_steps=3",
                                     root=runs.parent, data_root=demo_shards)  # fmt: skip
    assert run(compose_train(overrides)) == 0
    assert [r["step"] for r in read_metrics(runs / "video_kl" / "metrics.jsonl")] == [1, 2, 3]
    meta = json.loads((runs / "video_kl" / "export" / "export.json").read_text())
    assert meta["step"] == 3 and meta["decoder"] == "kl"
