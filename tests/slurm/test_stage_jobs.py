"""The sbatch scripts and the pipeline against the real local SLURM (scripts/local_slurm.sh): a 2-task DDP stage,
``scontrol requeue`` and resume, the chained pipeline, and a failing stage stopping the chain."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from train.module import read_metrics

from ..train.conftest import ROOT

pytestmark = pytest.mark.slurm

CPU_JOB = ["--nodes=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]


def sh(args: list[str], env: dict[str, str], **kwargs) -> str:
    result = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def submit(script: str, overrides: list[str], env: dict[str, str], log_dir: Path, *flags: str) -> str:
    log_dir.mkdir(parents=True, exist_ok=True)  # SLURM does not create the folder of --output
    args = ["sbatch", "--parsable", *CPU_JOB, *flags, f"--output={log_dir}/%x-%j.out", f"slurm/{script}", *overrides]
    return sh(args, env).strip().split(";")[0]


def job_state(job: str, env: dict[str, str]) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    match = re.search(r"JobState=(\w+)", out)
    return match.group(1) if match else "GONE"


def wait(job: str, env: dict[str, str], *, timeout: float = 600, until: tuple[str, ...] = ()) -> str:
    """Poll until the job ends (or reaches one of ``until``); returns its state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_state(job, env)
        if state in until or state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "GONE"):
            return state
        if state == "PENDING" and "Reason=BeginTime" in sh(["scontrol", "show", "job", job], env):
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env)  # requeue delay
        time.sleep(0.5)
    pytest.fail(f"job {job} still {job_state(job, env)} after {timeout} s")


def log_of(log_dir: Path, job: str) -> str:
    (path,) = log_dir.glob(f"*-{job}.out")
    return path.read_text()


SCRATCH = ("stage.init.from_stage=null", "stage.init.keep=[unet,first_stage,conditioner]")


def scratch(stage_overrides, *extra: str) -> list[str]:
    return stage_overrides("video_pretrain", *SCRATCH, *extra)


def test_a_stage_script_with_two_tasks_trains_and_exports(slurm_env, stage_overrides, tmp_path):
    logs = tmp_path / "logs"
    job = submit("video_pretrain.sbatch", scratch(stage_overrides, "stage.max_steps=3", "data.num_workers=1"),
                 slurm_env, logs, "--ntasks-per-node=2")  # fmt: skip
    assert wait(job, slurm_env) == "COMPLETED", log_of(logs, job)
    log = log_of(logs, job)
    assert "tasks/node 2" in log and "[export]" in log
    assert (tmp_path / "runs" / "demo" / "video_pretrain" / "export" / "model.safetensors").exists()


def wait_for_rows(stage, rows, job, env, timeout=600.0):
    """Block until the running ``job`` has logged ``rows`` steps to the stage's metrics.jsonl."""
    deadline = time.monotonic() + timeout
    while not ((stage / "metrics.jsonl").exists() and len(read_metrics(stage / "metrics.jsonl")) >= rows):
        assert time.monotonic() < deadline and job_state(job, env) in ("PENDING", "RUNNING")
        time.sleep(0.2)


def test_scontrol_requeue_resumes_to_the_same_losses(slurm_env, stage_overrides, tmp_path):
    logs, steps = tmp_path / "logs", 8
    common = ["stage.max_steps=8", "data.num_workers=1"]
    straight = submit("video_pretrain.sbatch", scratch(stage_overrides, *common, "paths.run_name=straight"),
                      slurm_env, logs, "--ntasks-per-node=1")  # fmt: skip
    assert wait(straight, slurm_env) == "COMPLETED", log_of(logs, straight)

    job = submit("video_pretrain.sbatch", scratch(stage_overrides, *common, "paths.run_name=requeued"),
                 slurm_env, logs, "--ntasks-per-node=1")  # fmt: skip
    stage = tmp_path / "runs" / "requeued" / "video_pretrain"
    wait_for_rows(stage, 5, job, slurm_env)
    sh(["scontrol", "requeue", job], slurm_env)
    assert wait(job, slurm_env, timeout=900) == "COMPLETED", log_of(logs, job)

    log = log_of(logs, job)
    assert "restart 1" in log
    resumed = re.search(r"\[resume\] \S+step_(\d+)\.ckpt", log)
    assert resumed, log
    a = {
        r["batch"]: r["train/loss"]
        for r in read_metrics(tmp_path / "runs" / "straight" / "video_pretrain" / "metrics.jsonl")
    }
    b = {r["batch"]: r["train/loss"] for r in read_metrics(stage / "metrics.jsonl")}
    assert a == b and sorted(b) == list(range(steps))
    assert read_metrics(stage / "metrics.jsonl")[-1]["step"] == steps


def test_the_pipeline_chains_stages_through_their_exports(slurm_env, stage_overrides, tmp_path):
    logs = tmp_path / "logs"
    overrides = [o for o in stage_overrides("image_pretrain", "stage.max_steps=2") if not o.startswith("stage=")]
    out = sh(["slurm/pipeline.sh", "--stages", "autoencoder image_pretrain video_pretrain",
              "--sbatch-args", " ".join([*CPU_JOB, "--ntasks-per-node=1"]), "--logs", str(logs), *overrides],
             slurm_env)  # fmt: skip
    jobs = dict(line.split() for line in out.strip().splitlines())
    assert list(jobs) == ["autoencoder", "image_pretrain", "video_pretrain"]
    for job in jobs.values():
        assert wait(job, slurm_env) == "COMPLETED", log_of(logs, job)
    assert "autoencoder/export/model.safetensors" in log_of(logs, jobs["image_pretrain"])
    assert "temporal layer inflated" in log_of(logs, jobs["video_pretrain"])
    for stage in jobs:
        assert (tmp_path / "runs" / "demo" / stage / "export" / "model.safetensors").exists()


def test_a_failing_stage_stops_the_chain_with_a_readable_log(slurm_env, stage_overrides, tmp_path):
    logs = tmp_path / "logs"
    overrides = [o for o in stage_overrides("image_pretrain", "stage.max_steps=2") if not o.startswith("stage=")]
    out = sh(["slurm/pipeline.sh", "--stages", "image_pretrain video_pretrain",
              "--sbatch-args", " ".join([*CPU_JOB, "--ntasks-per-node=1"]), "--logs", str(logs), *overrides],
             slurm_env)  # fmt: skip
    jobs = dict(line.split() for line in out.strip().splitlines())
    assert wait(jobs["image_pretrain"], slurm_env) == "FAILED"
    assert "Stage 'autoencoder' writes it" in log_of(logs, jobs["image_pretrain"])
    assert wait(jobs["video_pretrain"], slurm_env) in ("CANCELLED", "GONE")
    assert not list(logs.glob(f"*-{jobs['video_pretrain']}.out"))  # never started
    assert not (tmp_path / "runs" / "demo" / "video_pretrain").exists()


def test_bad_input_fails_before_submitting_or_at_once(slurm_env, stage_overrides, tmp_path):
    result = subprocess.run(["slurm/pipeline.sh", "--stages", "image_pretrain video_pretrian"], env=slurm_env,
                            cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert result.returncode != 0 and "unknown stage 'video_pretrian'" in result.stderr
    result = subprocess.run(["slurm/pipeline.sh", "--stages", "image_pretrain", "stage.optim.lrr=1"], env=slurm_env,
                            cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert result.returncode != 0 and "nothing submitted" in result.stderr and "lrr" in result.stderr
    logs = tmp_path / "logs"
    env = {**slurm_env, "SVD_SLURM_ENV": str(tmp_path / "missing.sh")}
    job = submit("image_pretrain.sbatch", [], env, logs, "--ntasks-per-node=1")
    assert wait(job, slurm_env) == "FAILED"
    assert "missing.sh not found" in log_of(logs, job)


def test_the_preemption_signal_checkpoints_requeues_and_resumes(slurm_env, stage_overrides, tmp_path):
    """SIGUSR1 (what --signal=USR1@300 sends before the time limit): checkpoint, scontrol requeue from inside the
    job, the requeued job resumes from that checkpoint; same losses as an uninterrupted run (the first test's)."""
    logs, steps = tmp_path / "logs", 6
    common = ["stage.max_steps=6", "data.num_workers=1", "trainer.checkpoint_every_n_steps=100"]
    straight = submit("video_pretrain.sbatch", scratch(stage_overrides, *common, "paths.run_name=straight"),
                      slurm_env, logs, "--ntasks-per-node=1")  # fmt: skip
    job = submit("video_pretrain.sbatch", scratch(stage_overrides, *common, "paths.run_name=preempted"),
                 slurm_env, logs, "--ntasks-per-node=1")  # fmt: skip
    stage = tmp_path / "runs" / "preempted" / "video_pretrain"
    wait_for_rows(stage, 2, job, slurm_env)
    sh(["scancel", "--signal=USR1", job], slurm_env)
    assert wait(straight, slurm_env) == "COMPLETED", log_of(logs, straight)
    assert wait(job, slurm_env, timeout=900) == "COMPLETED", log_of(logs, job)
    log = log_of(logs, job)
    assert "[preempted]" in log and f"job {job} requeued" in log and "restart 1" in log
    assert re.search(r"\[resume\] \S+step_\d+\.ckpt", log), log
    a = {
        r["batch"]: r["train/loss"]
        for r in read_metrics(tmp_path / "runs" / "straight" / "video_pretrain" / "metrics.jsonl")
    }
    b = {r["batch"]: r["train/loss"] for r in read_metrics(stage / "metrics.jsonl")}
    assert a == b and sorted(b) == list(range(steps))
