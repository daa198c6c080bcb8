"""Gradient accumulation (``trainer.accumulate_grad_batches`` / ``data.global_batch_size``, train/accumulation.py).

k micro-batches of b give the gradients and the update of one step of k*b; the optimizer, clipping, the non-finite
check, the lr schedule, the EMA, global_step and the metrics row advance once per k micro-batches; a run with k = 2
preempted (SIGUSR1) and killed (SIGKILL) and resumed equals the uninterrupted run bit for bit, in one process and in
two DDP processes, where only the last micro-batch of a step all-reduces (counted by a DDP comm hook).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from train.accumulation import accumulation_steps
from train.checkpointing import list_checkpoints, resolve_resume
from train.module import LoopSettings, OptimSettings, StageModule, read_metrics
from train.objectives.base import Objective
from train.run import run

from .conftest import ROOT, assert_same_export_weights, compose_train

# ----- k micro-batches == one batch of k*b, on a deterministic objective -------------------------------------------


class _Regression(Objective):
    """A tiny MLP regression: its loss is a mean over the batch and draws no noise, so batches can be split."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))

    def export_module(self) -> nn.Module:
        return self.net

    def forward(self, batch: dict, *, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        error = self.net(batch["x"]).squeeze(-1) - batch["y"]
        return (error**2).mean(), {"abs_error": error.abs().mean().detach()}


def _samples(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 6, generator=g), torch.randn(n, generator=g)
    return [{"x": x[i], "y": y[i], "image_only_indicator": torch.zeros(1)} for i in range(n)]


class _Gradients(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        self.seen.append({name: p.grad.clone() for name, p in pl_module.trainable()})


def _fit(tmp: Path, *, k: int, batch_size: int, steps: int, **loop: object) -> tuple[StageModule, _Gradients]:
    tmp.mkdir()
    module = StageModule(
        _Regression(),
        optim=OptimSettings(lr=0.05, warmup_steps=3),
        loop=LoopSettings(
            accumulate_grad_batches=k, gradient_clip_val=0.2, ema_decay=0.9, metrics_file=str(tmp / "m"), **loop
        ),
        stage_dir=tmp,
    )
    grads = _Gradients()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=pl.loggers.CSVLogger(str(tmp), name="csv", version=""),
        callbacks=[grads],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module, train_dataloaders=DataLoader(_samples(steps * 8), batch_size=batch_size))
    assert trainer.global_step == steps
    return module, grads


def test_k_micro_batches_give_the_gradients_and_update_of_one_batch_of_k_times_b(tmp_path):
    steps = 3
    one, one_grads = _fit(tmp_path / "one", k=1, batch_size=8, steps=steps)
    acc, acc_grads = _fit(tmp_path / "acc", k=4, batch_size=2, steps=steps)
    assert len(one_grads.seen) == len(acc_grads.seen) == steps  # one optimizer step per 4 micro-batches
    for a, b in zip(one_grads.seen, acc_grads.seen, strict=True):  # after clipping, before each step
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)
    for (name, p), (_, q) in zip(one.trainable(), acc.trainable(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6, msg=name)
    ema_one, ema_acc = one.export_state_dict(), acc.export_state_dict()
    for name in ema_one:
        torch.testing.assert_close(ema_acc[name], ema_one[name], rtol=0, atol=1e-6, msg=name)
    assert int(acc.ema.num_updates) == int(one.ema.num_updates) == steps

    rows_one, rows_acc = read_metrics(tmp_path / "one" / "m"), read_metrics(tmp_path / "acc" / "m")
    assert [r["step"] for r in rows_acc] == [r["step"] for r in rows_one] == [1, 2, 3]
    assert [r["batch"] for r in rows_acc] == [3, 7, 11]  # the last micro-batch of each step
    for r, s in zip(rows_one, rows_acc, strict=True):
        for key in ("train/loss", "train/lr", "train/grad_norm"):  # the loss is the mean over the micro-batches
            assert abs(r[key] - s[key]) < 1e-6, (key, r[key], s[key])
    # Lightning's loggers get one row per optimizer step too, numbered by step.
    with open(tmp_path / "acc" / "csv" / "metrics.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [0, 1, 2]


def test_a_nonfinite_micro_batch_skips_its_whole_step(tmp_path):
    module, grads = _fit(tmp_path / "acc", k=2, batch_size=4, steps=3, nonfinite_loss_at=(2,))
    rows = read_metrics(tmp_path / "acc" / "m")
    assert [(r["batch"], r["step"], r["skipped"]) for r in rows] == [
        (1, 1, False),
        (3, 1, True),
        (5, 2, False),
        (7, 3, False),
    ]
    assert rows[-1]["train/nonfinite_skipped"] == 1.0 and len(grads.seen) == 3
    assert int(module.ema.num_updates) == 3


# The stage runs below: k = 2 micro-batches of 1 sample, one loader worker, the tiny model as built.
COMMON = (
    "trainer.accumulate_grad_batches=2",
    "stage.init.from_stage=null",
    "stage.init.keep=[unet,first_stage,conditioner]",
    "data.num_workers=1",
    "data.batch_size=1",
)


# ----- the accumulation a config asks for ---------------------------------------------------------------------------


def test_accumulation_from_the_global_batch_and_its_errors(stage_overrides):
    steps = dict(batch_size=4, world_size=8)
    assert accumulation_steps(accumulate_grad_batches=3, global_batch_size=None, **steps) == 3
    assert accumulation_steps(accumulate_grad_batches=1, global_batch_size=768, **steps) == 24
    assert accumulation_steps(accumulate_grad_batches=24, global_batch_size=768, **steps) == 24
    with pytest.raises(
        ValueError, match=r"data.global_batch_size=100 is not a multiple of .* 4 x 8 = 32; use 96 or 128"
    ):
        accumulation_steps(accumulate_grad_batches=1, global_batch_size=100, **steps)
    with pytest.raises(ValueError, match="accumulate_grad_batches=2 and data.global_batch_size=768 disagree"):
        accumulation_steps(accumulate_grad_batches=2, global_batch_size=768, **steps)
    with pytest.raises(ValueError, match="must be >= 1"):
        accumulation_steps(accumulate_grad_batches=0, global_batch_size=None, **steps)
    # Through a stage run: data.batch_size=2 on one device cannot make a global batch of 3 (before any training).
    with pytest.raises(ValueError, match=r"data.global_batch_size=3 is not a multiple of .* 2 x 1 = 2"):
        run(compose_train(stage_overrides("video_pretrain", *COMMON[1:3], "data.global_batch_size=3")))


# ----- preemption, SIGKILL and resume with k = 2: one process and two DDP ranks ------------------------------------

# Runs a stage (``train.run.run``), one thread per process, with a DDP comm hook that records the batch index of
# every gradient all-reduce; rank 0 prints them. A file, because Lightning starts rank 1 by running it again.
_RUNNER = r"""
import json, sys
import torch
torch.set_num_threads(1)
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
import train.module
from tests.train.conftest import compose_train
from train.run import run

reduced = []

def on_train_start(self):
    model = self.trainer.strategy.model
    if hasattr(model, "register_comm_hook"):
        def hook(state, bucket):
            reduced.append(self.batches_seen - 1)
            return allreduce_hook(state, bucket)
        model.register_comm_hook(None, hook)

train.module.StageModule.on_train_start = on_train_start
code = run(compose_train(json.loads(sys.argv[1])))
if int(__import__("os").environ.get("LOCAL_RANK", 0)) == 0:
    print("ALLREDUCED " + json.dumps(sorted(set(reduced))), flush=True)
sys.exit(code)
"""


def _start(script: Path, overrides: list[str]) -> subprocess.Popen:
    """The run's output goes to a file (``proc.log``): a run waited on later must not block on a full pipe."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    log = script.with_name(f"run-{time.monotonic_ns()}.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(overrides)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # the run, the rank Lightning starts and the loader workers: one group to kill
        )
    proc.log = log
    return proc


def _finish(proc: subprocess.Popen) -> str:
    try:
        proc.wait(timeout=300)
    finally:
        _kill(proc)
    out = proc.log.read_text()
    assert proc.returncode == 0, out
    return out


def _kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _wait_for_row(proc: subprocess.Popen, metrics: Path, *, step: int) -> None:
    deadline = time.monotonic() + 300
    while not (metrics.exists() and any(r["step"] >= step for r in read_metrics(metrics))):
        assert proc.poll() is None, proc.log.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _assert_same_run(a: Path, b: Path, *, steps: int, k: int) -> None:
    rows_a, rows_b = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [r["batch"] for r in rows_b] == [k * s - 1 for s in range(1, steps + 1)]  # one row per optimizer step
    assert [r["step"] for r in rows_b] == list(range(1, steps + 1))
    assert {r["batch"]: r["train/loss"] for r in rows_a} == {r["batch"]: r["train/loss"] for r in rows_b}
    ckpt_a = torch.load(list_checkpoints(a / "checkpoints")[-1], weights_only=True)
    ckpt_b = torch.load(list_checkpoints(b / "checkpoints")[-1], weights_only=True)
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == steps
    assert ckpt_a["stage_loop"]["batches_seen"] == ckpt_b["stage_loop"]["batches_seen"] == steps * k
    for key, value in ckpt_a["state_dict"].items():
        assert torch.equal(value, ckpt_b["state_dict"][key]), key
    assert_same_export_weights(a / "export", b / "export")


def test_k2_preempted_killed_and_resumed_equals_the_uninterrupted_run(stage_overrides, tmp_path):
    steps = 4
    script = tmp_path / "runner.py"
    script.write_text(_RUNNER)
    common = [*COMMON, f"stage.max_steps={steps}"]  # checkpoints every 2 optimizer steps (TINY_RUN)
    straight = tmp_path / "runs" / "straight" / "video_pretrain"
    stage = tmp_path / "runs" / "cut" / "video_pretrain"
    proc_straight = _start(script, stage_overrides("video_pretrain", *common, "paths.run_name=straight"))
    cut = stage_overrides("video_pretrain", *common, "paths.run_name=cut")

    proc = _start(script, cut)  # SIGUSR1 after step 1: a checkpoint at the next step boundary, then a clean stop
    _wait_for_row(proc, stage / "metrics.jsonl", step=1)
    os.kill(proc.pid, signal.SIGUSR1)
    out = _finish(proc)
    assert "[preempted]" in out and not (stage / "export").exists()
    preempted = resolve_resume("auto", stage / "checkpoints")
    assert preempted is not None

    proc = _start(script, cut)  # resumed, then SIGKILLed once step 3 is logged (step 2's checkpoint is the newest)
    _wait_for_row(proc, stage / "metrics.jsonl", step=3)
    _kill(proc)
    proc.wait()
    assert resolve_resume("auto", stage / "checkpoints").name < f"step_{steps:09d}.ckpt"

    out = _finish(_start(script, cut))
    assert "[resume]" in out
    _finish(proc_straight)
    _assert_same_run(straight, stage, steps=steps, k=2)


@pytest.mark.processes
def test_k2_under_two_ddp_ranks_syncs_once_per_step_and_resumes_after_sigkill_bit_for_bit(stage_overrides, tmp_path):
    steps = 3
    script = tmp_path / "runner.py"
    script.write_text(_RUNNER)
    ddp = ["strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.checkpoint_every_n_steps=1"]
    common = [*COMMON, *ddp, f"stage.max_steps={steps}"]
    straight = tmp_path / "runs" / "straight" / "video_pretrain"
    stage = tmp_path / "runs" / "cut" / "video_pretrain"
    out = _finish(_start(script, stage_overrides("video_pretrain", *common, "paths.run_name=straight")))
    # The gradient all-reduce runs in the backward of each step's last micro-batch only.
    allreduced = json.loads(next(line for line in out.splitlines() if line.startswith("ALLREDUCED "))[11:])
    assert allreduced == [1, 3, 5]

    cut = stage_overrides("video_pretrain", *common, "paths.run_name=cut")
    proc = _start(script, cut)
    _wait_for_row(proc, stage / "metrics.jsonl", step=2)
    _kill(proc)
    proc.wait()
    assert not (stage / "export").exists()
    assert resolve_resume("auto", stage / "checkpoints").name < f"step_{steps:09d}.ckpt"
    assert "[resume]" in _finish(_start(script, cut))
    _assert_same_run(straight, stage, steps=steps, k=2)


@pytest.mark.slow  # two 2-rank runs (about 25 s of CPU); tests/train/test_deepspeed_stages.py runs ZeRO-2 in make test
def test_k2_under_deepspeed_zero2_matches_ddp(demo_shards, tmp_path):
    """DeepSpeed's engine gets gradient_accumulation_steps=2, divides the loss itself and steps on every second
    micro-batch: the same losses, gradient norms, lr and EMA updates as DDP with k = 2."""
    pytest.importorskip("deepspeed")
    from .conftest import tiny_stage_overrides
    from .cpu_deepspeed import run_stage

    rows = {}
    for strategy in ("ddp", "deepspeed_zero2_cpu"):
        extra = (*COMMON, "stage.max_steps=3", "trainer.accelerator=cpu", "trainer.devices=2")
        overrides = tiny_stage_overrides(
            "video_pretrain",
            *extra,
            f"strategy.name={strategy}",
            f"paths.run_name={strategy}",
            root=tmp_path / "runs",
            data_root=demo_shards,
        )
        result = run_stage(overrides)
        assert result.returncode == 0, result.output[-3000:]
        assert [r["ema_updates"] for r in result.results] == [[1, 2, 3]] * 2
        rows[strategy] = read_metrics(tmp_path / "runs" / strategy / "video_pretrain" / "metrics.jsonl")
    ddp, ds = rows["ddp"], rows["deepspeed_zero2_cpu"]
    assert [(r["batch"], r["step"]) for r in ds] == [(r["batch"], r["step"]) for r in ddp] == [(1, 1), (3, 2), (5, 3)]
    for a, b in zip(ddp, ds, strict=True):
        for key in ("train/loss", "train/grad_norm", "train/lr"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a[key], b[key])
