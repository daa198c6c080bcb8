"""Typing helpers shared by the config schemas (train/config_keys.py, data/curation/config.py)."""

from __future__ import annotations

import types
import typing
from typing import Any


def strip_optional(tp: Any) -> Any:
    """``X | None`` (or ``Optional[X]``) -> ``X``; any other annotation unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp
