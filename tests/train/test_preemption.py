"""SIGUSR1 (SLURM's preemption / time-limit warning): checkpoint at the end of the step, stop, no export; the
resumed run (resume=auto) equals an uninterrupted one."""

from __future__ import annotations

import signal
import time

import torch

from train.checkpointing import list_checkpoints
from train.module import read_metrics

from .conftest import train_subprocess

STEPS = 6


def test_sigusr1_checkpoints_stops_and_the_resumed_run_matches(stage_overrides, tmp_path):
    common = [
        "stage.init.from_stage=null",
        "stage.init.keep=[unet,first_stage,conditioner]",
        f"stage.max_steps={STEPS}",
        "trainer.checkpoint_every_n_steps=100",  # only the preemption checkpoint
        "data.num_workers=1",
    ]
    runs = tmp_path / "runs"
    proc = train_subprocess(stage_overrides("video_pretrain", *common, "paths.run_name=straight"))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out

    proc = train_subprocess(stage_overrides("video_pretrain", *common, "paths.run_name=pre"))
    stage = runs / "pre" / "video_pretrain"
    deadline = time.monotonic() + 600
    while not ((stage / "metrics.jsonl").exists() and len(read_metrics(stage / "metrics.jsonl")) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "[preempted]" in out and not (stage / "export").exists()
    saved = list_checkpoints(stage / "checkpoints")
    assert len(saved) == 1 and saved[0].name < f"step_{STEPS:09d}"

    proc = train_subprocess(stage_overrides("video_pretrain", *common, "paths.run_name=pre"))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and f"[resume] {saved[0]}" in out, out
    a = {r["batch"]: r["train/loss"] for r in read_metrics(runs / "straight" / "video_pretrain" / "metrics.jsonl")}
    b = {r["batch"]: r["train/loss"] for r in read_metrics(stage / "metrics.jsonl")}
    assert a == b and sorted(a) == list(range(STEPS))
    final_a = torch.load(list_checkpoints(runs / "straight" / "video_pretrain" / "checkpoints")[-1], weights_only=True)
    final_b = torch.load(list_checkpoints(stage / "checkpoints")[-1], weights_only=True)
    for key, value in final_a["state_dict"].items():
        assert torch.equal(value, final_b["state_dict"][key]), key
