"""Where shards come from: source specs, their expansion and validation, and reading one shard's records.

A source spec names shards in one of four ways, freely mixed in a list:

- a local path with brace expansion: ``shards/{000000..000099}.tar`` (``file:`` prefix allowed);
- a glob: ``shards/*.tar`` (sorted, so the order is stable);
- a ``pipe:`` command whose stdout is the tar, e.g. ``pipe:aws s3 cp s3://bucket/{000..009}.tar -``
  (braces expand here too); a non-zero exit before any record is ``missing_shard``, after some records
  ``truncated_shard``;
- a list file ``@path/to/list.txt``: one spec per line, ``#`` starts a comment, relative paths are relative
  to the list file.

Several sources are mixed with weights (``SourceSpec(urls, weight)``); see ``data/stream.py``.

Reading a shard yields raw records: ``{"__key__": str, "__url__": str, "<ext>": bytes, ...}``, grouping tar
members by key the way WebDataset does (the key is the member path up to the first dot of its basename; the
extension is the rest, lower-cased). Nothing is decoded here.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from braceexpand import braceexpand

from data.atomic_write import atomic_write_bytes
from data.errors import BadSample

log = logging.getLogger(__name__)

RawRecord = dict[str, "bytes | str"]  # extension -> bytes, plus "__key__" and "__url__" (str)
_GLOB_CHARS = frozenset("*?[")


@dataclass
class SourceSpec:
    """One weighted source: ``urls`` is a list of spec strings (a single string is accepted too); ``weight`` is
    its mixing weight. Typed ``list[str]`` so that it works as a Hydra structured config."""

    urls: list[str]
    weight: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            self.urls = [self.urls]
        self.urls = list(self.urls)


@dataclass(frozen=True)
class ResolvedSource:
    """A source after expansion: its shard urls (missing local ones included, see ``missing``)."""

    name: str
    shards: tuple[str, ...]
    weight: float
    missing: tuple[str, ...]


def is_pipe(url: str) -> bool:
    return url.startswith("pipe:")


def _local_path(url: str) -> str:
    return url.removeprefix("file:")


def expand_urls(urls: str | Sequence[str], *, base_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Expand braces, globs and ``@list`` files into shard urls, keeping the given order.

    A glob that matches nothing is kept as-is so that it is reported as a missing shard (or, if nothing else
    exists, as a ValueError by ``DataSources``).
    """
    specs = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        if spec.startswith("@"):
            out += _read_list_file(_resolve(spec[1:], base_dir))
        elif is_pipe(spec):
            out += list(braceexpand(spec))
        else:
            for path in braceexpand(_local_path(spec)):
                path = _resolve(path, base_dir)
                if _GLOB_CHARS & set(path):
                    out += sorted(glob.glob(path)) or [path]
                else:
                    out.append(path)
    return out


def _resolve(path: str, base_dir: str | os.PathLike[str] | None) -> str:
    if base_dir is None or os.path.isabs(path):
        return path
    return os.path.join(base_dir, path)


def _text_lines(path: str | os.PathLike[str], missing: str) -> list[str]:
    """The lines of a utf-8 text file; ValueError(``missing``) when it does not exist."""
    if not os.path.isfile(path):
        raise ValueError(missing)
    return Path(path).read_text(encoding="utf-8").splitlines()


def _read_list_file(path: str) -> list[str]:
    lines = _text_lines(path, f"Shard list file {path!r} does not exist; write one shard spec per line or fix the path")
    specs = [line.split("#", 1)[0].strip() for line in lines]
    return expand_urls([s for s in specs if s], base_dir=os.path.dirname(os.path.abspath(path)))


def write_key_list(path: str | os.PathLike[str], keys: Sequence[str]) -> Path:
    """Write record keys one per line (in the given order), atomically: the subsets curation selects, read by
    ``read_key_list`` (the stream's ``key_list``)."""
    bad = [k for k in keys if not k or k != k.strip() or "\n" in k or "\r" in k]
    if bad:
        raise ValueError(f"keys {bad[:3]!r} cannot go in a key list (empty, or with surrounding whitespace/newlines)")
    path = Path(path)
    atomic_write_bytes(path, "".join(f"{k}\n" for k in keys).encode("utf-8"))
    return path


def read_key_list(path: str | os.PathLike[str]) -> set[str]:
    """The keys of a key list file (blank lines ignored)."""
    lines = _text_lines(path, f"key list {os.fspath(path)!r} does not exist; write it with write_key_list")
    return {line.strip() for line in lines if line.strip()}


class DataSources:
    """Expanded and validated sources: a list of ``SourceSpec`` (one per weighted source) or of plain url specs
    (all shards of a single source).

    Errors (ValueError) at build time: no sources, a source that expands to no shards, a non-positive weight,
    or a source whose local shards are all missing. A missing local shard among existing ones only warns here;
    the stream counts it as ``missing_shard`` when it reaches it. ``pipe:`` shards cannot be checked ahead.
    """

    def __init__(
        self, specs: Sequence[SourceSpec | str | Mapping[str, Any]], *, base_dir: str | os.PathLike[str] | None = None
    ) -> None:
        if isinstance(specs, (str, SourceSpec)):
            specs = [specs]
        if not specs:
            raise ValueError("No data sources given; set data.sources to a list of shard specs such as "
                             "'shards/{000000..000009}.tar' or SourceSpec(urls=..., weight=...)")  # fmt: skip
        specs = [SourceSpec(**dict(s)) if isinstance(s, Mapping) else s for s in specs]  # e.g. from a yaml config
        if all(isinstance(s, str) for s in specs):
            specs = [SourceSpec(list(specs))]  # plain urls are the shards of one source
        elif not all(isinstance(s, SourceSpec) for s in specs):
            raise ValueError("Mixed plain urls and SourceSpec in data sources; wrap the urls as SourceSpec(urls=[...])")
        resolved = [self._resolve_one(spec, i, base_dir) for i, spec in enumerate(specs)]  # type: ignore[arg-type]
        self.sources: tuple[ResolvedSource, ...] = tuple(resolved)

    @staticmethod
    def _resolve_one(spec: SourceSpec, index: int, base_dir: str | os.PathLike[str] | None) -> ResolvedSource:
        name = spec.name or f"source{index}"
        if not (math.isfinite(spec.weight) and spec.weight > 0):
            raise ValueError(f"Source {name!r} has weight {spec.weight}; weights must be finite and > 0 "
                             "(drop the source instead of giving it weight 0)")  # fmt: skip
        shards = expand_urls(spec.urls, base_dir=base_dir)
        if not shards:
            raise ValueError(f"Source {name!r} ({spec.urls!r}) expands to no shards; check the spec or list file")
        local = [s for s in shards if not is_pipe(s)]
        missing = [s for s in local if not os.path.isfile(s)]
        if local and len(missing) == len(shards):
            raise ValueError(f"All {len(shards)} shards of source {name!r} are missing (first: {missing[0]!r}); "
                             "check the path, the brace range and the working directory")  # fmt: skip
        if missing:
            log.warning("source %s: %d of %d shards missing (first: %s); they will be counted as missing_shard",
                        name, len(missing), len(shards), missing[0])  # fmt: skip
        return ResolvedSource(name, tuple(shards), float(spec.weight), tuple(missing))

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    def __len__(self) -> int:
        return len(self.sources)


def assign_shards(
    shards: Sequence[str], *, seed: int, source_index: int, epoch: int, worker: int, num_workers: int
) -> tuple[list[str], tuple[int, int] | None]:
    """Shards of global worker ``worker`` (of ``num_workers``) for one epoch, and the in-shard record split.

    Returns (shards, None) when there are at least as many shards as workers, else ([shard], (r, k)): keep
    the records whose index in the shard is r modulo k.
    """
    n = len(shards)
    perm = np.random.default_rng([seed, source_index, epoch]).permutation(n)
    if n >= num_workers:
        return [shards[i] for i in perm[worker::num_workers]], None
    slot = worker % n
    readers = len(range(slot, num_workers, n))
    return [shards[perm[slot]]], (worker // n, readers)


@contextlib.contextmanager
def open_shard(url: str) -> Iterator[tuple[IO[bytes], subprocess.Popen[bytes] | None]]:
    """Open a shard for sequential reading; yields (stream, process or None). Raises BadSample(missing_shard)."""
    if not is_pipe(url):
        try:
            f = open(_local_path(url), "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise BadSample("missing_shard", f"{url}: {e.strerror or e}") from None
        with f:
            yield f, None
        return
    # stderr goes to a file, not a pipe: an unread stderr pipe can fill up and deadlock the command.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(url[len("pipe:") :], shell=True, stdout=subprocess.PIPE, stderr=err)
        try:
            assert proc.stdout is not None
            yield proc.stdout, proc
        finally:
            if proc.poll() is None:
                proc.kill()  # the consumer stopped early (end of a worker's share, exception): do not hang
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _pipe_status(proc: subprocess.Popen[bytes] | None) -> int:
    if proc is None:
        return 0
    assert proc.stdout is not None
    proc.stdout.read()  # drain so the command can exit
    return proc.wait()


def _split_name(name: str) -> tuple[str, str]:
    dirname, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (os.path.join(dirname, stem) if dirname else stem), ext.lower()


def iter_shard_records(url: str) -> Iterator[RawRecord]:
    """Yield the raw records of one shard in tar order, without decoding anything.

    Raises BadSample("missing_shard") if the shard cannot be opened (or a pipe fails before any record) and
    BadSample("truncated_shard") when the tar ends mid-member or without its end-of-archive block; the
    records before the damage have been yielded already, the partial record at the damage is dropped.
    """
    with open_shard(url) as (stream, proc):
        n_records = 0
        current: RawRecord | None = None
        try:
            tf = tarfile.open(fileobj=stream, mode="r|*")
            for member in tf:
                if not member.isfile():
                    continue
                key, ext = _split_name(member.name)
                if not ext or os.path.basename(key).startswith("__"):
                    continue
                data = tf.extractfile(member).read()  # type: ignore[union-attr]
                if current is not None and current["__key__"] != key:
                    n_records += 1
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[ext] = data
            # tarfile stops silently at a short or empty header; only a full (zero) block is a proper end.
            if tf.fileobj.tell() - tf.offset < tarfile.BLOCKSIZE:  # type: ignore[union-attr]
                raise tarfile.ReadError("no end-of-archive block")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            status = _pipe_status(proc)
            if status != 0 and n_records == 0:
                raise BadSample("missing_shard", f"{url}: command exited with {status}") from None
            raise BadSample("truncated_shard", f"{url}: {e} after {n_records} records") from None
        status = _pipe_status(proc)
        if status != 0:
            reason = "missing_shard" if n_records == 0 and current is None else "truncated_shard"
            raise BadSample(reason, f"{url}: command exited with {status}")
        if current is not None:
            yield current
