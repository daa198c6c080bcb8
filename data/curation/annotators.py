"""The curation annotator interface and its registry: what ``annotate.py``, the config, the report and
``scripts/bench_curation.py`` iterate, so none of them names an annotator.

An annotator is a subclass of ``Annotator`` that says

- ``name``: its registry name (also its stage name in ``scripts/bench_curation.py``);
- ``options``: the keys it owns under ``annotate`` (``annotate.<key>``), each with its type and default, e.g. a
  switch ``text_area: bool = True`` and a config dataclass ``text: TextAreaConfig``. ``AnnotateConfig`` (and the
  Hydra schema ``curate_schema``) is built from them, so a misspelt key fails at composition;
- ``needs``: what it reads of a video: ``"scan"`` = frames of the single decode pass through a ``FrameTap``
  (``taps.py``; the tap names its own ``fps`` and ``short_side``), made per video by ``tap()``; ``"keyframes"`` =
  only the clip's first, middle and last frames at full size (``ClipContext.frames``);
- ``fields``: the record fields it writes; the report draws a histogram of each numeric one (in registry order) and
  the subsets' filters may use them (a label such as ``camera_motion`` through a filter's ``values``; ``missing``
  says why a field will not be there with a config);
- ``cheap``: whether ``bench_curation`` counts it in its ``pipeline`` figure (False for the model scores).

It is built once per process from the ``AnnotateConfig`` (``__init__``: load models there), only when
``enabled(cfg)``; then ``annotate(clip)`` fills its fields into ``clip.record`` for every clip, in registry order
(a later annotator sees ``clip.captions`` as the earlier ones left them). ``register_annotator`` adds one,
``unregister_annotator`` removes it; the built-in ones (``BUILTIN``) are registered first, in that order.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

if TYPE_CHECKING:
    from data.curation.config import AnnotateConfig
    from data.curation.inputs import RawVideo
    from data.curation.taps import FrameTap

# The built-in annotators, registered in this order (clip scores come after the captioner: they score its captions).
BUILTIN = (
    ("data.curation.motion", "MotionAnnotator"),
    ("data.curation.text_area", "TextAreaAnnotator"),
    ("data.curation.captioner", "CaptionerAnnotator"),
    ("data.curation.clip_scores", "ClipScoreAnnotator"),
)
_REGISTRY: dict[str, type[Annotator]] = {}
_builtins_loaded = False


@dataclass(frozen=True)
class Option:
    """One key an annotator owns under ``annotate``: its type (for conversion and the schema) and its default
    (``default``, or ``factory()`` for a dataclass or a mapping)."""

    key: str
    type: Any
    default: Any = None
    factory: Callable[[], Any] | None = None

    def make_default(self) -> Any:
        return self.factory() if self.factory is not None else self.default


@dataclass
class ClipContext:
    """One clip as the annotators see it; each writes its fields into ``record``."""

    raw: RawVideo
    record: dict[str, Any]  # key, source, start_s/end_s, num_frames, fps, width, height, ...
    frames: list[np.ndarray]  # the clip's first, middle and last frames, (H, W, 3) uint8 RGB at full size
    captions: dict[str, str] = field(default_factory=dict)  # "source" (the input's), then each captioner's
    taps: Mapping[str, FrameTap] = field(default_factory=dict)  # this video's scan taps, by annotator name


class Annotator:
    """Base class of a curation annotator (see the module docstring)."""

    name: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    needs: ClassVar[Literal["scan", "keyframes"]] = "keyframes"
    fields: ClassVar[tuple[str, ...]] = ()
    cheap: ClassVar[bool] = True

    def __init__(self, cfg: AnnotateConfig) -> None:
        self.cfg = cfg

    @classmethod
    def enabled(cls, cfg: AnnotateConfig) -> bool:
        """Whether this config runs the annotator (built and called)."""
        return True

    @classmethod
    def missing(cls, cfg: AnnotateConfig, field_name: str) -> str | None:
        """Why ``field_name`` (one of ``fields``) will not be annotated with ``cfg``; None when it will."""
        return None if cls.enabled(cfg) else f"the {cls.name} annotator is off"

    def tap(self) -> FrameTap | None:
        """A fresh tap for one video's decode pass (``needs == "scan"``); ``annotate`` finds it in ``clip.taps``."""
        return None

    def annotate(self, clip: ClipContext) -> None:
        raise NotImplementedError(f"{type(self).__name__}.annotate")


def round_score(value: float | None, digits: int = 6) -> float | None:
    """A record value: rounded to ``digits`` so that records are stable text; None stays None."""
    return None if value is None else round(float(value), digits)


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for module, name in BUILTIN:
        register_annotator(getattr(importlib.import_module(module), name))


def register_annotator(cls: type[Annotator]) -> type[Annotator]:
    """Add ``cls`` to the registry (after the ones there); usable as a class decorator."""
    _load_builtins()
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"an annotator named {cls.name!r} is registered already ({_REGISTRY[cls.name].__name__})")
    taken = {o.key: a.name for a in _REGISTRY.values() if a is not cls for o in a.options}
    clash = [f"{o.key} ({taken[o.key]})" for o in cls.options if o.key in taken or o.key in CORE_KEYS]
    if clash:
        raise ValueError(f"annotator {cls.name!r}: option key(s) {', '.join(clash)} are taken")
    _REGISTRY[cls.name] = cls
    return cls


def unregister_annotator(name: str) -> None:
    """Remove the annotator ``name`` (tests; a built-in one comes back only in a new process)."""
    _REGISTRY.pop(name)


def registered() -> list[type[Annotator]]:
    """Every registered annotator class, in order."""
    _load_builtins()
    return list(_REGISTRY.values())


def option_specs() -> dict[str, Option]:
    """Every registered annotator's ``annotate`` keys, in registry order."""
    return {o.key: o for a in registered() for o in a.options}


def score_fields() -> list[str]:
    """The record fields the registered annotators write, in registry order (the report plots the numeric ones)."""
    return [f for a in registered() for f in a.fields]


CORE_KEYS = ("cuts", "clipping", "decode_threads", "options")  # AnnotateConfig's own keys
