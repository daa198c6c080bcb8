"""The local SLURM (scripts/local_slurm.sh) runs batch jobs and multi-task steps; with two nodes, one task per node."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from .conftest import SCRIPT, node_names

pytestmark = pytest.mark.slurm

JOB_TIMEOUT_S = 60


def _slurm(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}"
    return proc.stdout


def _wait_gone_from_queue(env: dict[str, str], job_id: str) -> None:
    # No accounting (sacct) on the local cluster: a job is done once squeue no longer lists it.
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while _slurm(env, "squeue", "-j", job_id, "-h").strip():
        assert time.monotonic() < deadline, f"job {job_id} still queued after {JOB_TIMEOUT_S}s"
        time.sleep(0.2)


def test_sbatch_wrap_completes(local_slurm: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "hello.out"
    job_id = _slurm(local_slurm, "sbatch", "--parsable", f"--output={out}", "--wrap", "echo hello").strip()
    job_id = job_id.split(";")[0]  # --parsable prints "id[;cluster]"
    _wait_gone_from_queue(local_slurm, job_id)
    # MinJobAge=300 keeps the finished record in slurmctld for a few minutes.
    record = _slurm(local_slurm, "scontrol", "show", "job", "-o", job_id)
    assert "JobState=COMPLETED" in record and "ExitCode=0:0" in record, record
    assert out.read_text().strip() == "hello"


def test_srun_two_tasks_see_their_ranks(local_slurm: dict[str, str]) -> None:
    stdout = _slurm(local_slurm, "srun", "-n", "2", "--time=1", "bash", "-c", "echo $SLURM_PROCID $SLURM_NTASKS")
    assert sorted(stdout.split("\n")[:-1]) == ["0 2", "1 2"], stdout


def test_two_nodes_are_idle_and_srun_puts_one_task_on_each(two_nodes: dict[str, str]) -> None:
    assert node_names(two_nodes) == ["n1", "n2"]
    states = _slurm(two_nodes, "sinfo", "-h", "-N", "-o", "%N %t").split("\n")[:-1]
    assert sorted(states) == ["n1 idle", "n2 idle"], states
    stdout = _slurm(two_nodes, "srun", "-N2", "-n2", "--time=1", "bash", "-c",
                    "echo $SLURMD_NODENAME $SLURM_NODEID $SLURM_PROCID $(getent hosts $SLURMD_NODENAME)")  # fmt: skip
    assert sorted(stdout.split("\n")[:-1]) == ["n1 0 0 127.0.0.1 n1 n2", "n2 1 1 127.0.0.1 n1 n2"], stdout


def test_status_reports_every_node_and_hosts_has_one_line_of_ours(two_nodes: dict[str, str]) -> None:
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    for daemon in ("slurmctld", "slurmd-n1", "slurmd-n2", "munged"):
        assert f"{daemon}: running" in status.stdout, status.stdout
    ours = [line for line in Path("/etc/hosts").read_text().splitlines() if "# local_slurm " in line]
    assert len(ours) == 1 and ours[0].startswith("127.0.0.1 n1 n2 "), ours
