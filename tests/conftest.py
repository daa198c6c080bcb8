"""Shared test fixtures. Kept small: per-package fixtures live beside their tests."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

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
