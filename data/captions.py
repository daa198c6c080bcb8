"""Pick one caption per sample from the caption fields its json carries, with configured probabilities.

SVD trains with three captions per clip drawn with p_CoCa 0.5, p_V-BLIP 0.25, p_LLM 0.25 (RECIPE section 6).
A field is looked up as ``json["captions"][name]`` first, then ``json[name]``; it counts as available when it is a
non-empty string (or a non-empty list of them, one drawn uniformly). The probabilities are renormalised over the
available fields, so a clip with only CoCa and LLM captions draws them 2:1. With none available the picker falls
back to ``fallback_fields`` in order (``caption``, as video2dataset/img2dataset write it), then the ``.txt``
member, then the empty string (``source="none"``: an unconditional sample, which the stream can count).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SVD_CAPTION_PROBABILITIES: dict[str, float] = {"coca": 0.5, "vblip": 0.25, "llm": 0.25}


@dataclass(frozen=True)
class CaptionChoice:
    text: str
    source: str  # the field name, "txt", or "none"


def _caption_value(meta: Mapping[str, Any], name: str) -> str | list[str] | None:
    nested = meta.get("captions")
    for holder in (nested if isinstance(nested, Mapping) else None, meta):
        if holder is None or name not in holder:
            continue
        value = holder[name]
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, (list, tuple)):
            texts = [v.strip() for v in value if isinstance(v, str) and v.strip()]
            if texts:
                return texts
    return None


def _one(value: str | list[str], rng: np.random.Generator) -> str:
    if isinstance(value, str):
        return value
    return value[int(rng.integers(0, len(value)))] if len(value) > 1 else value[0]


@dataclass(frozen=True)
class CaptionPicker:
    """Draws a caption field by ``probabilities`` among those present; see the module docstring for fallbacks."""

    probabilities: Mapping[str, float] = field(default_factory=lambda: dict(SVD_CAPTION_PROBABILITIES))
    fallback_fields: tuple[str, ...] = ("caption",)
    use_txt: bool = True

    def __post_init__(self) -> None:
        for name, p in self.probabilities.items():
            if not (isinstance(p, (int, float)) and math.isfinite(p) and p >= 0):
                raise ValueError(f"caption probability for {name!r} must be a finite number >= 0; got {p!r}")
        if self.probabilities and sum(self.probabilities.values()) <= 0:
            raise ValueError(f"caption probabilities must not all be 0; got {dict(self.probabilities)}")
        object.__setattr__(self, "fallback_fields", tuple(self.fallback_fields))

    def pick(
        self, meta: Mapping[str, Any] | None, *, txt: str | None = None, rng: np.random.Generator
    ) -> CaptionChoice:
        """Choose the caption of one sample; ``txt`` is the decoded ``.txt`` member if the sample has one."""
        meta = meta if meta is not None else {}
        names, weights, values = [], [], []
        for name, p in self.probabilities.items():
            value = _caption_value(meta, name) if p > 0 else None
            if value is not None:
                names.append(name)
                weights.append(float(p))
                values.append(value)
        if names:
            cumulative = np.cumsum(weights) / sum(weights)
            i = int(np.searchsorted(cumulative, rng.random(), side="right")) if len(names) > 1 else 0
            i = min(i, len(names) - 1)  # guards rng.random() landing on a rounded-down last cumulative value
            return CaptionChoice(_one(values[i], rng), names[i])
        for name in self.fallback_fields:
            value = _caption_value(meta, name)
            if value is not None:
                return CaptionChoice(_one(value, rng), name)
        if self.use_txt and txt is not None and txt.strip():
            return CaptionChoice(txt.strip(), "txt")
        return CaptionChoice("", "none")
