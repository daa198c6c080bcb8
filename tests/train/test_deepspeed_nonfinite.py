"""A NaN gradient under DeepSpeed ZeRO-2: the engine skips the update itself, and the stage loop must count the step
and advance nothing else (lr schedule, EMA, optimizer-step count), the contract of the other strategies.

The run is a real stage (``train.run.run``) under a real ZeRO-2 engine on DeepSpeed's CPU accelerator (gloo), in a
process group of its own, through the test-only strategy ``deepspeed_zero2_cpu`` (``tests/train/cpu_deepspeed.py``).
One process here; two processes (ZeRO-2 and ZeRO-3, the same fault, checked against the DDP run) are
``test_deepspeed_stages.py``.
"""

from __future__ import annotations

import pytest

from .conftest import NONFINITE_GRAD_RUN, assert_nonfinite_grad_step_skipped
from .cpu_deepspeed import run_stage


def test_a_nonfinite_gradient_under_deepspeed_zero2_is_counted_and_advances_nothing(stage_overrides, tmp_path):
    pytest.importorskip("deepspeed")
    overrides = stage_overrides(
        "video_pretrain",
        "strategy.name=deepspeed_zero2_cpu",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "stage.init.from_stage=null",
        "stage.init.keep=[unet,first_stage,conditioner]",
        *NONFINITE_GRAD_RUN,
    )
    run = run_stage(overrides, timeout_s=300)
    assert run.returncode == 0 and [r["code"] for r in run.results] == [0], run.output[-4000:]
    assert run.results[0]["ema_updates"] == [1, 2, 3]  # three applied steps of four batches
    folder = tmp_path / "runs" / "demo" / "video_pretrain"
    assert_nonfinite_grad_step_skipped(folder)
    shards = list(folder.glob("checkpoints/*.ckpt/checkpoint/*optim_states.pt"))
    assert len(shards) == 2, shards  # one optimizer shard per checkpoint (steps 2 and 3)
