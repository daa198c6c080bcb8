"""The curation run's configuration: typed dataclasses built from the Hydra config in ``conf/curate/``.

Each annotator owns its config dataclass (``CutConfig``, ``ClipConfig``, ``MotionConfig``, ...); the yaml
mirrors their fields, and ``from_mapping`` builds them, so a misspelt key fails before any video is read with
the list of valid keys. Defaults live in the dataclasses only.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from data.curation.clip_scores import ClipScoreConfig
from data.curation.clipping import ClipConfig
from data.curation.cuts import CutConfig
from data.curation.filters import FilterConfig, FilterSpec
from data.curation.motion import MotionConfig
from data.curation.text_area import TextAreaConfig

T = TypeVar("T")


@dataclass(frozen=True)
class AnnotateConfig:
    cuts: CutConfig = field(default_factory=CutConfig)
    clipping: ClipConfig = field(default_factory=ClipConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    text_area: bool = True  # PP-OCR text area on the first/middle/last frames
    text: TextAreaConfig = field(default_factory=TextAreaConfig)
    clip_scores: bool = True  # CLIP aesthetics and caption similarity
    clip: ClipScoreConfig = field(default_factory=ClipScoreConfig)
    captioner: str = "coca"  # "coca" or "none"; source captions are always kept
    captioner_options: Mapping[str, Any] = field(default_factory=dict)
    decode_threads: int = 1  # PyAV decoder threads per process (0 = FFmpeg's choice)


@dataclass(frozen=True)
class SubsetConfig:
    """A filtered subset: written as a key list, and as shards when ``write_shards``."""

    filters: FilterConfig = field(default_factory=lambda: FilterConfig(filters=()))
    write_shards: bool = True
    samples_per_shard: int = 1000


@dataclass(frozen=True)
class ReportConfig:
    enabled: bool = True
    title: str = "Curation report"


@dataclass(frozen=True)
class CurateConfig:
    input: tuple[str, ...] = ()
    out: str = ""
    step: Literal["all", "annotate", "merge"] = "all"
    part: str | None = None  # "I/K"; None = the SLURM array task, else everything
    workers: int = 1  # local processes, each annotating whole input units
    threads_per_worker: int = 1  # torch / OpenCV / onnxruntime threads in each process
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    subsets: Mapping[str, SubsetConfig] = field(default_factory=dict)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        if self.step not in ("all", "annotate", "merge"):
            raise ValueError(f'step must be "all", "annotate" or "merge"; got {self.step!r}')
        if not self.out:
            raise ValueError("set out=<folder> for the curated clips, subsets and report")
        if self.step != "merge" and not self.input:
            raise ValueError("set input=<folder of videos | video file | shards> (a list is fine)")
        if self.workers < 1 or self.threads_per_worker < 1:
            raise ValueError(
                f"workers and threads_per_worker must be >= 1; got {self.workers}, {self.threads_per_worker}"
            )
        for name, subset in self.subsets.items():
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"subset names become folder names; {name!r} is not usable")
            for spec in subset.filters.filters:
                problem = self._unannotated(spec.field)
                if problem:
                    raise ValueError(f"subset {name!r} filters on {spec.field!r}, but {problem}")

    def _unannotated(self, field_name: str) -> str | None:
        """Why a filter field will never be annotated with this config (None when it will be)."""
        a = self.annotate
        if field_name == "aesthetic" and (not a.clip_scores or a.clip.aesthetic_head is None):
            return (
                "no aesthetic head is configured: set annotate.clip.aesthetic_head=<LAION aesthetic predictor file "
                "for the CLIP model> or use a filter set without it (e.g. filters@subsets.<name>.filters=motion_text)"
            )
        if field_name == "clip_similarity" and not a.clip_scores:
            return "annotate.clip_scores is off"
        if field_name in ("text_area",) and not a.text_area:
            return "annotate.text_area is off"
        return None


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _convert(tp: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return from_mapping(tp, value, where=where)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict, typing.Mapping) and isinstance(value, Mapping):
        args = typing.get_args(tp)
        item = args[1] if len(args) == 2 else Any
        return {k: _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any], *, where: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys raise with the valid ones listed."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where or cls.__name__}: {e}") from e


SCHEMA_NAME = "curate_schema"


def schema_defaults() -> dict[str, Any]:
    """Every default of the run as a plain nested dict (from the dataclasses), so that the composed Hydra config
    lists every key: ``annotate.motion.fps=2`` overrides without ``+``, and a misspelt key fails at composition."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(CurateConfig):
        if f.name in ("input", "out", "subsets"):
            continue  # required (curate.yaml) or assembled from the filters group
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def register_schema() -> None:
    """Store ``schema_defaults()`` in Hydra's ConfigStore as ``curate_schema`` (curate.yaml's first default)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=schema_defaults())


def config_from_hydra(dcfg: Any) -> CurateConfig:
    """The typed config of a composed Hydra config (``conf/curate/curate.yaml``); ValueError names a bad key."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(dcfg, resolve=True)
    assert isinstance(raw, dict)
    if isinstance(raw.get("input"), str):
        raw["input"] = [raw["input"]]
    return from_mapping(CurateConfig, raw)


__all__ = [
    "AnnotateConfig",
    "CurateConfig",
    "FilterConfig",
    "FilterSpec",
    "ReportConfig",
    "config_from_hydra",
    "SubsetConfig",
    "from_mapping",
]
