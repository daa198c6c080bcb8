"""A real stage under DeepSpeed ZeRO-2 / ZeRO-3 with bf16 on CUDA: a few steps, a checkpoint, an export."""

from __future__ import annotations

import pytest
import torch

from models.checkpoints import load_state_dict
from train.run import run

from ..train.conftest import compose_train

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", ["deepspeed_zero2", "deepspeed_zero3"])
def test_a_video_stage_trains_and_exports_under_deepspeed(stage_overrides, tmp_path, strategy):
    overrides = stage_overrides(
        "video_pretrain",
        "stage.init.from_stage=null",
        "stage.init.keep=[unet,first_stage,conditioner]",
        "stage.max_steps=3",
        "trainer=gpu",
        "trainer.devices=1",
        f"strategy={strategy}",
    )
    assert run(compose_train(overrides)) == 0
    stage = tmp_path / "runs" / "demo" / "video_pretrain"
    state = load_state_dict(stage / "export" / "model.safetensors")
    assert state and all(torch.isfinite(v.float()).all() for v in state.values())
    assert any(p.is_dir() for p in (stage / "checkpoints").iterdir())  # DeepSpeed checkpoints are folders
