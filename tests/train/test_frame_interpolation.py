"""Frame interpolation (stage=frame_interpolation, task interp): the conditioning layout, the hand-off from a T2V
export (input conv 4 -> 9, label_emb 512 -> 768, new inputs zero), a tiny stage that trains, resumes exactly and
exports, and scripts/sample.py --interpolate / --interpolate-video."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoints import load_state_dict
from models.checkpoints.components import kept_reason
from tests.conftest import load_script
from train.builders import build_objective
from train.conditioning import conditioner_inputs, per_frame, unconditional_inputs
from train.config import GenerationSettings
from train.export import load_export
from train.init_weights import load_init_weights
from train.interpolation import interpolate_frames, passes_for_factor, read_image_pair
from train.media import write_mp4
from train.run import run

from .conftest import assert_same_export_weights, compose_train, tiny_stage_overrides

# One xdist worker for the module: its tests share the T2V run and the stage's export.
pytestmark = pytest.mark.xdist_group("frame_interpolation")

FRAMES = 5
U = "model.diffusion_model."


@pytest.fixture(scope="module")
def make(tmp_path_factory, demo_shards):
    """The overrides of a tiny 5-frame run of a stage, all in one run folder."""
    root = tmp_path_factory.mktemp("interp_runs")

    def overrides(stage: str, *extra: str) -> list[str]:
        return tiny_stage_overrides(stage, *extra, root=root, data_root=demo_shards, frames=FRAMES)

    return overrides


@pytest.fixture(scope="module")
def t2v_run(make):
    """A tiny run with a video_finetune (T2V) export, 1 step from scratch; returns (make_overrides, export folder)."""
    scratch = ("stage.init.from_stage=null", "stage.init.keep=[unet,first_stage,conditioner]", "stage.max_steps=1")
    cfg = compose_train(make("video_finetune", *scratch))
    assert run(cfg) == 0
    return make, Path(cfg.paths.root) / "demo" / "video_finetune" / "export"


def _interp(make) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_objective(compose_train(make("frame_interpolation")))


def test_conditioning_layout(make):
    obj = _interp(make)
    conditioner, b = obj.model.conditioner, 2
    assert obj.model.unet.spec.in_channels == 9 and obj.model.unet.spec.adm_in_channels == 768
    ends = torch.rand(b, 2, 3, 32, 32) * 2 - 1
    ids = {"fps_id": torch.full((b,), 6), "motion_bucket_id": torch.full((b,), 127)}
    g = torch.Generator().manual_seed(0)
    clean = conditioner_inputs("interp", cond_image=ends, cond_aug=torch.zeros(b), generator=g, **ids)
    uc_inputs, zero = unconditional_inputs("interp", clean)
    c, uc = conditioner.get_unconditional_conditioning(clean, uc_inputs, force_uc_zero_embeddings=zero)
    seq = c["concat"]  # (B, T, C + 1, h, w)
    assert seq.shape == (b, FRAMES, 5, 8, 8) and c["crossattn"].shape[:2] == (b, 2) and c["vector"].shape == (b, 768)
    vae = conditioner.embedders[3].encoder  # a copy of the first stage (filled from it at the hand-off)
    assert type(vae) is type(obj.model.first_stage) and vae.scale_factor == obj.model.first_stage.scale_factor
    with torch.no_grad():
        z = vae.encode(ends.flatten(0, 1)).mode() * vae.scale_factor  # (B * 2, C, h, w), scaled as x0
    torch.testing.assert_close(seq[:, 0, :4], z[0::2], rtol=0, atol=1e-6)
    torch.testing.assert_close(seq[:, -1, :4], z[1::2], rtol=0, atol=1e-6)
    z_m = conditioner.mask_embedding.detach().reshape(1, 1, 4, 1, 1).expand(b, 3, 4, 8, 8)
    assert torch.equal(seq[:, 1:4, :4], z_m) and conditioner.mask_embedding.requires_grad
    assert seq[:, :, 4].amax(dim=(-1, -2)).tolist() == [[1.0, 0.0, 0.0, 0.0, 1.0]] * b
    assert torch.equal(seq[:, :, 4].amin(dim=(-1, -2)), seq[:, :, 4].amax(dim=(-1, -2)))
    # Unconditional: CLIP embeddings and end latents zero; mask embedding, mask channel and vector kept.
    assert not uc["crossattn"].any() and not uc["concat"][:, [0, -1], :4].any()
    assert torch.equal(uc["concat"][:, 1:4], seq[:, 1:4]) and torch.equal(uc["concat"][:, :, 4], seq[:, :, 4])
    assert torch.equal(uc["vector"], c["vector"])
    assert per_frame(c, FRAMES)["concat"].shape == (b * FRAMES, 5, 8, 8)
    # cond_aug noises the end latents in latent space, seeded by the generator.
    noisy = conditioner_inputs("interp", cond_image=ends, cond_aug=torch.full((b,), 0.5), generator=g, **ids)
    noisy_c = conditioner.get_unconditional_conditioning(noisy)[0]["concat"].detach()  # no CFG dropout
    delta = noisy_c[:, [0, -1], :4] - seq[:, [0, -1], :4].detach()
    assert 0.3 < float(delta.std() / 0.5) < 1.7 and torch.equal(noisy_c[:, 1:4], seq[:, 1:4])  # eps ~ N(0, 1)
    assert torch.equal(conditioner.get_unconditional_conditioning(noisy)[0]["concat"], noisy_c)  # seeded by inputs


def test_hand_off_from_t2v_widens_with_zeros(t2v_run, caplog):
    make, export = t2v_run
    t2v = load_export(export)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero everywhere (the zero-initialised output conv too), so the check means something
        for p in t2v.model.unet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    obj = _interp(make)
    with caplog.at_level(logging.INFO, logger="train.init_weights"):
        report = load_init_weights(obj.model, t2v.model.state_dict(), keep=["conditioner"])
    wide = [w for w in report.widened if "input_blocks.0.0.weight" in w]
    assert wide and "4, 3, 3) ->" in wide[0] and "9, 3, 3)" in wide[0] and "input_blocks.0.0.weight" in caplog.text
    assert "conditioner.mask_embedding" in report.new[kept_reason("conditioner")]  # built: N(0, 1)
    concat_vae, first_stage = obj.model.conditioner.embedders[3].encoder, obj.model.first_stage
    assert torch.equal(concat_vae.encoder.conv_in.weight, first_stage.encoder.conv_in.weight)  # filled from it
    conv = obj.model.unet.input_blocks[0][0].weight
    assert torch.equal(conv[:, :4], t2v.model.unet.input_blocks[0][0].weight) and not conv[:, 4:].any()

    x, t = torch.randn(FRAMES, 4, 8, 8, generator=g), torch.full((FRAMES,), 3.0)
    context, y = torch.randn(FRAMES, 2, 32, generator=g), torch.randn(FRAMES, 512, generator=g)
    kw = {"num_video_frames": FRAMES, "image_only_indicator": torch.zeros(1, FRAMES)}
    with torch.no_grad():
        ref = t2v.model.unet(x, t, context=context, y=y, **kw)
        out = obj.model.unet(torch.cat([x, torch.randn(FRAMES, 5, 8, 8, generator=g)], 1), t, context=context,
                             y=torch.cat([y, torch.randn(FRAMES, 256, generator=g)], 1), **kw)  # fmt: skip
    assert ref.abs().mean() > 1e-3
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_stage_trains_resumes_exactly_and_exports(t2v_run, caplog):
    make, export = t2v_run
    with caplog.at_level(logging.INFO, logger="train.init_weights"):
        assert run(compose_train(make("frame_interpolation", "stage.max_steps=4"))) == 0
    assert "input_blocks.0.0.weight (64, 4, 3, 3) -> (64, 9, 3, 3)" in caplog.text  # the hand-off, in the run log
    straight = export.parents[1] / "frame_interpolation" / "export"
    # The same stage from the same export, stopped after 2 steps and continued to 4 (resume=auto).
    other = ("paths.run_name=resumed", "stage.init.from_stage=null", f"stage.init.path={export}")
    assert run(compose_train(make("frame_interpolation", *other, "stage.max_steps=2"))) == 0
    assert run(compose_train(make("frame_interpolation", *other, "stage.max_steps=4"))) == 0
    assert_same_export_weights(straight, export.parents[2] / "resumed" / "frame_interpolation" / "export")
    state = load_state_dict(straight / "model.safetensors")
    assert state[U + "input_blocks.0.0.weight"].shape[1] == 9 and state[U + "input_blocks.0.0.weight"][:, 4:].any()
    built = _interp(make).model.conditioner.mask_embedding  # what the stage built (seed 0) and started from
    assert not torch.equal(state["conditioner.mask_embedding"], built.detach())  # z_m trains
    loaded = load_export(straight)
    assert (loaded.task, loaded.num_frames) == ("interp", FRAMES)


def _png(path: Path, value: int, size=(40, 32)) -> Path:
    from PIL import Image

    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_sample_interpolate_and_interpolate_video(t2v_run, tmp_path):
    main = load_script("sample").main
    make, export = t2v_run
    interp = export.parents[1] / "frame_interpolation" / "export"
    if not interp.is_dir():
        assert run(compose_train(make("frame_interpolation", "stage.max_steps=1"))) == 0
    common = ["--export", str(interp), "--steps", "2", "--out", str(tmp_path)]
    a, b = _png(tmp_path / "a.png", 1), _png(tmp_path / "b.png", 2)
    assert main([*common, "--interpolate", str(a), str(b), "--name", "pair"]) == 0
    from PIL import Image

    with Image.open(tmp_path / "pair.gif") as gif:
        assert gif.n_frames == FRAMES and gif.size == (32, 32)
    assert _frames(tmp_path / "pair.mp4").shape[0] == FRAMES

    pair = read_image_pair(a, b, size=(32, 32))  # uint8 (2, 3, H, W)
    video = write_mp4(torch.stack([pair[0], pair[1], pair[0]]).permute(0, 2, 3, 1), tmp_path / "in.mp4", 4)
    assert main([*common, "--interpolate-video", str(video), "--factor", "4", "--name", "x4"]) == 0
    assert _frames(tmp_path / "x4.mp4").shape[0] == 2 * 4 + 1

    # The end frames of each pair are its inputs exactly (before the lossy mp4 / gif encoding).
    model = load_export(interp)
    settings = GenerationSettings(num_steps=2)
    three = torch.stack([pair[0], pair[1], pair[0]])
    out = interpolate_frames(model.model, model.denoiser, three, factor=4, num_frames=FRAMES, settings=settings)
    assert out.shape == (9, 32, 32, 3) and torch.equal(out[::4], three.permute(0, 2, 3, 1))

    with pytest.raises(ValueError, match="power of 4"):
        main([*common, "--interpolate-video", str(video), "--factor", "3"])
    with pytest.raises(ValueError, match="same size"):
        main([*common, "--interpolate", str(a), str(_png(tmp_path / "c.png", 3, size=(48, 32)))])
    with pytest.raises(ValueError, match="frame_interpolation stage"):
        main(["--export", str(export), "--out", str(tmp_path), "--interpolate", str(a), str(b)])
    one = write_mp4(pair[:1].permute(0, 2, 3, 1), tmp_path / "one.mp4", 4)
    with pytest.raises(ValueError, match="at least 2"):
        main([*common, "--interpolate-video", str(one)])


def test_factors_are_powers_of_the_frames_per_pass():
    assert [passes_for_factor(f, num_frames=5) for f in (4, 16, 64)] == [1, 2, 3]
    for bad in (1, 2, 8, 12):
        with pytest.raises(ValueError, match="power of 4"):
            passes_for_factor(bad, num_frames=5)
