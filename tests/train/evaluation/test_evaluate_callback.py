"""The EvaluateVideos callback in a real (tiny) stage run on demo shards: metrics reach the CSV log and the jsonl."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from train.callbacks.evaluate_videos import EVAL_FILE, EvaluateVideos
from train.run import run

from ..conftest import compose_train

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


class TinyI3D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        x = x / 127.5 - 1.0 if rescale else x
        logits = self.fc(x.mean(dim=(2, 3, 4)))  # (N, 3, T, H, W) -> (N, 4)
        return logits if return_features else logits.softmax(dim=-1)


def test_a_stage_run_logs_clip_scores_and_fvd(stage_overrides, demo_shards, tmp_path):
    i3d = tmp_path / "i3d_torchscript.pt"
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(TinyI3D()), str(i3d))
    overrides = stage_overrides(
        "video_pretrain",
        "stage.init.from_stage=null",
        "stage.init.keep=[unet,first_stage,conditioner]",
        "stage.max_steps=2",
        "logger.evaluation.every_n_steps=1",
        "logger.evaluation.prompts=[a red ball bounces]",
        "logger.evaluation.videos_per_prompt=2",
        "logger.evaluation.num_steps=2",
        "logger.evaluation.clip_arch=tiny",
        "logger.evaluation.features=i3d",
        f"logger.evaluation.i3d_path={i3d}",
        f"logger.evaluation.reference=[{demo_shards}/clips/*.tar]",
        "logger.evaluation.num_reference=4",
    )
    assert run(compose_train(overrides)) == 0
    stage = tmp_path / "runs" / "demo" / "video_pretrain"
    rows = [json.loads(line) for line in (stage / EVAL_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # every step; the end of training is step 2 again: no repeat
    for row in rows:
        assert set(row) == {"step", "eval/clipsim", "eval/clip_consistency", "eval/fvd"}
        assert -1 <= row["eval/clipsim"] <= 1 and -1 <= row["eval/clip_consistency"] <= 1
        assert math.isfinite(row["eval/fvd"]) and row["eval/fvd"] >= 0
    with open(stage / "logs" / "csv" / "metrics.csv") as f:
        logged = [r for r in csv.DictReader(f) if r.get("eval/fvd")]
    assert [int(r["step"]) for r in logged] == [1, 2]
    assert float(logged[0]["eval/clipsim"]) == pytest.approx(rows[0]["eval/clipsim"], rel=1e-6)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="choose one of none, i3d, clip"):
        EvaluateVideos(1, features="fid")
    with pytest.raises(ValueError, match="needs i3d_path"):
        EvaluateVideos(1, features="i3d", reference=["x.tar"])
    with pytest.raises(ValueError, match="needs reference"):
        EvaluateVideos(1, features="clip")
    with pytest.raises(ValueError, match="positive"):
        EvaluateVideos(0)
