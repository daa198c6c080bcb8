"""One home per default: a YAML group file sets only what differs from the schema dataclasses.

A value equal to the schema default is a restatement (it silently stops following the schema when the default
changes) unless a group merged before this file's group sets that key to something else: then the file must say
the value again to override it (e.g. ``model.unet.video: false`` in an image stage after a video model group).
Files of one group are alternatives (never merged together), so they never excuse each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from data.curation.config import schema_defaults
from train.config import TrainConfig

CONF = Path(__file__).resolve().parents[2] / "conf"
# The merge order of the defaults lists (conf/train.yaml, conf/curate/curate.yaml); the primary file ("") merges last.
ORDER = ("model", "conditioner", "data", "trainer", "strategy", "logger", "paths", "debug", "stage", "models", "")


def _group(path: Path, root: Path) -> str:
    return path.relative_to(root).parts[0] if path.parent != root else ""


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """key path -> value of every non-dict value (lists are values: the schema's lists are defaults as a whole)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "defaults" and not prefix:
                continue
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def _file_leaves(path: Path, root: Path) -> dict[str, Any]:
    """The file's values as key paths of the composed config (its group is its package unless it says _global_)."""
    text = path.read_text()
    content = OmegaConf.to_container(OmegaConf.create(text)) or {}
    rel = path.relative_to(root)
    group = ".".join(rel.parts[:-1])
    header = [line.split()[-1] for line in text.splitlines()[:3] if line.startswith("# @package")]
    package = {"_global_": "", "_group_": group}.get(header[0], header[0]) if header else group
    package = package + "." if package else ""
    if rel.parts[0] == "filters":  # filters@subsets.<name>.filters: a list, checked as a whole by the schema
        return {}
    return _leaves(content, package)


def _schema_value(schema: Any, key: str) -> tuple[bool, Any]:
    node = schema
    for part in key.split("."):
        if not OmegaConf.is_dict(node) or part not in node:
            return False, None
        node = node._get_node(part)
    if OmegaConf.is_config(node):
        return True, OmegaConf.to_container(node, resolve=False)
    return True, node._value()


def restated(root: Path, schema: Any, skip: tuple[str, ...] = ()) -> list[str]:
    files = sorted(p for p in root.rglob("*.yaml") if "local" not in p.relative_to(root).parts)
    files = [p for p in files if not set(p.relative_to(root).parts[:-1]) & set(skip)]
    values = {p: _file_leaves(p, root) for p in files}
    offenders = []
    for path, leaves in values.items():
        for key, value in leaves.items():
            known, default = _schema_value(schema, key)
            if not known or value != default or isinstance(value, str) and "${" in value:
                continue
            before = ORDER[: ORDER.index(_group(path, root))] if _group(path, root) in ORDER else ()
            overrides = [p for p, o in values.items() if _group(p, root) in before and o.get(key, default) != default]
            if not overrides:
                offenders.append(f"{path.relative_to(root)}: {key}: {value!r} is the schema default")
    return offenders


def test_train_group_files_restate_no_schema_default() -> None:
    # experiment/ files are deltas over the other groups: setting a default back is their job.
    offenders = restated(CONF, OmegaConf.structured(TrainConfig), skip=("experiment", "curate"))
    offenders = [o for o in offenders if not o.startswith("train.yaml")]
    assert not offenders, "drop these lines (the schema in train/config.py holds the default):\n" + "\n".join(offenders)


def test_curate_group_files_restate_no_schema_default() -> None:
    offenders = restated(CONF / "curate", OmegaConf.create(schema_defaults()), skip=("experiment",))
    assert not offenders, "drop these lines (the schema in data/curation/ holds the default):\n" + "\n".join(offenders)


@pytest.mark.parametrize("value, expect", [(1.0e-4, True), (2.0e-4, False)])
def test_the_check_finds_a_restated_default(tmp_path: Path, value: float, expect: bool) -> None:
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "x.yaml").write_text(f"# @package _global_\nstage:\n  optim:\n    lr: {value}\n")
    found = restated(tmp_path, OmegaConf.structured(TrainConfig))
    assert bool(found) is expect
