"""scripts/evaluate.py end to end, in process: real files, demo shards, a tiny TorchScript I3D, a tiny t2v export."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from data.demo_data import write_demo_dataset
from tests.conftest import load_script
from train.builders import build_objective
from train.config import register_configs
from train.evaluation.clip_metrics import ClipScorer, score_videos
from train.evaluation.video_files import iter_shard_clips, read_video
from train.export import write_export
from train.media import write_mp4

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


def _script() -> ModuleType:
    return load_script("evaluate")


class TinyI3D(nn.Module):
    """The protocol I3D's call signature: (N, 3, T, H, W) in [0, 255] -> (N, 5) features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = nn.functional.interpolate(x, size=(x.shape[2], 16, 16), mode="trilinear", align_corners=False)
        logits = self.fc(torch.tanh(self.conv(x)).mean(dim=(2, 3, 4)))
        return logits if return_features else logits.softmax(dim=-1)


@pytest.fixture(scope="module")
def i3d(tmp_path_factory):
    torch.manual_seed(0)
    module = TinyI3D().eval()
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    return module, path


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, seed=1, num_raw_videos=0, num_clips=6, num_images=0, samples_per_shard=3, size=(64, 48))
    return out / "clips"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("generated")
    g = torch.Generator().manual_seed(0)
    for i in range(5):
        frames = torch.randint(0, 256, (4, 48, 64, 3), generator=g, dtype=torch.uint8)
        write_mp4(frames, folder / f"video_{i}.mp4", fps=8)
    return folder


def _run(argv: list[str], capsys) -> dict:
    assert _script().main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1])


def _expected_fvd(module: nn.Module, gen: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    # Independent of train.evaluation.frechet: np.cov and the trace of sqrtm(S1 S2) from the general eigensolver.
    def feats(videos):
        x = torch.stack(videos).permute(0, 2, 1, 3, 4).float()  # (N, T, 3, H, W) -> (N, 3, T, H, W)
        return module(x, rescale=True, resize=True, return_features=True).double().detach().numpy()

    a, b = feats(gen), feats(ref)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    tr = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)


def test_fvd_of_generated_files_against_shards(i3d, shards, generated, tmp_path, capsys):
    module, path = i3d
    out = tmp_path / "fvd.json"
    argv = [
        "fvd",
        "--generated",
        str(generated),
        "--reference-shards",
        str(shards / "*.tar"),
        "--i3d",
        str(path),
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    result = _run(argv, capsys)
    assert result["num_generated"] == 5 and result["num_reference"] == 6 and result["num_frames"] == 4
    assert result["size"] == [48, 64] and result["extractor"] == "i3d"
    assert json.loads(out.read_text()) == result
    gen = [read_video(p)[0] for p in sorted(generated.glob("*.mp4"))]
    ref = list(iter_shard_clips([str(shards / "*.tar")], num_frames=4, size=(48, 64)))
    assert result["fvd"] == pytest.approx(_expected_fvd(module, gen, ref), rel=1e-6)


def test_a_set_against_itself_is_zero_and_reference_stats_are_cached(i3d, generated, tmp_path, capsys):
    stats = tmp_path / "ref.npz"
    argv = [
        "fvd",
        "--generated",
        str(generated),
        "--reference-dir",
        str(generated),
        "--i3d",
        str(i3d[1]),
        "--reference-stats",
        str(stats),
        "--quiet",
    ]
    assert _run(argv, capsys)["fvd"] == pytest.approx(0.0, abs=1e-6)
    assert stats.exists()
    # The cached statistics are used as they are: a reference folder that no longer exists is not read.
    assert argv[3] == "--reference-dir"
    cached = _run([*argv[:4], str(tmp_path / "gone"), *argv[5:]], capsys)
    assert cached["fvd"] == pytest.approx(0.0, abs=1e-6)


def test_clip_features_give_a_clip_space_distance(generated, shards, capsys):
    argv = [
        "fvd",
        "--generated",
        str(generated),
        "--reference-shards",
        str(shards / "*.tar"),
        "--features",
        "clip",
        "--clip-arch",
        "tiny",
        "--quiet",
    ]
    result = _run(argv, capsys)
    assert "fvd" not in result and result["fd_clip"] > 0 and result["extractor"] == "clip"


def test_clip_scores_with_prompts(generated, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    names = [f"video_{i}.mp4" for i in range(5)]
    texts = [f"a video of {i} cats" for i in range(5)]
    prompts.write_text("".join(json.dumps({"video": n, "prompt": t}) + "\n" for n, t in zip(names, texts, strict=True)))
    per_video = tmp_path / "per_video.jsonl"
    argv = [
        "clip",
        "--generated",
        str(generated),
        "--prompts",
        str(prompts),
        "--clip-arch",
        "tiny",
        "--per-video",
        str(per_video),
        "--seed",
        "3",
    ]
    result = _run(argv, capsys)
    torch.manual_seed(3)
    expected = score_videos(ClipScorer.build("tiny"), [read_video(generated / n)[0] for n in names], prompts=texts)
    assert result["clipsim"] == pytest.approx(expected.summary()["clipsim"], abs=1e-6)
    assert result["clip_consistency"] == pytest.approx(expected.summary()["clip_consistency"], abs=1e-6)
    rows = [json.loads(line) for line in per_video.read_text().splitlines()]
    assert [r["clipsim"] for r in rows] == pytest.approx(expected.clipsim, abs=1e-6)


def test_errors_say_what_to_give(i3d, generated, tmp_path, capsys):
    script = _script()
    base = ["fvd", "--generated", str(generated), "--reference-dir", str(generated)]
    with pytest.raises(SystemExit):
        script.main(base)
    assert "needs --i3d PATH" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no I3D file.*i3d_torchscript.pt"):
        script.main([*base, "--i3d", str(tmp_path / "missing.pt")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="set is empty"):
        script.main(
            [
                "fvd",
                "--generated",
                str(generated),
                "--reference-dir",
                str(tmp_path / "empty"),
                "--i3d",
                str(i3d[1]),
                "--quiet",
            ]
        )
    mixed = tmp_path / "mixed"
    write_mp4(torch.zeros(4, 48, 64, 3, dtype=torch.uint8), mixed / "a.mp4", fps=8)
    write_mp4(torch.zeros(6, 48, 64, 3, dtype=torch.uint8), mixed / "b.mp4", fps=8)
    with pytest.raises(ValueError, match="6 frames, others 4"):
        script.main(
            ["fvd", "--generated", str(mixed), "--reference-dir", str(generated), "--i3d", str(i3d[1]), "--quiet"]
        )


# ----- ucf101 ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t2v_export(tmp_path_factory) -> Path:
    register_configs()
    overrides = ["stage=video_pretrain", "experiment=demo", "stage.height=32", "stage.width=32", "stage.num_frames=4"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(0)
    objective = build_objective(cfg)
    meta = {
        "stage": "video_pretrain",
        "objective": "diffusion",
        "task": "t2v",
        "step": 0,
        "num_frames": 4,
        "height": 32,
        "width": 32,
    }
    folder = tmp_path_factory.mktemp("run") / "export"
    return write_export(folder, objective.export_module().state_dict(), config=cfg, meta=meta)


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("UCF-101")
    g = torch.Generator().manual_seed(1)
    for name, n in (("ApplyEyeMakeup", 2), ("YoYo", 1)):
        for k in range(n):
            frames = torch.randint(0, 256, (8, 240, 320, 3), generator=g, dtype=torch.uint8)
            write_mp4(frames, root / name / f"v_{name}_g{k + 1:02d}_c01.mp4", fps=25)
    return root


def test_ucf101_generates_the_plan_and_parts_give_the_same_fvd(t2v_export, ucf_root, i3d, tmp_path, capsys):
    common = [
        "ucf101",
        "--ucf-root",
        str(ucf_root),
        "--i3d",
        str(i3d[1]),
        "--num-videos",
        "3",
        "--num-frames",
        "4",
        "--height",
        "32",
        "--width",
        "32",
        "--steps",
        "2",
        "--seed",
        "5",
        "--batch-size",
        "1",
        "--quiet",
    ]
    whole = _run([*common, "--export", str(t2v_export)], capsys)
    assert whole["num_generated"] == 3 and whole["num_reference"] == 3 and whole["cfg"] == 7.0
    assert np.isfinite(whole["fvd"]) and whole["fvd"] > 0 and whole["skipped_real"] == {}
    work = ["--work-dir", str(tmp_path / "work"), "--parts", "2"]
    for k in range(2):
        part = _run([*common, "--export", str(t2v_export), *work, "--part", str(k)], capsys)
        assert part["num_generated"] == (2 if k == 0 else 1)
    combined = _run([*common, *work], capsys)  # no --export: features come from the parts
    assert combined["fvd"] == whole["fvd"]  # one video per I3D call both ways: the same features
    with pytest.raises(ValueError, match="3 parts are missing"):
        _script().main([*common, "--work-dir", str(tmp_path / "work"), "--parts", "3"])


def test_short_reference_videos_are_skipped_and_counted(i3d, generated, tmp_path, capsys):
    ref = tmp_path / "ref"
    for i, path in enumerate(sorted(generated.glob("*.mp4"))[:3]):
        (ref / "sub").mkdir(parents=True, exist_ok=True)
        (ref / "sub" / f"{i}.mp4").write_bytes(path.read_bytes())
    write_mp4(torch.zeros(2, 48, 64, 3, dtype=torch.uint8), ref / "short.mp4", fps=8)
    argv = ["fvd", "--generated", str(generated), "--reference-dir", str(ref), "--i3d", str(i3d[1]), "--quiet"]
    result = _run(argv, capsys)
    assert result["num_reference"] == 3 and result["skipped_reference"] == {"too_few_frames": 1}
