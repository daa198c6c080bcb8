"""Write WebDataset shards atomically and resumably: ``webdataset.TarWriter`` under a temporary name, and per-shard
``.done`` markers.

``ShardWriter`` streams records into ``NAME.tar`` through ``webdataset.TarWriter`` (members ``KEY.EXT`` in sorted
extension order, fixed mtime, owner and mode, so the same records give byte-identical shards) under a temporary
name and renames it on success, so a killed job never leaves a partial shard under its final name. A job that
transforms shards one to one (the latent cache) writes ``NAME.tar.done`` after each finished shard; a re-run skips
shards whose marker exists and redoes the others. ``data/atomic_write.py`` writes any other output file the same way
(temporary name, then rename). ``output_names`` maps input shard urls to output names that keep their relative layout.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlparse

from webdataset import TarWriter

from data.atomic_write import atomic_write_bytes, temp_path
from data.sources import is_pipe, is_remote

TAR_MTIME = 1_700_000_000  # fixed member metadata so that the same records give byte-identical shards
DONE_SUFFIX = ".done"


class ShardWriter:
    """``with ShardWriter(path) as w: w.write(key, {"json": b"...", ...})``; renamed into place on a clean exit."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.tmp = temp_path(self.path)
        self.count = 0
        self._file: IO[bytes] | None = None
        self._tar: TarWriter | None = None

    def __enter__(self) -> ShardWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in __exit__
        # encoder=False: members are bytes already; user/group/mode/mtime fixed for byte-reproducible shards
        self._tar = TarWriter(self._file, user="", group="", mode=0o644, encoder=False, mtime=TAR_MTIME)
        return self

    def write(self, key: str, members: Mapping[str, bytes]) -> None:
        """Add one record: ``KEY.EXT`` for each extension, in sorted order (WebDataset groups by key)."""
        assert self._tar is not None, "use ShardWriter as a context manager"
        bad = [ext for ext in members if not ext or ext.startswith("_")]
        if not key or bad:  # TarWriter would drop "_" extensions silently; an empty one is no member for a reader
            raise ValueError(f"record {key!r}: empty key or extensions {bad!r} (empty or starting with '_')")
        self._tar.write({"__key__": key, **members})
        self.count += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            assert self._tar is not None and self._file is not None
            try:
                self._tar.close()  # the end-of-archive blocks; TarWriter leaves a file it did not open to us
            except Exception:
                if exc_type is None:
                    raise
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                os.replace(self.tmp, self.path)
        finally:
            if self._file is not None and not self._file.closed:
                self._file.close()
            if self.tmp.exists():
                self.tmp.unlink()


def done_marker(path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(path)}{DONE_SUFFIX}")


def is_done(path: str | os.PathLike[str]) -> bool:
    """True when the shard and its ``.done`` marker both exist (a shard without a marker is redone)."""
    return Path(path).is_file() and done_marker(path).is_file()


def mark_done(path: str | os.PathLike[str], summary: Mapping[str, Any]) -> None:
    """Write the marker (a json summary of the shard) atomically, after the shard itself is in place."""
    atomic_write_bytes(done_marker(path), (json.dumps(dict(summary), sort_keys=True) + "\n").encode("utf-8"))


def _pipe_shard_name(url: str) -> str:
    tokens = [t for t in shlex.split(url[len("pipe:") :]) if ".tar" in os.path.basename(t)]
    if not tokens:
        raise ValueError(f"cannot tell the shard name of {url!r}; name the .tar in the command (e.g. ... x/000.tar -)")
    return os.path.basename(tokens[-1].rstrip("/"))


def _remote_shard_name(url: str) -> str:
    name = os.path.basename(urlparse(url).path.rstrip("/"))
    if not name:
        raise ValueError(f"cannot tell the shard name of {url!r}; the url path should end in the shard's file name")
    return name


def output_names(urls: Sequence[str]) -> list[str]:
    """Relative output names for input shards: paths relative to the local shards' common folder (so
    ``clips/00000.tar`` and ``images/00000.tar`` stay apart), the file name of the ``.tar`` for ``pipe:`` urls and
    the last path part of other remote urls (``http://host/x/00000.tar`` -> ``00000.tar``).
    ValueError when two inputs would get the same name."""
    local = [os.path.abspath(u.removeprefix("file:")) for u in urls if not is_remote(u)]
    root = os.path.commonpath([os.path.dirname(p) for p in local]) if local else ""
    names = []
    for url in urls:
        if is_pipe(url):
            names.append(_pipe_shard_name(url))
        elif is_remote(url):
            names.append(_remote_shard_name(url))
        else:
            names.append(os.path.relpath(os.path.abspath(url.removeprefix("file:")), root))
    seen: dict[str, str] = {}
    for url, name in zip(urls, names, strict=True):
        if name in seen:
            raise ValueError(
                f"input shards {seen[name]!r} and {url!r} would both be written as {name!r}; cache them "
                "in separate runs with separate --out folders"
            )
        seen[name] = url
    return names
