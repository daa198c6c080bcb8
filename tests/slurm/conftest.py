"""The ``local_slurm`` fixture: a one-node SLURM on 127.0.0.1 brought up by ``scripts/local_slurm.sh``."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "local_slurm.sh"
# A cold start may apt-get install the packages first.
START_TIMEOUT_S = 600


def _run_script(command: str, *, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=timeout, check=False)


def _state_dir() -> Path:
    return Path(os.environ.get("LOCAL_SLURM_DIR", "/tmp/local_slurm"))


@pytest.fixture(scope="session")
def local_slurm() -> Iterator[dict[str, str]]:
    """Environment (``os.environ`` plus ``SLURM_CONF``) for running slurm commands against the local cluster.

    Skips the test when the cluster cannot start (not root, packages not installable, daemons failing).
    Stops the cluster at session end only if this session started it.
    """
    was_up = _run_script("status", timeout=30).returncode == 0
    try:
        start = _run_script("start", timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"local SLURM did not start within {START_TIMEOUT_S}s ({SCRIPT} start)")
    if start.returncode != 0:
        tail = "\n".join((start.stdout + start.stderr).strip().splitlines()[-15:])
        pytest.skip(f"local SLURM could not start ({SCRIPT} start, exit {start.returncode}):\n{tail}")
    yield {**os.environ, "SLURM_CONF": str(_state_dir() / "slurm.conf")}
    if not was_up:
        _run_script("stop", timeout=120)


# The stage-run fixtures of tests/train (tiny demo shards and run overrides), for the sbatch tests.
from ..train.conftest import demo_shards, stage_overrides  # noqa: E402, F401
