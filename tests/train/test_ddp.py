"""Two DDP processes on CPU (gloo): each rank streams its own shards, the checkpoint holds the stream positions of
both ranks, and a run killed with SIGKILL and resumed (resume=auto) equals the uninterrupted run, bit for bit.

Lightning's DDP launcher starts rank 1 by re-running ``python -m train`` as a child of rank 0, so the run is started
in its own session and killed as a process group (rank 0, rank 1 and their loader workers together).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from data.loader import build_stream
from train.builders import dataset_config
from train.checkpointing import list_checkpoints, resolve_resume
from train.datamodule import StreamDataModule
from train.module import read_metrics

from .conftest import (
    NONFINITE_GRAD_RUN,
    assert_nonfinite_grad_step_skipped,
    assert_same_export_weights,
    compose_train,
    train_subprocess,
)

WORLD = 2
DDP = (
    "strategy=ddp",
    "trainer.accelerator=cpu",
    f"trainer.devices={WORLD}",
    "stage.init.from_stage=null",
    "stage.init.keep=[unet,first_stage,conditioner]",
    "data.num_workers=1",
)
STEPS, KILL_AFTER_BATCH = 6, 3


def _run(overrides: list[str]) -> str:
    proc = train_subprocess(overrides, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        _kill_group(proc.pid)  # a hung rank or worker must not outlive the test
    assert proc.returncode == 0, out
    return out


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _losses(folder: Path) -> dict[int, float]:
    rows = read_metrics(folder / "metrics.jsonl")
    batches = [r["batch"] for r in rows]
    assert len(batches) == len(set(batches)), f"metrics written more than once per batch: {batches}"
    return {r["batch"]: r["train/loss"] for r in rows}


def _checkpoint(folder: Path) -> dict:
    return torch.load(list_checkpoints(folder / "checkpoints")[-1], weights_only=True)


def _consumed_keys(overrides: list[str], positions: dict[str, int]) -> dict[int, list[str]]:
    """The keys each rank's worker yielded up to its saved position, replayed from the same stream config."""
    cfg = compose_train(overrides)
    keys: dict[int, list[str]] = {}
    for rank in range(WORLD):
        stream = build_stream(dataset_config(cfg, seed=cfg.seed), rank=rank, world_size=WORLD)
        samples = stream.iter_worker(0, num_workers=1)
        last = positions[str(rank)]  # one loader worker per rank: global worker g is rank g
        keys[rank] = []
        for sample in samples:
            keys[rank].append(sample["key"])
            if sample["_stream"]["index"] == last:
                break
    return keys


def _check_both_ranks_streamed_their_own_shards(checkpoint: dict, overrides: list[str], *, steps: int) -> None:
    state = checkpoint[StreamDataModule.__qualname__]  # Lightning keys the datamodule state by its class qualname
    assert state["workers"] == WORLD
    samples_per_rank = steps * 2  # data.batch_size=2 on every rank
    assert state["positions"] == {str(g): samples_per_rank - 1 for g in range(WORLD)}  # all-gathered from both
    assert set(state["next_worker"]) == {str(r) for r in range(WORLD)}
    assert {g: s["samples_yielded"] for g, s in state["stats"].items()} == {
        str(g): samples_per_rank for g in range(WORLD)
    }

    # demo_shards has 6 clips in 2 shards of 3: in every pass over the clips each rank reads one shard, so the two
    # ranks' samples of a pass are disjoint and together are all the clips.
    clips, per_rank = 6, 3
    keys = _consumed_keys(overrides, state["positions"])
    assert [len(k) for k in keys.values()] == [samples_per_rank] * WORLD
    for start in range(0, samples_per_rank, per_rank):
        a, b = set(keys[0][start : start + per_rank]), set(keys[1][start : start + per_rank])
        assert not a & b, (start, keys)
        if start + per_rank <= samples_per_rank:
            assert len(a | b) == clips, (start, keys)


@pytest.mark.processes
def test_two_ddp_ranks_stream_their_own_shards_and_resume_after_sigkill_bit_for_bit(stage_overrides, tmp_path):
    # No shuffle buffer, so each pass over the clips is a contiguous block of every worker's stream (the shuffle
    # buffer's replay on resume is covered by test_resume.py).
    common = [*DDP, f"stage.max_steps={STEPS}", "data.shuffle_buffer=0"]
    straight = stage_overrides("video_pretrain", *common, "paths.run_name=straight")
    killed = stage_overrides("video_pretrain", *common, "paths.run_name=killed")
    runs = tmp_path / "runs"

    _run(straight)
    done = runs / "straight" / "video_pretrain"
    assert (done / "export" / "model.safetensors").exists()
    ckpt_a = _checkpoint(done)
    assert ckpt_a["global_step"] == STEPS
    _check_both_ranks_streamed_their_own_shards(ckpt_a, straight, steps=STEPS)

    proc = train_subprocess(killed, start_new_session=True)
    stage = runs / "killed" / "video_pretrain"
    metrics = stage / "metrics.jsonl"
    deadline = time.monotonic() + 300
    try:
        while not (metrics.exists() and any(r["batch"] >= KILL_AFTER_BATCH for r in read_metrics(metrics))):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        _kill_group(proc.pid)  # rank 0, the rank-1 process it launched, and every loader worker
    proc.wait()
    proc.stdout.close()
    assert not (stage / "export").exists()
    resumed_from = resolve_resume("auto", stage / "checkpoints")
    assert resumed_from is not None and resumed_from.name < f"step_{STEPS:09d}"

    out = _run(killed)  # resume=auto is the default
    assert f"[resume] {resumed_from}" in out

    a, b = _losses(done), _losses(stage)  # rank 0 alone writes the metrics, once per batch
    assert sorted(a) == sorted(b) == list(range(STEPS))
    assert a == b  # rank 0's loss at every batch; it depends on rank 1 through the averaged gradients
    ckpt_b = _checkpoint(stage)
    state_a, state_b = ckpt_a["state_dict"], ckpt_b["state_dict"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    # Each rank continued its own stream from its own saved position.
    qualname = StreamDataModule.__qualname__
    assert ckpt_a[qualname] == ckpt_b[qualname]
    assert_same_export_weights(done / "export", stage / "export")


@pytest.mark.processes
def test_a_nonfinite_gradient_is_skipped_on_both_ddp_ranks_and_advances_nothing(stage_overrides, tmp_path):
    _run(stage_overrides("video_pretrain", *DDP, *NONFINITE_GRAD_RUN))
    assert_nonfinite_grad_step_skipped(tmp_path / "runs" / "demo" / "video_pretrain")
