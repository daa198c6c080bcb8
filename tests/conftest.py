"""Shared test fixtures. Kept small: per-package fixtures live beside their tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

MANIFEST_DIR = Path(__file__).parent / "manifests"


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
