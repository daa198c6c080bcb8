"""Guard: the layering of the packages, checked on every import of every file (nested and importlib ones included).

- ``models/`` imports none of ``data/``, ``train/``, ``scripts/`` and no training framework, config system or logger;
- ``data/`` imports none of ``train/``, ``scripts/``; only ``data/curation/`` may import ``models/``;
- ``train/`` imports no ``scripts/``;
- the modules of ``data/`` import each other without cycles (a lazy import inside a function counts: it only hides a
  cycle, it does not break it; a type-only import under ``if TYPE_CHECKING:`` never runs, so it counts for the layering
  but not for cycles).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "data", "train", "scripts")
FRAMEWORKS = frozenset(
    {"lightning", "pytorch_lightning", "lightning_fabric", "hydra", "omegaconf", "deepspeed", "wandb"}
)
_DYNAMIC_IMPORTERS = frozenset({"import_module", "__import__"})


@dataclass(frozen=True)
class Rule:
    """Files under ``folder`` (minus ``except_under``) must not import a top-level module in ``forbidden``."""

    folder: str
    forbidden: frozenset[str]
    except_under: str | None = None
    why: str = ""


RULES = (
    Rule("models", frozenset({"data", "train", "scripts"}) | FRAMEWORKS, why="models/ is pure PyTorch"),
    Rule("data", frozenset({"train", "scripts"}), why="data/ feeds train/, never the reverse"),
    Rule("data", frozenset({"models"}), except_under="data/curation", why="only curation runs networks in data/"),
    Rule("train", frozenset({"scripts"}), why="scripts/ are thin CLIs over the library"),
)


def module_name(path: Path, root: Path = REPO) -> str:
    """``data/sources.py`` -> ``data.sources``; ``data/curation/__init__.py`` -> ``data.curation``."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_only_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (never executed, so they take part in no import cycle)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
        if name == "TYPE_CHECKING":
            found |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return found


def imported_modules(
    tree: ast.AST, *, module: str, is_package: bool = False, type_only: bool = True
) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in ``tree`` of ``module``, nested ones and importlib calls
    included (``type_only=False`` leaves out those under ``if TYPE_CHECKING:``). ``from a import b`` gives ``a.b``
    (b may be a module; ``resolve`` falls back to ``a``); relative imports are resolved against ``module``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    skip = set() if type_only else _type_only_nodes(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            found += [(node.lineno, f"{base}.{alias.name}" if base else alias.name) for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in _DYNAMIC_IMPORTERS and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def resolve(name: str, modules: Iterable[str]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules`` (``data.sources.expand_urls`` -> ``data.sources``)."""
    known = set(modules)
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return None


def file_imports(path: Path, root: Path, *, type_only: bool = True) -> list[tuple[int, str]]:
    """``imported_modules`` of one source file under ``root``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name, is_package = module_name(path, root), path.stem == "__init__"
    return imported_modules(tree, module=name, is_package=is_package, type_only=type_only)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports when it runs: at the top or in a function, not the type-only
    imports under ``if TYPE_CHECKING:`` (package ``__init__`` files are nodes too)."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = {resolve(imported, files) for _, imported in file_imports(path, root, type_only=False)}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def violations(root: Path, rules: Iterable[Rule] = RULES) -> list[str]:
    out = []
    for rule in rules:
        for path in sorted((root / rule.folder).rglob("*.py")):
            rel = path.relative_to(root)
            if rule.except_under and rel.is_relative_to(rule.except_under):
                continue
            for line, imported in file_imports(path, root):
                if imported.split(".")[0] in rule.forbidden:
                    out.append(f"{rel}:{line} imports {imported} ({rule.why})")
    return out


def test_scanner_sees_nested_relative_and_dynamic_imports() -> None:
    src = (
        "import a.b\n"
        "from . import sibling\n"
        "from ..up import thing\n"
        "def f():\n    import hydra.utils\n    from omegaconf import OmegaConf\n    importlib.import_module('wandb')\n"
    )
    names = [n for _, n in imported_modules(ast.parse(src), module="pkg.sub.mod")]
    assert names == ["a.b", "pkg.sub.sibling", "pkg.up.thing", "hydra.utils", "omegaconf.OmegaConf", "wandb"]
    assert resolve("pkg.up.thing", ["pkg", "pkg.up"]) == "pkg.up" and resolve("numpy", ["pkg"]) is None


def test_rules_and_cycles_on_a_synthetic_tree(tmp_path: Path) -> None:
    files = {
        "models/net.py": "def build():\n    from data.sources import x\n",
        "data/__init__.py": "",
        "data/a.py": "from data.b import helper\n",
        "data/b.py": "def helper():\n    from data import a  # lazy, still a cycle\n",
        "data/c.py": "from data.a import helper\nimport models.net\nimport data.d\n",
        # Type-only imports never run (no cycle with c) but still break the layering.
        "data/d.py": "import typing\nif typing.TYPE_CHECKING:\n    from data.c import helper\n    import train.loop\n",
        "data/curation/run.py": "from models.net import build\nfrom .. import c\n",
        "train/loop.py": "importlib.import_module('scripts.cli')\n",
        "scripts/cli.py": "import train.loop\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = violations(tmp_path)
    assert [v.split(" (")[0] for v in found] == [
        "models/net.py:2 imports data.sources.x",
        "data/d.py:4 imports train.loop",
        "data/c.py:2 imports models.net",
        "train/loop.py:1 imports scripts.cli",
    ]
    graph = import_graph(tmp_path, "data")
    assert graph["data.curation.run"] == {"data.c"} and graph["data.c"] == {"data.a", "data.d"}
    assert graph["data.d"] == set()
    assert cycles(graph) == [["data.a", "data.b"]]


def test_every_package_keeps_its_layer() -> None:
    assert all((REPO / p).is_dir() for p in PACKAGES)
    found = violations(REPO)
    assert not found, "layering broken (models <- data <- train <- scripts):\n" + "\n".join(found)


def test_data_modules_import_each_other_without_cycles() -> None:
    graph = import_graph(REPO, "data")
    assert "data.sources" in graph and "data.sample_decode" in graph
    found = cycles(graph)
    assert not found, f"import cycles in data/ (move the shared code into a small leaf module): {found}"


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
    leaked = sorted(m for m in report["loaded"] if m.split(".")[0] in FRAMEWORKS)
    assert not leaked, f"importing models/ pulled in {leaked}; find the import chain with python -X importtime"
