"""Preemption: a run killed with SIGKILL and resumed (resume=auto) equals the uninterrupted run, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

from train.checkpointing import AtomicCheckpointIO, list_checkpoints, resolve_resume
from train.module import read_metrics

from .conftest import ROOT, assert_same_export_weights, train_subprocess

STEPS, KILL_AFTER_BATCH = 8, 5


def _losses(folder) -> dict[int, float]:
    return {r["batch"]: r["train/loss"] for r in read_metrics(folder / "metrics.jsonl")}


def _final_state(folder) -> dict[str, torch.Tensor]:
    return torch.load(list_checkpoints(folder / "checkpoints")[-1], weights_only=True)["state_dict"]


def test_sigkill_and_resume_equals_the_uninterrupted_run(stage_overrides, tmp_path):
    common = [
        "stage.init.from_stage=null",
        "stage.init.keep=[unet,first_stage,conditioner]",
        f"stage.max_steps={STEPS}",
        "data.num_workers=2",
    ]
    straight = stage_overrides("video_pretrain", *common, "paths.run_name=straight")
    killed = stage_overrides("video_pretrain", *common, "paths.run_name=killed")
    runs = tmp_path / "runs"

    proc = train_subprocess(straight)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out

    proc = train_subprocess(killed)
    metrics = runs / "killed" / "video_pretrain" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and any(r["batch"] >= KILL_AFTER_BATCH for r in read_metrics(metrics))):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stage = runs / "killed" / "video_pretrain"
    assert not (stage / "export").exists()
    resumed_from = resolve_resume("auto", stage / "checkpoints")
    assert resumed_from is not None and resumed_from.name < f"step_{STEPS:09d}"

    proc = train_subprocess(killed)  # resume=auto is the default
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert f"[resume] {resumed_from}" in out

    a, b = _losses(runs / "straight" / "video_pretrain"), _losses(stage)
    assert sorted(a) == sorted(b) == list(range(STEPS))
    assert a == b  # the same loss at every batch: same data, same noise, same weights
    state_a, state_b = _final_state(runs / "straight" / "video_pretrain"), _final_state(stage)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    assert_same_export_weights(runs / "straight" / "video_pretrain" / "export", stage / "export")


SAVER = """
import sys, torch
from train.checkpointing import AtomicCheckpointIO
io = AtomicCheckpointIO()
big = {"w": torch.randn(4_000_000)}
print("ready", flush=True)
i = 0
while True:
    i += 1
    io.save_checkpoint({"i": i, **big}, sys.argv[1])
"""


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_usable(tmp_path):
    path = tmp_path / "step_000000001.ckpt"
    AtomicCheckpointIO().save_checkpoint({"i": 0, "w": torch.zeros(3)}, path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for delay in (0.3, 0.7, 1.1):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = AtomicCheckpointIO().load_checkpoint(path)  # whatever moment the kill hit, the file is complete
        assert isinstance(state["i"], int)
    # Half-written temporaries never count as checkpoints.
    assert list_checkpoints(tmp_path) == [path]
