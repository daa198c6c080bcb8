"""A NaN gradient under DeepSpeed ZeRO-2: the engine skips the update itself, and the stage loop must count the step
and advance nothing else (lr schedule, EMA, optimizer-step count), the contract of the other strategies.

The run is a real stage (``train.run.run``) under a real ZeRO-2 engine on DeepSpeed's CPU accelerator (gloo), in a
subprocess so that its accelerator choice and process group are its own. Lightning's ``DeepSpeedStrategy`` insists on
CUDA; ``CpuDeepSpeedStrategy`` (in the script) lifts exactly those checks and gives the root device the local rank as
its index, which DeepSpeed reads as its device rank.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from .conftest import NONFINITE_GRAD_RUN, ROOT, assert_nonfinite_grad_step_skipped

_RUN_STAGE_UNDER_CPU_DEEPSPEED = r"""
import json
import sys

import deepspeed
import deepspeed.comm.torch as ds_comm
import torch
from deepspeed.runtime.engine import DeepSpeedEngine
from deepspeed.utils import groups
from pytorch_lightning.strategies.ddp import DDPStrategy

import train.module
import train.strategies
from tests.train.conftest import compose_train
from train.run import run

# The shared-memory allreduce op is only for multi-rank CPU runs; skipping it avoids a C++ JIT build.
ds_comm.build_shm_op = lambda: None


def broadcast_model(self):
    # DeepSpeed 0.19.8 broadcasts every parameter as bytes (p.data.view(torch.uint8)), which fails on a 0-dim one
    # (the CLIP tower's frozen logit_scale); a 1-dim view of the same storage broadcasts it.
    for p in self.module.parameters():
        deepspeed.comm.broadcast(p.data.view(-1), groups._get_broadcast_src_rank(), group=self.seq_data_parallel_group)


DeepSpeedEngine._broadcast_model = broadcast_model


class CpuDeepSpeedStrategy(train.strategies.AtomicDeepSpeedStrategy):
    def setup_environment(self):
        DDPStrategy.setup_environment(self)  # DeepSpeedStrategy's own refuses a non-CUDA accelerator

    def setup_distributed(self):
        train.strategies.DeepSpeedStrategy.set_world_ranks(self)  # no CUDA device-index check
        self._init_deepspeed_distributed()

    @property
    def root_device(self):
        return torch.device("cpu", self.local_rank)


train.strategies._uses_cuda = lambda accelerator: True
train.strategies.AtomicDeepSpeedStrategy = CpuDeepSpeedStrategy

ema_update = train.module.EMA.update
ema_updates = []


def counting_update(self, named_params):
    ema_update(self, named_params)
    ema_updates.append(int(self.num_updates))


train.module.EMA.update = counting_update
code = run(compose_train(json.loads(sys.argv[1])))
print("RESULT " + json.dumps({"code": code, "ema_updates": ema_updates}), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("devices", [1, 2])
def test_a_nonfinite_gradient_under_deepspeed_zero2_is_counted_and_advances_nothing(stage_overrides, tmp_path, devices):
    pytest.importorskip("deepspeed")
    script = tmp_path / "run_stage_under_cpu_deepspeed.py"  # a file: Lightning starts rank 1 by running it again
    script.write_text(_RUN_STAGE_UNDER_CPU_DEEPSPEED)
    overrides = stage_overrides(
        "video_pretrain",
        "strategy=deepspeed_zero2",
        "trainer.accelerator=cpu",
        f"trainer.devices={devices}",
        "stage.init.from_stage=null",
        "stage.init.keep=[unet,first_stage,conditioner]",
        *NONFINITE_GRAD_RUN,
    )
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "DS_ACCELERATOR": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(overrides)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = proc.stdout + proc.stderr
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and len(results) == devices, out[-4000:]  # rank 1 writes to rank 0's stdout
    for line in results:
        result = json.loads(line.removeprefix("RESULT "))
        assert result["code"] == 0, out[-4000:]
        assert result["ema_updates"] == [1, 2, 3]  # three applied steps of four batches, on every rank
    folder = tmp_path / "runs" / "demo" / "video_pretrain"
    assert_nonfinite_grad_step_skipped(folder)
    shards = list(folder.glob("checkpoints/*.ckpt/checkpoint/*optim_states.pt"))
    assert len(shards) == 2 * devices, shards  # ZeRO-2 partitions: one optimizer shard per rank and checkpoint
