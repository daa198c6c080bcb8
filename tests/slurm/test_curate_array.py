"""``slurm/curate.sh`` against the real local SLURM (scripts/local_slurm.sh): the annotate job array (one task per
part of the inputs) and the merge job queued after it end with the same bytes as one local run; bad input submits
nothing and says why."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from data.curation.runner import run

from ..data.curation.test_pipeline import TINY, curate_config, tree, write_raw
from ..train.conftest import ROOT

pytestmark = pytest.mark.slurm

CPU_JOB = "--nodes=1 --ntasks=1 --cpus-per-task=1 --time=15"
JOB_TIMEOUT_S = 300  # the machine is shared: generous


def with_env_file(base: dict[str, str], folder: Path) -> dict[str, str]:
    """``base`` plus an env file (SVD_SLURM_ENV) for the scripts: this interpreter, one thread."""
    env_file = folder / "env.sh"
    env_file.write_text(f"export SVD_PYTHON={sys.executable}\nexport OMP_NUM_THREADS=1\n")
    return {**base, "SVD_SLURM_ENV": str(env_file), "PYTHONPATH": str(ROOT)}


def curate_sh(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["slurm/curate.sh", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def job_records(job: str, env: dict[str, str]) -> list[dict[str, str]]:
    """``scontrol show job -o``: one dict per job (an array gives one per task); [] once SLURM forgot the job."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if "JobId=" in line]


def wait_done(job: str, env: dict[str, str], *, timeout: float = JOB_TIMEOUT_S) -> list[dict[str, str]]:
    """Poll until no record of ``job`` is pending or running; returns the records (no sacct on the local SLURM)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = job_records(job, env)
        if not any(r["JobState"] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING") for r in records):
            return records
        time.sleep(0.5)
    pytest.fail(f"job {job} not done after {timeout} s: {[r['JobState'] for r in job_records(job, env)]}")


def when(record: dict[str, str], key: str) -> datetime:
    return datetime.fromisoformat(record[key])


def test_the_array_and_its_merge_give_the_bytes_of_a_local_run(local_slurm, tmp_path):
    raw = write_raw(tmp_path / "raw", 3)
    logs, slurm_out, local_out = tmp_path / "logs", tmp_path / "slurm_out", tmp_path / "local_out"
    env = with_env_file(local_slurm, tmp_path)
    args = ["--tasks", "2", "--sbatch-args", CPU_JOB, "--logs", str(logs), f"input={raw}", f"out={slurm_out}", *TINY]
    submitted = curate_sh(args, env)
    assert submitted.returncode == 0, submitted.stderr
    assert "3 input unit(s) over 2 array task(s)" in submitted.stderr
    jobs = dict(line.split() for line in submitted.stdout.strip().splitlines())
    assert list(jobs) == ["annotate", "merge"]

    run(curate_config(raw, local_out), progress=False)  # the reference, while the jobs run

    (merge,) = wait_done(jobs["merge"], env)
    tasks = wait_done(jobs["annotate"], env)
    task_logs = {t["ArrayTaskId"]: logs / f"svd-curate-{jobs['annotate']}_{t['ArrayTaskId']}.out" for t in tasks}
    merge_log = logs / f"svd-curate-merge-{jobs['merge']}.out"
    everything = "\n".join(p.read_text() for p in [*task_logs.values(), merge_log] if p.exists())
    assert merge["JobState"] == "COMPLETED", everything
    assert sorted(task_logs) == ["0", "1"], tasks
    assert all(t["JobState"] == "COMPLETED" and t["ExitCode"] == "0:0" for t in tasks), everything
    assert when(merge, "StartTime") >= max(when(t, "EndTime") for t in tasks)
    for index, path in task_logs.items():
        log = path.read_text()
        assert f"part {index}/2 " in log  # the script's header line
        assert f"part {index}/2: {2 - int(index)} of 3 input units" in log  # what the runner did with it
    assert '"merge": {"clips"' in merge_log.read_text()  # the runner's result line

    hydra_runs = sorted(p.name for p in (slurm_out / "hydra").iterdir())
    assert len(hydra_runs) == 3 and any(name.endswith(f"-{jobs['merge']}") for name in hydra_runs)
    slurm_tree, local_tree = tree(slurm_out), tree(local_out)
    assert "summary.json" in slurm_tree and "subsets/pretrain/keys.txt" in slurm_tree
    assert slurm_tree.keys() == local_tree.keys()
    assert [k for k in slurm_tree if slurm_tree[k] != local_tree[k]] == []


def test_a_typo_submits_nothing_and_says_why(local_slurm, tmp_path):
    raw = write_raw(tmp_path / "raw", 1)
    env = with_env_file(local_slurm, tmp_path)
    name = f"typo-{uuid.uuid4().hex[:8]}"
    common = ["--tasks", "2", "--sbatch-args", f"{CPU_JOB} --job-name={name}", f"input={raw}", f"out={tmp_path / 'o'}"]
    cases = {
        "annotate.motion.fsp=2": "Could not override 'annotate.motion.fsp'",  # Hydra: no such key
        "+annotate.motion.fsp=2": "valid keys: flow_short_side, fps",  # the dataclasses: no such field
        "models=tny": "Could not find 'models/tny'",
        "annotate.motion.fps=fast": "annotate.motion: must be real number",
    }
    for typo, reason in cases.items():
        result = curate_sh([*common, *TINY, typo], env)
        assert result.returncode != 0 and result.stdout == "", (typo, result.stdout)
        assert reason in result.stderr and "nothing submitted" in result.stderr, (typo, result.stderr)
    no_head = curate_sh(common, env)  # the default filters need an aesthetic head the config lacks
    assert no_head.returncode != 0 and "no aesthetic head" in no_head.stderr
    missing = curate_sh([*common[:-2], f"input={tmp_path / 'nope'}", f"out={tmp_path / 'o'}", *TINY], env)
    assert missing.returncode != 0 and "nope does not exist" in missing.stderr
    queued = subprocess.run(["squeue", "-h", "--states=all", f"--name={name}"], env=env, capture_output=True, text=True)
    assert queued.returncode == 0 and queued.stdout.strip() == "", queued.stdout
    assert not (tmp_path / "o").exists()


def test_missing_or_bad_options_are_clear_errors(tmp_path):
    env = with_env_file(dict(os.environ), tmp_path)
    overrides = ["input=/x", "out=/y"]
    for args, message in [
        (overrides, "--tasks K (the number of array tasks, an integer >= 1) is required"),
        (["--tasks", "0", *overrides], "is required; got '0'"),
        (["--logs", "/l", "--tasks"], "--tasks needs a value"),
        (["--task", "2", *overrides], "unknown option --task"),
        (["--tasks", "2", *overrides, "part=0/2"], "curate.sh sets step and part itself"),
    ]:
        result = curate_sh(args, env)
        assert result.returncode != 0 and result.stdout == "", args
        assert message in result.stderr, (args, result.stderr)
