"""Guard: models/ stays pure PyTorch; no training framework, config system or logger is imported there."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
FORBIDDEN = frozenset(
    {"lightning", "pytorch_lightning", "lightning_fabric", "hydra", "omegaconf", "deepspeed", "wandb"}
)
_DYNAMIC_IMPORTERS = frozenset({"import_module", "__import__"})


def _imported_roots(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level module) of every import in ``tree``, nested ones and importlib calls included."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in _DYNAMIC_IMPORTERS and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def test_scanner_sees_nested_and_dynamic_imports() -> None:
    src = (
        "def f():\n    import hydra.utils\n    from omegaconf import OmegaConf\n    importlib.import_module('wandb')\n"
    )
    assert [root for _, root in _imported_roots(ast.parse(src))] == ["hydra", "omegaconf", "wandb"]


def test_models_sources_import_no_training_framework() -> None:
    files = sorted(MODELS.rglob("*.py"))
    assert files, f"no Python files under {MODELS}"
    offenders = [
        f"{path.relative_to(REPO)}:{line} imports {root}"
        for path in files
        for line, root in _imported_roots(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        if root in FORBIDDEN
    ]
    assert not offenders, "models/ must stay framework-free (move this code to train/):\n" + "\n".join(offenders)


_RUNTIME_CHECK = """
import importlib, json, pkgutil, sys
from pathlib import Path

import models

def fail(name):
    raise ImportError(f"walk_packages could not import {name}")

names = {"models"} | {info.name for info in pkgutil.walk_packages(models.__path__, "models.", onerror=fail)}
# walk_packages skips folders without __init__.py (namespace packages); import their modules too.
root = Path(models.__path__[0]).parent
for path in Path(models.__path__[0]).rglob("*.py"):
    parts = path.relative_to(root).with_suffix("").parts
    names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
for name in sorted(names):
    importlib.import_module(name)
print(json.dumps({"imported": sorted(names), "loaded": sorted(sys.modules)}))
"""


def test_importing_all_of_models_loads_no_training_framework() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _RUNTIME_CHECK], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"importing models/ failed:\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "models" in report["imported"]
    leaked = sorted(m for m in report["loaded"] if m.split(".")[0] in FORBIDDEN)
    assert not leaked, f"importing models/ pulled in {leaked}; find the import chain with python -X importtime"
