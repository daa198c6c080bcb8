"""scripts/sample.py end to end, in process: a tiny saved official-layout checkpoint -> MP4 + GIF."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import av
import pytest
import torch
from PIL import Image

from models.checkpoints import OfficialCheckpointModel, save_state_dict
from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[2]
H, W, T = 16, 24, 2


def _script() -> ModuleType:
    return load_script("sample")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = OfficialCheckpointModel("svd", sizes=_script().tiny_sizes())
    path = tmp_path_factory.mktemp("ckpt") / "svd_tiny.safetensors"
    save_state_dict(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "cond.png"
    pixels = torch.randint(0, 256, (20, 30, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)
    return path


def _argv(checkpoint: Path, image: Path, out: Path, *extra: str) -> list[str]:
    sizes = ["--num-frames", str(T), "--height", str(H), "--width", str(W), "--steps", "2"]
    return ["--checkpoint", str(checkpoint), "--variant", "svd", "--tiny", "--image", str(image), *sizes,
            "--out", str(out), *extra]  # fmt: skip


def test_official_checkpoint_samples_an_mp4_and_a_gif(tmp_path, checkpoint, image, capsys):
    assert _script().main(_argv(checkpoint, image, tmp_path, "--seed", "3", "--fps", "6")) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-1] == str(tmp_path / "cond_seed3.gif")
    with av.open(str(tmp_path / "cond_seed3.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert float(container.streams.video[0].average_rate) == 6.0
    assert len(frames) == T and frames[0].shape == (H, W, 3)
    with Image.open(tmp_path / "cond_seed3.gif") as gif:
        assert gif.n_frames == T and gif.size == (W, H)


def test_same_seed_same_file_name_and_frames(tmp_path, checkpoint, image):
    script = _script()
    for out in ("a", "b"):
        script.main(_argv(checkpoint, image, tmp_path / out, "--name", "clip", "--max-cfg", "3.0"))
    with Image.open(tmp_path / "a" / "clip.gif") as a, Image.open(tmp_path / "b" / "clip.gif") as b:
        assert a.tobytes() == b.tobytes()


def test_bad_arguments_are_refused(tmp_path, checkpoint, image, capsys):
    script = _script()
    with pytest.raises(SystemExit):
        script.parse_args(["--checkpoint", str(checkpoint), "--out", str(tmp_path)])
    assert "--checkpoint needs --variant" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(["--out", str(tmp_path)])
    with pytest.raises(ValueError, match="latent grid"):
        script.main(_argv(checkpoint, image, tmp_path, "--height", "18"))
    with pytest.raises(ValueError, match="another variant"):
        script.main([*_argv(checkpoint, image, tmp_path)[:2], "--variant", "svd_image_decoder",
                     *_argv(checkpoint, image, tmp_path)[4:]])  # fmt: skip


def test_presets_follow_the_recipe():
    presets = _script().PRESETS
    assert (presets["svd"].num_frames, presets["svd"].num_steps, presets["svd"].max_cfg) == (14, 25, 2.5)
    assert (presets["svd_xt"].num_frames, presets["svd_xt"].num_steps, presets["svd_xt"].min_cfg) == (25, 30, 1.5)


def test_flag_defaults_are_the_generation_settings(tmp_path):
    from train.config import GenerationSettings

    script = _script()
    args = script.parse_args(["--export", str(tmp_path), "--out", str(tmp_path)])
    assert script.generation_settings(args, script.PRESETS["svd"]) == GenerationSettings()  # svd's are the defaults
    args = script.parse_args(["--export", str(tmp_path), "--out", str(tmp_path), "--fps", "4", "--seed", "3"])
    xt = script.generation_settings(args, script.PRESETS["svd_xt"])
    assert (xt.num_steps, xt.min_cfg, xt.max_cfg, xt.fps_id, xt.seed) == (30, 1.5, 3.0, 3, 3)


def test_export_path_uses_the_stage_size_and_task(tmp_path, checkpoint, image, monkeypatch):
    # A stand-in for train.export.load_export (the real one is tested with the export code).
    from types import SimpleNamespace

    from models.checkpoints import load_official_checkpoint
    from models.diffusion import Denoiser, VScalingWithEDMcNoise
    from models.latent_diffusion import LatentDiffusion

    loaded = load_official_checkpoint(checkpoint, variant="svd", sizes=_script().tiny_sizes())
    model = LatentDiffusion(unet=loaded.unet, first_stage=loaded.first_stage, conditioner=loaded.conditioner)
    export = SimpleNamespace(
        model=model, denoiser=Denoiser(VScalingWithEDMcNoise()), task="i2v", num_frames=3, height=8, width=12
    )
    seen = []
    fake = ModuleType("train.export")
    fake.load_export = lambda path, device: seen.append((path, device)) or export
    monkeypatch.setitem(sys.modules, "train.export", fake)
    argv = ["--export", str(tmp_path / "export"), "--image", str(image), "--steps", "2", "--out", str(tmp_path)]
    assert _script().main(argv) == 0
    assert seen == [(tmp_path / "export", torch.device("cpu"))]
    with Image.open(tmp_path / "cond_seed0.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (12, 8)


def test_a_real_stage_export_samples_at_its_training_size(tmp_path, image):
    from hydra import compose, initialize_config_dir

    from train.builders import build_objective
    from train.config import register_configs
    from train.export import write_export

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=["stage=img2vid_finetune", "experiment=demo"])
    objective = build_objective(cfg)
    folder = tmp_path / "export"
    write_export(folder, objective.export_module().state_dict(), config=cfg, meta={"objective": "diffusion"})
    argv = ["--export", str(folder), "--image", str(image), "--steps", "2", "--num-frames", "2", "--out", str(tmp_path)]
    assert _script().main(argv) == 0
    with Image.open(tmp_path / "cond_seed0.gif") as gif:
        assert gif.n_frames == 2 and gif.size == (cfg.stage.width, cfg.stage.height)
