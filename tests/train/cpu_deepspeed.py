"""Test support, not product code: real stages under real DeepSpeed ZeRO engines on DeepSpeed's CPU accelerator.

DeepSpeed runs its ZeRO-2 and ZeRO-3 engines on CPU (``DS_ACCELERATOR=cpu``, gloo); Lightning's ``DeepSpeedStrategy``
insists on CUDA. ``CpuDeepSpeedStrategy`` lifts exactly those checks (the accelerator type in ``setup_environment``,
the CUDA device-index check in ``setup_distributed``) and gives the root device the local rank as its index, which
DeepSpeed reads as its device rank. It is registered as the TEST-ONLY strategies ``deepspeed_zero2_cpu`` and
``deepspeed_zero3_cpu`` (the specs of ``deepspeed_zero2``/``deepspeed_zero3`` with this class) by
``register_cpu_deepspeed_strategies``, which only this module's stage runner calls: nothing in the product or in
``make test``'s own process sees them.

``run_stage(overrides)`` trains one stage in a fresh process group: ``python -m tests.train.cpu_deepspeed <json>``
(Lightning starts rank 1 by running the same command again), which registers the strategies, counts EMA updates and
prints one ``RESULT {...}`` line per rank. ``kill_at_save_step=k`` SIGKILLs the whole run (every rank and loader
worker) while the checkpoint of step k exists only under its temporary name: every rank has written its shards, the
rename has not happened.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import torch

from train.strategies import AtomicDeepSpeedStrategy, DeepSpeedStrategy, build_deepspeed
from train.strategy_registry import STRATEGY_SPECS, StrategyOptions, get_strategy, register_strategy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_STRATEGIES = {"deepspeed_zero2_cpu": 2, "deepspeed_zero3_cpu": 3}
_RESULT = "RESULT "


class CpuDeepSpeedStrategy(AtomicDeepSpeedStrategy):
    """``AtomicDeepSpeedStrategy`` without Lightning's CUDA checks (tests only, on DeepSpeed's CPU accelerator)."""

    requires_cuda = False

    def setup_environment(self) -> None:
        # DeepSpeedStrategy's own refuses a non-CUDA accelerator; the DDP parent's sets up the same environment.
        super(DeepSpeedStrategy, self).setup_environment()

    def setup_distributed(self) -> None:
        DeepSpeedStrategy.set_world_ranks(self)  # without _validate_device_index_selection (CUDA indices)
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", self.local_rank)


def register_cpu_deepspeed_strategies() -> None:
    """Register ``deepspeed_zero2_cpu`` and ``deepspeed_zero3_cpu`` (idempotent)."""
    for name, stage in CPU_STRATEGIES.items():
        if name in STRATEGY_SPECS:
            continue

        def build(options: StrategyOptions, stage: int = stage) -> CpuDeepSpeedStrategy:
            return build_deepspeed(stage, strategy_class=CpuDeepSpeedStrategy, **options.keywords())

        register_strategy(dataclasses.replace(get_strategy(f"deepspeed_zero{stage}"), name=name, build=build))


def _kill_run_at_save(step: int) -> None:
    """SIGKILL this run's process group when rank 0 is about to rename the finished checkpoint of ``step``."""
    import train.strategies

    if os.getsid(0) != os.getpgrp():
        raise RuntimeError("kill_at_save_step needs the run in its own session (run_stage starts it so)")
    rename = train.strategies.replace_path

    def replace_path(tmp: Any, final: Any) -> None:
        if os.path.basename(str(final)) == f"step_{step:09d}.ckpt":
            os.killpg(os.getpgrp(), signal.SIGKILL)
        rename(tmp, final)

    train.strategies.replace_path = replace_path


def main(argv: list[str]) -> int:
    import deepspeed.comm.torch as ds_comm

    import train.module
    from tests.train.conftest import compose_train
    from train.run import run

    torch.set_num_threads(1)
    # DeepSpeed's shared-memory allreduce op is a C++ JIT build; gloo does the same collectives without one.
    ds_comm.build_shm_op = lambda: None
    register_cpu_deepspeed_strategies()
    args = json.loads(argv[0])
    if args.get("kill_at_save_step") is not None:
        _kill_run_at_save(int(args["kill_at_save_step"]))

    ema_update = train.module.EMA.update
    ema_updates: list[int] = []

    def counting_update(self: Any, named_params: Any) -> None:
        ema_update(self, named_params)
        ema_updates.append(int(self.num_updates))

    train.module.EMA.update = counting_update
    code = run(compose_train(args["overrides"]))
    print(_RESULT + json.dumps({"code": code, "ema_updates": ema_updates}), flush=True)
    return code


@dataclasses.dataclass
class StageRun:
    returncode: int
    output: str
    results: list[dict[str, Any]]  # the RESULT of every rank that finished


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_stage(overrides: list[str], *, kill_at_save_step: int | None = None, timeout_s: int = 240) -> StageRun:
    """Train a stage in its own session, one thread per process; the whole process group is killed afterwards,
    so a hung rank or loader worker never outlives the call."""
    env = os.environ | {
        "PYTHONPATH": ROOT,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "DS_ACCELERATOR": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    payload = json.dumps({"overrides": list(overrides), "kill_at_save_step": kill_at_save_step})
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.train.cpu_deepspeed", payload],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out += f"\n[timeout] the run took over {timeout_s} s and was killed"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    results = [json.loads(line[len(_RESULT) :]) for line in out.splitlines() if line.startswith(_RESULT)]
    return StageRun(proc.returncode, out, results)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
