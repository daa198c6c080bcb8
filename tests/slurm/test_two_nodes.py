"""Stages on the two-node local SLURM (``n1``, ``n2``; scripts/local_slurm.sh --nodes 2): one task per node, DDP with
gloo over loopback, the rendezvous address from the job's node list (``n1``). The same run as one node with two tasks
(same losses, each rank its own samples), ``scontrol requeue`` and SIGUSR1 across nodes, and a node dying mid-run:
the requeued job resumes from the newest checkpoint to the weights of an uninterrupted run, bit for bit; and a
DeepSpeed ZeRO-2 stage (CPU accelerator) with one rank per node."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch

from train.checkpointing import list_checkpoints
from train.datamodule import StreamDataModule
from train.module import read_metrics

from ..train.conftest import assert_same_export_weights, tiny_stage_overrides
from ..train.test_ddp import _check_both_ranks_streamed_their_own_shards
from .conftest import STATE_DIR, env_with_file, node_names, restart_dead_daemons
from .test_stage_jobs import CPU_JOB, SCRATCH, job_state, log_of, sh, submit, wait, wait_for_rows

pytestmark = pytest.mark.slurm

# --nodes etc. on the command line win over the #SBATCH lines; the later --nodes over CPU_JOB's.
TWO_NODES = [*CPU_JOB, "--nodes=2", "--ntasks-per-node=1"]
STEPS = 6
NODE_DOWN_S = 15
# No shuffle buffer: each pass over the demo clips is a contiguous block of every rank's stream (see test_ddp.py).
COMMON = [f"stage.max_steps={STEPS}", "data.num_workers=1", "data.shuffle_buffer=0"]


def losses(stage) -> dict[int, float]:
    return {r["batch"]: r["train/loss"] for r in read_metrics(stage / "metrics.jsonl")}


def last_checkpoint(stage) -> dict:
    return torch.load(list_checkpoints(stage / "checkpoints")[-1], weights_only=True)


@dataclass
class Reference:
    """The uninterrupted two-node run that the interrupted ones must reproduce."""

    overrides: list[str]
    stage: Path
    log: str


@pytest.fixture(scope="module")
def reference(local_slurm, demo_shards, tmp_path_factory) -> Reference:
    if len(node_names(local_slurm)) < 2:
        pytest.skip("the local SLURM has one node")
    folder = tmp_path_factory.mktemp("two_node_reference")
    env = env_with_file(local_slurm, folder)
    overrides = reference_overrides(folder, demo_shards, "paths.run_name=reference")
    job = submit("video_pretrain.sbatch", overrides, env, folder / "logs", *TWO_NODES)
    assert wait(job, env) == "COMPLETED", log_of(folder / "logs", job)
    return Reference(overrides, folder / "runs" / "reference" / "video_pretrain", log_of(folder / "logs", job))


def reference_overrides(root: Path, data: Path, *extra: str) -> list[str]:
    return tiny_stage_overrides("video_pretrain", *SCRATCH, *COMMON, *extra, root=root / "runs", data_root=data)


def test_two_nodes_train_like_one_node_with_two_tasks(reference, slurm_env, demo_shards, tmp_path):
    logs = tmp_path / "logs"
    one = submit("video_pretrain.sbatch", reference_overrides(tmp_path, demo_shards, "paths.run_name=one_node"),
                 slurm_env, logs, "--ntasks-per-node=2")  # fmt: skip
    assert wait(one, slurm_env) == "COMPLETED", log_of(logs, one)
    assert "nodes n[1-2] tasks/node 1" in reference.log
    a, b = tmp_path / "runs" / "one_node" / "video_pretrain", reference.stage
    assert sorted(losses(b)) == list(range(STEPS)) and losses(a) == losses(b)
    ckpt = last_checkpoint(b)
    assert ckpt["global_step"] == STEPS
    assert ckpt[StreamDataModule.__qualname__] == last_checkpoint(a)[StreamDataModule.__qualname__]
    # rank r (on node n<r+1>) read its own shards
    _check_both_ranks_streamed_their_own_shards(ckpt, reference.overrides, steps=STEPS)
    assert_same_export_weights(a / "export", b / "export")


def test_requeue_and_sigusr1_across_nodes_resume_to_the_same_losses(reference, slurm_env, demo_shards, tmp_path):
    """One job, interrupted twice: SIGUSR1 (checkpoint, requeue from inside), then ``scontrol requeue``."""
    logs = tmp_path / "logs"
    job = submit("video_pretrain.sbatch", reference_overrides(tmp_path, demo_shards, "paths.run_name=requeued"),
                 slurm_env, logs, *TWO_NODES)  # fmt: skip
    stage = tmp_path / "runs" / "requeued" / "video_pretrain"
    wait_for_rows(stage, 2, job, slurm_env)
    sh(["scancel", "--signal=USR1", job], slurm_env)
    wait_for_log(logs, job, "restart 1", slurm_env)
    wait_for_rows(stage, 4, job, slurm_env)
    sh(["scontrol", "requeue", job], slurm_env)
    assert wait(job, slurm_env, timeout=900) == "COMPLETED", log_of(logs, job)
    log = log_of(logs, job)
    assert "[preempted]" in log and f"job {job} requeued" in log and "restart 2" in log
    assert len(re.findall(r"\[resume\] \S+step_\d+\.ckpt", log)) == 2 * 2, log  # each rank, each restart
    assert losses(stage) == losses(reference.stage) and sorted(losses(stage)) == list(range(STEPS))
    assert_same_export_weights(reference.stage / "export", stage / "export")


def test_a_node_dying_mid_run_requeues_the_job_and_it_resumes_bit_for_bit(reference, slurm_env, demo_shards, tmp_path):
    """SIGKILL node n2 (its slurmd, then its slurmstepd and the rank-1 processes under it) after the checkpoint of
    step 2; slurmctld marks n2 down and requeues the job (--requeue), n2 comes back (ReturnToService=2), and the
    job resumes from its newest checkpoint to the reference run's export, bit for bit."""
    logs = tmp_path / "logs"
    job = submit("video_pretrain.sbatch", reference_overrides(tmp_path, demo_shards, "paths.run_name=node_failure"),
                 slurm_env, logs, *TWO_NODES)  # fmt: skip
    stage = tmp_path / "runs" / "node_failure" / "video_pretrain"
    wait_for_rows(stage, 3, job, slurm_env)  # the checkpoint of step 2 is written before batch 2 runs
    killed = kill_node("n2", job)
    assert killed, "found no process of the job on n2"
    try:
        # SlurmdTimeout=10: n2 stops responding, is set down, and the job on it requeued (NODE_FAIL). n2 returns
        # once what was left of the job on n1 is gone: the requeued job waits for two nodes meanwhile.
        assert wait_until(lambda: node_state("n2", slurm_env).startswith("down"), 180), node_state("n2", slurm_env)
        assert wait_until(lambda: not any(job_node(p) and job_node(p)[0] == job for p in psutil.process_iter()), 180)
        # Requeued: NODE_FAIL, then COMPLETING while slurmctld cleans up on n1, then PENDING for two nodes.
        assert wait_until(lambda: job_state(job, slurm_env) == "PENDING", 120), job_state(job, slurm_env)
        # n2 stays down a while, as a failed node does: one back within a second of being set down lets the
        # requeued job start while slurmctld still holds its old step there (srun then waits: nodes busy).
        time.sleep(NODE_DOWN_S)
    finally:
        restart_dead_daemons()  # n2's slurmd again; the node returns to service
    assert wait(job, slurm_env, timeout=900) == "COMPLETED", log_of(logs, job)
    log = log_of(logs, job)
    assert "restart 1" in log and re.search(r"\[resume\] \S+step_\d+\.ckpt", log), log
    assert losses(stage) == losses(reference.stage) and sorted(losses(stage)) == list(range(STEPS))
    assert_same_export_weights(reference.stage / "export", stage / "export")


def kill_node(node: str, job: str) -> list[int]:
    """SIGKILL ``node``'s slurmd and, under its slurmstepd, the job's processes there (what a power loss does)."""
    slurmd = int((STATE_DIR / "pids" / f"slurmd-{node}.pid").read_text())
    os.kill(slurmd, signal.SIGKILL)
    tasks = [p for p in psutil.process_iter() if job_node(p) == (job, node)]
    stepds = {t.parent() for t in tasks if t.parent() is not None and t.parent().name() == "slurmstepd"}
    doomed = [*stepds, *{c for s in stepds for c in s.children(recursive=True)}, *tasks]
    for proc in doomed:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return [slurmd, *(p.pid for p in doomed)]


def job_node(proc: psutil.Process) -> tuple[str, str] | None:
    try:
        env = proc.environ()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    return env.get("SLURM_JOB_ID"), env.get("SLURMD_NODENAME")


def node_state(node: str, env: dict[str, str]) -> str:
    return sh(["sinfo", "-h", "-n", node, "-o", "%t"], env).strip()


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def wait_for_log(logs: Path, job: str, text: str, env: dict[str, str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not (list(logs.glob(f"*-{job}.out")) and text in log_of(logs, job)):
        assert time.monotonic() < deadline, f"no {text!r} in the log of job {job} after {timeout} s"
        if job_state(job, env) == "PENDING":  # a requeued job waits out a begin-time delay otherwise
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=False)
        time.sleep(0.5)


def test_a_deepspeed_zero2_stage_across_two_nodes_follows_the_ddp_run(reference, slurm_env, demo_shards, tmp_path):
    """ZeRO-2 on DeepSpeed's CPU accelerator (the test-only strategy of tests/train/cpu_deepspeed.py), one rank per
    node: ranks and rendezvous from SLURM, one optimizer shard per rank, losses within fp32 rounding of DDP's."""
    pytest.importorskip("deepspeed")
    zero = reference_overrides(tmp_path, demo_shards, "paths.run_name=zero2", "strategy.name=deepspeed_zero2_cpu",
                               "trainer.accelerator=cpu", "trainer.num_nodes=2", "trainer.devices=1")  # fmt: skip
    payload = json.dumps({"overrides": zero, "kill_at_save_step": None})
    task = f"{sys.executable} -m tests.train.cpu_deepspeed {shlex.quote(payload)}"
    env = {**slurm_env, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "MKL_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}  # fmt: skip
    logs = tmp_path / "logs"
    logs.mkdir()
    job = sh(["sbatch", "--parsable", *TWO_NODES, "--job-name=zero2", f"--output={logs}/%x-%j.out",
              "--wrap", f"srun --kill-on-bad-exit=1 {task}"], env).strip().split(";")[0]  # fmt: skip
    assert wait(job, env) == "COMPLETED", log_of(logs, job)
    results = [line for line in log_of(logs, job).splitlines() if line.startswith("RESULT ")]
    assert len(results) == 2 and all(json.loads(r[7:])["code"] == 0 for r in results), log_of(logs, job)
    stage = tmp_path / "runs" / "zero2" / "video_pretrain"
    ddp, ds = losses(reference.stage), losses(stage)
    assert sorted(ds) == list(range(STEPS)) and ds[0] == ddp[0]  # same weights, batch and noise before any update
    assert all(ds[b] == pytest.approx(ddp[b], rel=1e-5) for b in ddp), (ddp, ds)
    shards = list(list_checkpoints(stage / "checkpoints")[-1].glob("checkpoint/*optim_states.pt"))
    assert len(shards) == 2, shards  # ZeRO partitions the optimizer state: one shard per rank (per node)
