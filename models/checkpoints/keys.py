"""The one key check of the checkpoint layer: how a source state dict differs from a target's.

Every place that matches a state dict against a model (official files, stage hand-off, diffusers folders, inflation)
asks ``diff_keys`` and words its own error from the result, so "unexpected", "missing" and "shape mismatch" mean the
same thing everywhere, and ``listed`` prints them the same way: the count, then the first keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

_SHOWN = {"unexpected": 5, "missing": 5, "shapes": 3}
_LABELS = {"unexpected": "unexpected keys", "missing": "missing keys", "shapes": "shape mismatches"}


@dataclass
class KeyDiff:
    """``unexpected``: source keys the target lacks; ``missing``: target keys the source lacks (minus the allowed
    ones, which are in ``absent``); ``shapes``: one line per shared key of another shape. Keys have no prefix;
    ``prefix`` is what the messages put in front of them."""

    unexpected: list[str]
    missing: list[str]
    shapes: list[str]
    absent: list[str] = field(default_factory=list)
    prefix: str = ""

    def __bool__(self) -> bool:
        return bool(self.unexpected or self.missing or self.shapes)

    def listed(self, kind: str, label: str | None = None) -> str:
        """``"<count> <label> [first keys]"`` for ``kind`` in unexpected, missing, shapes."""
        items = getattr(self, kind)
        shown = items[: _SHOWN[kind]]
        if kind != "shapes":
            shown = with_prefix(self.prefix, shown)
        return f"{len(items)} {label or _LABELS[kind]} {shown}"


def diff_keys(
    source: Mapping[str, Tensor],
    target: Mapping[str, Any],
    *,
    prefix: str = "",
    sides: tuple[str, str] = ("source", "target"),
    absent_ok: Callable[[str], bool] | None = None,
    compare_shapes: bool = True,
) -> KeyDiff:
    """Compare ``source`` with ``target``: sorted unexpected and missing keys, shape lines in ``source`` order
    (``"<prefix><key>: <sides[0]> (shape) vs <sides[1]> (shape)"``). Missing keys ``absent_ok`` accepts go to
    ``absent`` instead of ``missing``. Without ``compare_shapes`` only the keys count (``target`` may then map to
    anything, e.g. when a conversion reshapes tensors)."""
    unexpected = sorted(set(source) - set(target))
    missing = sorted(set(target) - set(source))
    allowed = absent_ok or (lambda _key: False)
    shapes = [
        f"{prefix}{k}: {sides[0]} {tuple(v.shape)} vs {sides[1]} {tuple(target[k].shape)}"
        for k, v in source.items()
        if compare_shapes and k in target and v.shape != target[k].shape
    ]
    absent = [k for k in missing if allowed(k)]
    return KeyDiff(unexpected, [k for k in missing if not allowed(k)], shapes, absent, prefix)


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def add_prefix(prefix: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in state.items()}


def with_prefix(prefix: str, keys: Sequence[str]) -> list[str]:
    return [prefix + k for k in keys]
