"""What the curation reads: raw videos from a folder (or single files) or from video2dataset shards.

An input spec is a folder (every video file under it, recursively; or, when it holds no videos, every ``.tar``
shard under it), a video file, or shards in any form
``data/sources.py`` accepts (brace ranges, globs, ``@list.txt``, ``pipe:`` commands). Inputs are grouped into
*units*, the pieces of work with one output each: one shard, or one video file. Units are sorted by name, so
``part I/K`` (a SLURM array task, or one of several local processes) always gets the same units:
``units[I::K]``.

A raw video carries what its source knew about it: the shard json (``KEY.json``, kept under ``source_meta``)
and its caption (``KEY.txt``, or a ``caption`` field of the json), which the curated clips keep.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data.errors import BadSample
from data.sources import expand_urls, is_remote, iter_shard_records

VIDEO_EXTENSIONS = ("mp4", "mkv", "webm", "mov", "avi", "m4v", "mpg", "mpeg", "ts", "flv", "wmv", "3gp", "gif")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class InputUnit:
    """One piece of work: a shard (``kind="shard"``, many videos) or one video file (``kind="file"``)."""

    name: str  # relative output name without extension, e.g. "raw/00000" or "cats/clip_a"
    kind: Literal["shard", "file"]
    url: str


@dataclass
class RawVideo:
    """One raw video: its bytes or its path, and what its source said about it."""

    key: str  # unique within its unit; clip keys are f"{key}_{i:04d}"
    source: str  # "shard.tar:KEY" or the file path, for the report and the clip json
    path: str | None = None
    data: bytes | None = None
    ext: str = "mp4"
    source_meta: dict[str, Any] = field(default_factory=dict)
    caption: str | None = None
    problem: str | None = None  # set when the record itself is unusable (no video member, bad json)


def safe_name(text: str) -> str:
    """A file-name-safe version of a key or path piece (other characters become ``_``)."""
    return _UNSAFE.sub("_", text).strip("_") or "video"


def _is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower().lstrip(".") in VIDEO_EXTENSIONS


def list_units(spec: str | Sequence[str]) -> list[InputUnit]:
    """Expand input specs into sorted, uniquely named units. ValueError when nothing is found."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise ValueError("no input given: set input=<folder of videos | video file | shards>")
    units: list[InputUnit] = []
    for one in specs:
        path = Path(one)
        if not one.startswith(("pipe:", "@")) and path.is_dir():
            files = sorted(p for p in path.rglob("*") if _is_video_file(p))
            if not files:
                shards = sorted(p for p in path.rglob("*.tar") if p.is_file())
                if not shards:
                    raise ValueError(
                        f"input folder {one} holds no video files ({', '.join(VIDEO_EXTENSIONS)}) and no .tar shards"
                    )
                units.extend(InputUnit(_shard_unit_name(str(p)), "shard", str(p)) for p in shards)
                continue
            for f in files:
                rel = f.relative_to(path).with_suffix("")
                units.append(InputUnit("/".join(safe_name(p) for p in rel.parts), "file", str(f)))
        elif not one.startswith(("pipe:", "@")) and _is_video_file(path):
            units.append(InputUnit(safe_name(path.stem), "file", str(path)))
        else:
            urls = expand_urls(one)
            if not urls:
                raise ValueError(f"input {one!r} matches no shards or video files")
            for url in urls:
                if not is_remote(url) and not Path(url.removeprefix("file:")).exists():
                    raise ValueError(f"input shard {url} does not exist")
                units.append(InputUnit(_shard_unit_name(url), "shard", url))
    units.sort(key=lambda u: u.name)
    seen: dict[str, str] = {}
    for u in units:
        if u.name in seen:
            raise ValueError(f"inputs {seen[u.name]!r} and {u.url!r} would both be written as {u.name!r}")
        seen[u.name] = u.url
    return units


def _shard_unit_name(url: str) -> str:
    if url.startswith("pipe:"):
        tokens = [t for t in url.split() if ".tar" in t]
        base = os.path.basename(tokens[-1]) if tokens else url
    else:
        local = Path(url.removeprefix("file:"))
        base = f"{local.parent.name}/{local.name}" if local.parent.name else local.name
    return "/".join(safe_name(p) for p in base.removesuffix(".tar").split("/"))


def parse_part(part: str | None, *, env: dict[str, str] | None = None) -> tuple[int, int]:
    """``"I/K"`` -> (I, K); None -> this process's SLURM array task (``SLURM_ARRAY_TASK_ID`` and
    ``SLURM_ARRAY_TASK_COUNT`` relative to ``SLURM_ARRAY_TASK_MIN``), else (0, 1)."""
    env = dict(os.environ) if env is None else env
    if part is None or part == "":
        if "SLURM_ARRAY_TASK_ID" not in env:
            return 0, 1
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        index, count = int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
    else:
        try:
            index, count = (int(v) for v in str(part).split("/"))
        except ValueError:
            raise ValueError(f'part must look like "I/K" (this is part I of K, 0-based); got {part!r}') from None
    if not 0 <= index < count:
        raise ValueError(f"part {index}/{count}: need 0 <= I < K")
    return index, count


def units_of_part(units: Sequence[InputUnit], index: int, count: int) -> list[InputUnit]:
    return list(units[index::count])


def _caption_of(meta: dict[str, Any], txt: bytes | None) -> str | None:
    if txt is not None:
        text = txt.decode("utf-8", errors="replace").strip()
        if text:
            return text
    for name in ("caption", "text", "title"):
        value = meta.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _record_video(record: dict[str, Any], url: str) -> RawVideo:
    key = str(record["__key__"])
    raw = RawVideo(key=safe_name(key), source=f"{url}:{key}")
    json_bytes = record.get("json")
    if isinstance(json_bytes, bytes):
        try:
            meta = json.loads(json_bytes)
            raw.source_meta = meta if isinstance(meta, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raw.source_meta = {}  # a bad json loses only the metadata, not the video
    txt = record.get("txt")
    raw.caption = _caption_of(raw.source_meta, txt if isinstance(txt, bytes) else None)
    for ext in VIDEO_EXTENSIONS:
        if isinstance(record.get(ext), bytes):
            raw.data, raw.ext = record[ext], ext
            break
    else:
        raw.problem = "no video member (" + ", ".join(k for k in record if not k.startswith("__")) + ")"
    return raw


def iter_videos(unit: InputUnit) -> Iterator[RawVideo]:
    """The raw videos of a unit. A shard that is missing or truncated raises BadSample after the readable
    records (the caller counts it); a video file is yielded as a path, with a sidecar ``.json``/``.txt`` if any."""
    if unit.kind == "file":
        path = Path(unit.url)
        meta: dict[str, Any] = {}
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                loaded = json.loads(sidecar.read_text(encoding="utf-8"))
                meta = loaded if isinstance(loaded, dict) else {}
            except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                meta = {}
        txt = path.with_suffix(".txt")
        caption = _caption_of(meta, txt.read_bytes() if txt.is_file() else None)
        yield RawVideo(
            key=safe_name(path.stem), source=str(path), path=str(path), ext=path.suffix.lower().lstrip("."),
            source_meta=meta, caption=caption,
        )  # fmt: skip
        return
    seen: set[str] = set()
    for record in iter_shard_records(unit.url):
        raw = _record_video(record, unit.url)
        if raw.key in seen:
            raw.problem = f"duplicate key {raw.key} in the shard"
        seen.add(raw.key)
        yield raw


__all__ = ["BadSample", "InputUnit", "RawVideo", "iter_videos", "list_units", "parse_part", "units_of_part"]
