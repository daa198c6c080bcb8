"""Unknown config keys are errors, with or without ``+``: the composed config, and the ``+key`` overrides before
Hydra composes, are walked against a schema dataclass (``train.config.TrainConfig``, passed in; Hydra adds a
``+key`` under ``open_dict``, so struct mode alone never sees it)."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from data.schema_types import strip_optional


def check_known_keys(cfg: Any, schema: type) -> None:
    """Every key of the composed config must be a field of the ``schema`` dataclasses.

    Hydra adds ``+group.key=value`` (the form its own "Could not override" message suggests) under ``open_dict``,
    so struct mode never sees it and the key would be silently ignored. ``dict[...]`` and ``Any`` fields stay open.
    """
    tree = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    if isinstance(tree, Mapping):
        # Hydra's own node is present only in compose(..., return_hydra_config=True); it is not ours to check.
        tree = {k: v for k, v in tree.items() if k != "hydra"}
    _check_keys(schema, tree, "")


def check_added_keys(arguments: Sequence[str], *, schema: type, conf_dir: Path) -> None:
    """The ``+key=value`` / ``++key=value`` command-line overrides name schema fields.

    Checked before Hydra composes, so that ``python -m train ... --cfg job`` (the slurm scripts' pre-submit check,
    which never calls ``validate``) fails on them too. Group selections (``+experiment=demo``) are Hydra's.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    added = [a for a in arguments if a.startswith("+")]  # Hydra's own flags start with "-", overrides never do
    try:
        overrides = OverridesParser.create().parse_overrides(added)
    except HydraException:
        return  # Hydra reports a malformed override itself
    for override in overrides:
        key = override.key_or_group
        if override.package is not None or "/" in key or (conf_dir / key).is_dir() or key.split(".")[0] == "hydra":
            continue
        value = override.value()
        _check_keys(_field_type(schema, key.split(".")), value, key)


def _field_type(schema: type, path: list[str]) -> Any:
    """The schema type at a dotted path; ValueError at the first part that is no field."""
    tp: Any = schema
    where = ""
    for part in path:
        tp = strip_optional(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                raise ValueError(_unknown_keys_message([part], names, where))
            tp = typing.get_type_hints(tp)[part]
            where = f"{where}.{part}" if where else part
        elif origin in (list, tuple) and args and part.isdigit():
            tp = args[0]
            where = f"{where}[{part}]"
        else:
            return Any  # an open dict, Any or a leaf: OmegaConf judges the rest
    return tp


def _check_keys(tp: Any, value: Any, where: str) -> None:
    tp = strip_optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        unknown = [str(k) for k in value if k not in names]
        if unknown:
            raise ValueError(_unknown_keys_message(unknown, names, where))
        for key, item in value.items():
            _check_keys(hints[key], item, f"{where}.{key}" if where else key)
    elif origin in (list, tuple) and isinstance(value, list) and args:
        for i, item in enumerate(value):
            _check_keys(args[0], item, f"{where}[{i}]")
    elif origin is dict and isinstance(value, Mapping) and len(args) == 2:
        for key, item in value.items():
            _check_keys(args[1], item, f"{where}.{key}")


def _unknown_keys_message(unknown: list[str], names: list[str], where: str) -> str:
    prefix = f"{where}." if where else ""
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, names, n=1)
        parts.append(prefix + key + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
    node = where or "the top level"
    return (
        f"unknown config key {', '.join(parts)}: {node} has no such field, and a '+' in front of a key does not "
        f"make it one; valid keys of {node}: {', '.join(sorted(names))}"
    )
