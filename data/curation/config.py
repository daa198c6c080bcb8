"""The curation run's configuration: typed dataclasses built from the Hydra config in ``conf/curate/``.

Each annotator owns its config dataclass (``CutConfig``, ``ClippingConfig``, ``MotionConfig``, ...); the yaml
mirrors their fields, and ``from_mapping`` builds them, so a misspelt key fails before any video is read with
the list of valid keys. Defaults live in the dataclasses only. ``AnnotateConfig`` holds the cut detection and
clipping settings and, from the annotator registry (``annotators.py``), every annotator's own keys.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from data.curation.annotators import option_specs, registered
from data.curation.clipping import ClippingConfig
from data.curation.cuts import CutConfig
from data.curation.filters import FilterConfig, FilterSpec
from data.schema_types import strip_optional

T = TypeVar("T")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "curate"


@dataclass(frozen=True, init=False)
class AnnotateConfig:
    """``cuts``, ``clipping``, ``decode_threads`` and, in ``options``, the registered annotators' keys, which read as
    attributes too (``cfg.motion``, ``cfg.text_area``, ``cfg.clip``, ...): ``AnnotateConfig(text_area=False)``."""

    cuts: CutConfig
    clipping: ClippingConfig
    decode_threads: int  # PyAV decoder threads per process (0 = FFmpeg's choice)
    options: Mapping[str, Any]

    def __init__(
        self,
        cuts: CutConfig | None = None,
        clipping: ClippingConfig | None = None,
        decode_threads: int = 1,
        options: Mapping[str, Any] | None = None,
        **keys: Any,
    ) -> None:
        specs = option_specs()
        given = {**(options or {}), **keys}
        unknown = sorted(set(given) - set(specs))
        if unknown:
            raise TypeError(f"unknown annotate key(s) {unknown}; valid: {sorted(['cuts', 'clipping', *specs])}")
        object.__setattr__(self, "cuts", CutConfig() if cuts is None else cuts)
        object.__setattr__(self, "clipping", ClippingConfig() if clipping is None else clipping)
        object.__setattr__(self, "decode_threads", decode_threads)
        object.__setattr__(self, "options", {k: given[k] if k in given else o.make_default() for k, o in specs.items()})

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("options")
        if options is not None and name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @classmethod
    def key_types(cls) -> dict[str, Any]:
        """The type of every ``annotate`` key (its own and the annotators')."""
        hints = typing.get_type_hints(cls)
        own = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "options"}
        return {**own, **{k: o.type for k, o in option_specs().items()}}

    def as_dict(self) -> dict[str, Any]:
        """Every ``annotate`` key and its value (the annotators' keys flattened in)."""
        return {"cuts": self.cuts, "clipping": self.clipping, **self.options, "decode_threads": self.decode_threads}


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
        for annotator in registered():
            if field_name in annotator.fields:
                return annotator.missing(self.annotate, field_name)
        return None


def _convert(tp: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    tp = strip_optional(tp)
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


def _key_types(cls: type) -> dict[str, Any]:
    if cls is AnnotateConfig:
        return AnnotateConfig.key_types()
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def from_mapping(cls: type[T], data: Mapping[str, Any], *, where: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys raise with the valid ones listed."""
    hints = _key_types(cls)
    names = set(hints)
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
SUBSET_SCHEMA_NAME = "curate_subset_schema"


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
    if isinstance(value, AnnotateConfig):
        return {k: _plain(v) for k, v in value.as_dict().items()}
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def register_schema() -> None:
    """Store ``schema_defaults()`` in Hydra's ConfigStore as ``curate_schema`` (curate.yaml's first default) and a
    subset's defaults as ``curate_subset_schema`` (curate.yaml places it at each ``subsets.<name>``, so that
    ``subsets.<name>.samples_per_shard=8`` overrides without ``+``)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=schema_defaults())
    ConfigStore.instance().store(name=SUBSET_SCHEMA_NAME, node=_plain(SubsetConfig()))


def config_from_hydra(dcfg: Any) -> CurateConfig:
    """The typed config of a composed Hydra config (``conf/curate/curate.yaml``); ValueError names a bad key."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(dcfg, resolve=True)
    assert isinstance(raw, dict)
    if isinstance(raw.get("input"), str):
        raw["input"] = [raw["input"]]
    return from_mapping(CurateConfig, raw)


def compose_config(overrides: Sequence[str], *, subsets: bool = True) -> CurateConfig:
    """The typed config of ``conf/curate/curate.yaml`` with Hydra ``overrides`` (``input=...``, ``out=...`` among
    them), composed as ``python -m data.curation`` does; ``subsets=False`` drops the subsets (for a caller that runs
    no merge: their filters may need models that are not configured)."""
    from hydra import compose, initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        dcfg = compose("curate", overrides=list(overrides))
    if not subsets:
        dcfg.subsets = {}
    return config_from_hydra(dcfg)


__all__ = [
    "AnnotateConfig",
    "CurateConfig",
    "FilterConfig",
    "FilterSpec",
    "ReportConfig",
    "compose_config",
    "config_from_hydra",
    "SubsetConfig",
    "from_mapping",
]
