"""The multiview stage (SVD-MV, train/task_multiview.py): the i2v -> mv hand-off keeps the I2V model's function, a
tiny stage trains on demo orbits from an I2V export, resumes bit for bit and exports; sample.py --elevation and
evaluate.py multiview run on the export; PSNR / SSIM behave."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from data.demo_data import write_demo_dataset
from models.checkpoints import CheckpointSizes, OfficialCheckpointModel
from tests.conftest import load_script
from train.builders import autoencoder_spec, build_objective, clip_arch, unet_spec
from train.conditioning import conditioner_inputs, per_frame
from train.config import validate
from train.evaluation.multiview import psnr, ssim
from train.init_weights import load_init_weights
from train.module import read_metrics
from train.run import run
from train.task_multiview import MV_TASK, handoff_to_multiview

from .conftest import assert_same_export_weights, compose_train

FRAMES, SIZE = 5, 32


@pytest.fixture(scope="module")
def orbit_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("orbit_data")
    write_demo_dataset(
        out, seed=5, num_raw_videos=0, num_clips=0, num_images=0, samples_per_shard=2, num_orbits=4,
        num_orbit_test=2, orbit_views=FRAMES, orbit_size=SIZE,
    )  # fmt: skip
    return out


def _conditions(objective, task: str, **sources) -> dict[str, torch.Tensor]:
    image = torch.linspace(-1, 1, 3 * SIZE * SIZE).reshape(1, 3, SIZE, SIZE)
    inputs = conditioner_inputs(
        task, captions=[], cond_image=image, cond_aug=torch.tensor([0.02]), generator=torch.Generator(), **sources
    )
    cond, _ = objective.model.conditioner.get_unconditional_conditioning(inputs)
    return per_frame(cond, FRAMES)


def test_the_i2v_handoff_keeps_the_i2v_model_at_fps_7_motion_127(stage_overrides):
    i2v = build_objective(compose_train(stage_overrides("img2vid_finetune", frames=FRAMES)))
    mv_cfg = compose_train(stage_overrides("multiview", frames=FRAMES))
    validate(mv_cfg)
    assert unet_spec(mv_cfg).adm_in_channels == 512 and unet_spec(mv_cfg).in_channels == 8
    mv = build_objective(mv_cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking UNet: no zero-initialised layer, every label_emb column matters
        for p in i2v.model.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    report = load_init_weights(mv.model, i2v.model.state_dict(), adapt_source=handoff_to_multiview)
    assert any("label_emb.0.0.weight" in w and "768) -> (" in w and "512)" in w for w in report.widened), report.widened
    assert "fps_id=6, motion_bucket_id=127 folded into the bias" in report.summary()
    x = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    sigma = torch.full((FRAMES,), 1.5)
    kwargs = {"num_video_frames": FRAMES, "image_only_indicator": torch.zeros(1, FRAMES)}
    with torch.no_grad():
        c = _conditions(i2v, "i2v", fps_id=torch.tensor([6]), motion_bucket_id=torch.tensor([127]))
        want = i2v.denoiser(i2v.model.unet, x, sigma, c, **kwargs)
        for elevation in (0.0, 25.0):  # the new elevation columns start at zero: no effect yet
            c = _conditions(mv, MV_TASK, fps_id=torch.tensor([0]), motion_bucket_id=torch.tensor([0]),
                            elevation=torch.tensor([elevation]))  # fmt: skip
            assert c["vector"].shape == (FRAMES, 512)
            got = mv.denoiser(mv.model.unet, x, sigma, c, **kwargs)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        other = _conditions(i2v, "i2v", fps_id=torch.tensor([20]), motion_bucket_id=torch.tensor([10]))
        assert not torch.allclose(i2v.denoiser(i2v.model.unet, x, sigma, other, **kwargs), want, atol=1e-4)


def test_a_released_svd_xt_file_hands_off_to_the_multiview_stage(stage_overrides):
    # The official key layout (tiny sizes), without the keys the released files leave out, SVD-XT's temporal VAE.
    extra = ("model.autoencoder.temporal_decoder=true",)
    i2v_cfg = compose_train(stage_overrides("img2vid_finetune", *extra, frames=FRAMES))
    sizes = CheckpointSizes(
        unet=unet_spec(i2v_cfg), autoencoder=autoencoder_spec(i2v_cfg), clip_arch=clip_arch(i2v_cfg)
    )
    released = OfficialCheckpointModel("svd_xt", sizes=sizes)
    state = {k: v for k, v in released.state_dict().items() if not released.absent_ok(k)}
    mv = build_objective(compose_train(stage_overrides("multiview", *extra, frames=FRAMES)))
    report = load_init_weights(mv.model, state, adapt_source=handoff_to_multiview)
    assert not report.dropped and any("embedders.3.* -> conditioner.embedders.2.*" in w for w in report.widened)
    loaded = mv.model.state_dict()
    for key, value in state.items():  # the concat-latent encoder moved, nothing else
        if key.startswith("conditioner.embedders.3.encoder.encoder."):
            assert torch.equal(loaded[key.replace("embedders.3.", "embedders.2.")], value), key


def test_the_mv_task_needs_an_elevation():
    with pytest.raises(ValueError, match="conditions on the camera elevation"):
        conditioner_inputs(MV_TASK, captions=[], fps_id=torch.tensor([6]), motion_bucket_id=torch.tensor([127]),
                           cond_image=torch.zeros(1, 3, 8, 8), cond_aug=torch.tensor([0.02]))  # fmt: skip


def test_psnr_and_ssim_of_identical_and_different_views():
    a = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    b = (a.int() + torch.randint(-20, 21, a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 255)
    b = b.to(torch.uint8)
    assert torch.isinf(psnr(a, a)).all() and torch.allclose(ssim(a, a), torch.ones(2, dtype=torch.float64))
    assert (psnr(a, b) < 40).all() and (ssim(a, b) < 0.99).all()
    tm = pytest.importorskip("torchmetrics.image")
    reference = tm.StructuralSimilarityIndexMeasure(data_range=1.0, reduction="none")
    torch.testing.assert_close(ssim(a, b).float(), reference(b.float() / 255, a.float() / 255), rtol=1e-4, atol=1e-4)


def test_the_multiview_stage_trains_resumes_exports_samples_and_evaluates(
    stage_overrides, orbit_root, tmp_path, capsys, caplog
):
    runs = tmp_path / "runs"
    keep_all = ("stage.init.from_stage=null", "stage.init.keep=[unet,first_stage,conditioner]", "stage.max_steps=1")
    assert run(compose_train(stage_overrides("img2vid_finetune", *keep_all, frames=FRAMES))) == 0
    i2v_export = runs / "demo" / "img2vid_finetune" / "export"

    def mv(name: str, steps: int) -> list[str]:
        return stage_overrides(
            "multiview", f"paths.data_root={orbit_root}", "stage.init.from_stage=null",
            f"stage.init.path={i2v_export}", f"stage.max_steps={steps}", f"paths.run_name={name}", frames=FRAMES,
        )  # fmt: skip

    with caplog.at_level(logging.INFO, logger="train.init_weights"):
        assert run(compose_train(mv("straight", 4))) == 0
    assert "label_emb.0.0.weight" in caplog.text and "embedders.3.* -> conditioner.embedders.2.*" in caplog.text
    assert run(compose_train(mv("resumed", 2))) == 0  # stops after step 2 (a checkpoint), then goes on to 4
    capsys.readouterr()
    assert run(compose_train(mv("resumed", 4))) == 0
    straight, resumed = runs / "straight" / "multiview", runs / "resumed" / "multiview"
    assert f"[resume] {resumed / 'checkpoints'}" in capsys.readouterr().out
    losses = [{r["batch"]: r["train/loss"] for r in read_metrics(f / "metrics.jsonl")} for f in (straight, resumed)]
    assert sorted(losses[0]) == [0, 1, 2, 3] and losses[0] == losses[1]
    assert_same_export_weights(straight / "export", resumed / "export")
    meta = json.loads((straight / "export" / "export.json").read_text())
    assert meta["task"] == MV_TASK and meta["stage"] == "multiview"

    out = tmp_path / "samples"
    image = tmp_path / "view0.png"
    from PIL import Image

    from data.demo_data import orbit_first_view

    Image.fromarray(orbit_first_view(5, 0, split="test", size=SIZE)[0]).save(image)
    sample = load_script("sample")
    common = ["--export", str(straight / "export"), "--image", str(image), "--steps", "2", "--out", str(out)]
    assert sample.main([*common, "--elevation", "12.5", "--name", "mv"]) == 0
    assert (out / "mv.mp4").is_file()
    with pytest.raises(ValueError, match="--elevation DEG"):
        sample.main([*common, "--name", "no_elevation"])

    result = tmp_path / "multiview.json"
    evaluate = load_script("evaluate")
    assert evaluate.main(["multiview", "--export", str(straight / "export"), "--data",
                          str(orbit_root / "orbits" / "test" / "*.tar"), "--steps", "2", "--out", str(result),
                          "--quiet"]) == 0  # fmt: skip
    scores = json.loads(result.read_text())
    assert scores["num_orbits"] == 2 and scores["num_views"] == FRAMES and scores["size"] == [SIZE, SIZE]
    for prefix in ("", "input_copy_"):
        assert 0 < scores[f"{prefix}psnr"] < 60 and -1 <= scores[f"{prefix}ssim"] < 1
        assert -1 <= scores[f"{prefix}clip_s"] <= 1


def test_the_full_size_stage_has_the_paper_values():
    cfg = compose_train(["stage=multiview", "data.sources=[{urls: [x.tar]}]"])
    validate(cfg)
    stage = cfg.stage
    assert (stage.num_frames, stage.height, stage.width, stage.max_steps, stage.optim.lr) == (21, 576, 576, 12000, 1e-5)
    assert (stage.sigma.p_mean, stage.sigma.p_std) == (1.0, 1.6)  # not reported: the I2V HQ stage's
    assert stage.init.from_stage == "img2vid_finetune" and cfg.conditioner.task == MV_TASK
    assert unet_spec(cfg).adm_in_channels == 512 and unet_spec(cfg).in_channels == 8
