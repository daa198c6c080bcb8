"""Shared test fixtures. Kept small: per-package fixtures live beside their tests."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# `make test` runs two pytest-xdist workers (`-n 2 --dist loadgroup`) on 2 cores: each worker computes on one thread
# (set before torch is imported; the processes a test starts inherit it), and the tests that start several busy
# processes of their own (DDP and DeepSpeed ranks, SLURM jobs; markers `processes` and `slurm`) run one at a time
# in one xdist group, so at most one of them shares the cores with the other worker's in-process tests.
PROCESS_GROUP = "processes"
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("processes") or item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group(PROCESS_GROUP))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under ``--dist loadgroup`` xdist marks a grouped test by suffixing its node id with ``@<group>``; a pytest
    where that suffix does not stick (9.2 with xdist 3.8) would spread the process tests over both workers."""
    if not getattr(session.config.option, "loadgroup", False):  # set in xdist workers only
        return
    lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if lost:
        raise pytest.UsageError(
            f"pytest-xdist's --dist loadgroup did not group {lost[0]} (pytest {pytest.__version__}); install the "
            "pytest version range of pyproject.toml (pip install -e '.[dev]') or run with -n 0"
        )


MANIFEST_DIR = Path(__file__).parent / "manifests"
SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts"


@cache
def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module, loaded once per session (scripts/ is not a package, so tests of a CLI
    cannot import it): ``load_script("sample").main([...])``. Registered in ``sys.modules`` as ``scripts.<name>``,
    where dataclasses defined in the script look their module up."""
    path = SCRIPTS_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"scripts.{name}", path)
    if spec is None or spec.loader is None or not path.is_file():
        known = sorted(p.stem for p in SCRIPTS_DIR.glob("*.py"))
        raise ValueError(f"no script {path}; choose one of {known}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@cache
def _read_manifest(name: str) -> dict[str, Any]:
    path = MANIFEST_DIR / f"{name}_manifest.json"
    if not path.is_file():
        known = sorted(p.name.removesuffix("_manifest.json") for p in MANIFEST_DIR.glob("*_manifest.json"))
        raise ValueError(f"No manifest {path.name} in {MANIFEST_DIR}; choose one of {known}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def manifest() -> Callable[[str], dict[str, Any]]:
    """Loader for the checkpoint-layout manifests: ``manifest("svd")["variants"]["svd"]["keys"]``.

    Names are ``svd`` and ``sd21`` (files ``tests/manifests/<name>_manifest.json``, see README there).
    The parsed JSON is cached for the session; treat it as read-only.
    """
    return _read_manifest
