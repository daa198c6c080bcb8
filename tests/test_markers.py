"""The marker contract: slow, gpu and slurm exist, unknown markers are errors, make test skips slow and gpu."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIRED_MARKERS = ("slow", "gpu", "slurm")


def _pytest_ini() -> dict[str, object]:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["pytest"]["ini_options"]


def test_pyproject_declares_strict_markers_and_required_markers() -> None:
    ini = _pytest_ini()
    assert "--strict-markers" in str(ini["addopts"]).split()
    declared = {str(line).split(":")[0].strip() for line in ini["markers"]}
    assert set(REQUIRED_MARKERS) <= declared, f"missing markers: {set(REQUIRED_MARKERS) - declared}"


def test_running_config_has_the_markers(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.getoption("strict_markers")
    declared = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    assert set(REQUIRED_MARKERS) <= declared


def test_unknown_marker_is_an_error(tmp_path: Path) -> None:
    test_file = tmp_path / "test_typo.py"
    test_file.write_text("import pytest\n\n@pytest.mark.slwo\ndef test_x():\n    pass\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), "-q",
         "-p", "no:cacheprovider", str(test_file)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "'slwo' not found in `markers`" in proc.stdout + proc.stderr


def test_make_test_deselects_slow_and_gpu() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert '-m "not slow and not gpu"' in makefile
