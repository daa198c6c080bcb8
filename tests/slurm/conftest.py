"""The ``local_slurm`` fixture: a SLURM on 127.0.0.1 brought up by ``scripts/local_slurm.sh``, with two nodes
(``n1``, ``n2``: two slurmds on this host) so that one cluster serves the one-node tests (``--nodes=1``) and the
two-node ones (``two_nodes`` skips those when the cluster has fewer). ``LOCAL_SLURM_TEST_NODES=1`` starts the
script's one-node mode instead (the node is this host); the one-node tests pass on either."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "local_slurm.sh"
# A cold start may apt-get install the packages first.
START_TIMEOUT_S = 600
NODES = os.environ.get("LOCAL_SLURM_TEST_NODES", "2")
STATE_DIR = Path(os.environ.get("LOCAL_SLURM_DIR", "/tmp/local_slurm"))


def _run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False)


def _node_count() -> str:
    """A running cluster's node count (one started by hand with one node is used as it is), else ``NODES``."""
    running = STATE_DIR / "nodes"
    up = "slurmctld: running" in _run_script("status", timeout=30).stdout and running.exists()
    return str(len(running.read_text().split())) if up else NODES


@pytest.fixture(scope="session")
def local_slurm() -> Iterator[dict[str, str]]:
    """Environment (``os.environ`` plus ``SLURM_CONF``) for running slurm commands against the local cluster.

    Skips the test when the cluster cannot start (not root, packages not installable, daemons failing).
    Stops the cluster at session end only if this session started it.
    """
    was_up = _run_script("status", timeout=30).returncode == 0
    try:
        start = _run_script("start", "--nodes", _node_count(), timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"local SLURM did not start within {START_TIMEOUT_S}s ({SCRIPT} start)")
    if start.returncode != 0:
        tail = "\n".join((start.stdout + start.stderr).strip().splitlines()[-15:])
        pytest.skip(f"local SLURM could not start ({SCRIPT} start, exit {start.returncode}):\n{tail}")
    yield {**os.environ, "SLURM_CONF": str(STATE_DIR / "slurm.conf")}
    if not was_up:
        _run_script("stop", timeout=120)


def restart_dead_daemons() -> None:
    """``local_slurm.sh start`` on the running cluster: starts again what died (a killed node) and waits for idle."""
    start = _run_script("start", "--nodes", _node_count(), timeout=START_TIMEOUT_S)
    assert start.returncode == 0, start.stdout + start.stderr


def node_names(env: dict[str, str]) -> list[str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], env=env, capture_output=True, text=True, timeout=60)
    return sorted(set(out.stdout.split()))


@pytest.fixture
def two_nodes(local_slurm) -> dict[str, str]:
    """``local_slurm``, for tests that need two nodes (skipped on a one-node cluster)."""
    if len(node_names(local_slurm)) < 2:
        pytest.skip("the local SLURM has one node (LOCAL_SLURM_TEST_NODES=1 or started by hand with one node)")
    return local_slurm


def env_with_file(local_slurm: dict[str, str], folder: Path) -> dict[str, str]:
    """``local_slurm`` plus an env file for the sbatch scripts: this interpreter, one thread, no wandb."""
    env_file = folder / "env.sh"
    env_file.write_text(f"export SVD_PYTHON={sys.executable}\nexport OMP_NUM_THREADS=1\nexport WANDB_MODE=disabled\n")
    return {**os.environ, **local_slurm, "SVD_SLURM_ENV": str(env_file), "PYTHONPATH": str(ROOT)}


@pytest.fixture
def slurm_env(local_slurm, tmp_path) -> dict[str, str]:
    return env_with_file(local_slurm, tmp_path)


# The stage-run fixtures of tests/train (tiny demo shards and run overrides), for the sbatch tests.
from ..train.conftest import ROOT, demo_shards, stage_overrides  # noqa: E402, F401
