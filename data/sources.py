"""Where shards come from: source specs, their expansion and validation, and reading one shard's records.

Shards are opened and read with the ``webdataset`` library: ``webdataset.gopen`` opens a url and
``webdataset.tariterators`` turns the tar stream into samples; this module adds the expansion of specs, the
checks, and what the stream needs on top (error reasons, the end-of-archive check). A source spec names shards
in one of these ways, freely mixed in a list:

- a local path with brace expansion: ``shards/{000000..000099}.tar`` (``file:`` prefix allowed);
- a glob: ``shards/*.tar`` (sorted, so the order is stable);
- a url of a scheme webdataset opens (braces expand, nothing is checked ahead): ``pipe:CMD`` (the tar is CMD's
  stdout, e.g. ``pipe:aws s3 cp s3://bucket/{000..009}.tar -``: ``s3://`` and other stores without an opener
  are read this way), ``http://`` / ``https://`` / ``sftp://`` / ``ftps://`` / ``scp://`` (through ``curl``,
  as webdataset runs it: ``-f``, 30 s connect timeout, retries on timeouts and 5xx; for other curl options
  use ``pipe:curl ... URL``), ``gs://`` (``gsutil cat``), ``ais://``, ``hf://`` (``webdataset.gopen_schemes``);
- a list file ``@path/to/list.txt``: one spec per line, ``#`` starts a comment, relative paths are relative
  to the list file.

Several sources are mixed with weights (``SourceSpec(urls, weight)``); see ``data/stream.py``.

Reading a shard yields raw records: ``{"__key__": str, "__url__": str, "<ext>": bytes, ...}``, grouped by
``webdataset.tariterators.group_by_keys``. Nothing is decoded here. The grouping follows webdataset's
``base_plus_ext`` (the key is the member path up to the first dot of its basename; the extension is the rest,
lower-cased), with these differences from a plain ``webdataset.WebDataset``: members without an extension are
dropped (webdataset keeps ``KEY.`` as extension ``""``); a member whose basename starts with ``__`` is skipped
anywhere in the tree (webdataset skips ``__NAME__`` files and top-level ``__NAME__/`` folders); a repeated
``KEY.EXT`` within one record keeps the first member and warns (webdataset raises). A member whose basename
starts with a dot (``.x.jpg``) has no key for either.

Errors are ``BadSample`` reasons that the stream counts: ``missing_shard`` when the shard cannot be opened, or a
command / download fails (non-zero exit, e.g. curl's 22 for an HTTP 404) before any record; ``truncated_shard``
when the tar is damaged or cut short, or the command / download fails after some records: the records before the
damage have been yielded, the one at the damage is dropped. Python's tarfile, which webdataset reads with, stops
silently at an empty or short header, so a tar cut at a member boundary (a dropped connection) would look
complete; ``_EndChecked`` catches that: a well-formed tar ends with a zero block, so reading never needs
bytes past the end of the stream. Commands are read from their stdout directly and their exit status checked at
the end (``webdataset.gopen.Pipe.read`` raises as soon as a command has failed, dropping the bytes of that read).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import tarfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import webdataset
from braceexpand import braceexpand
from webdataset.gopen import Pipe, gopen
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

from data.atomic_write import atomic_write_bytes
from data.errors import BadSample

log = logging.getLogger(__name__)

RawRecord = dict[str, "bytes | str"]  # extension -> bytes, plus "__key__" and "__url__" (str)
_GLOB_CHARS = frozenset("*?[")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_CHUNK = 1 << 20  # bytes per read when draining the rest of a command's output


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


def url_scheme(url: str) -> str:
    """The webdataset opener scheme of a shard url (``pipe``, ``http``, ...), ``""`` for a local path (``file:``
    included). ValueError for a ``NAME://`` url that webdataset has no opener for."""
    match = _SCHEME.match(url)
    if match is None:
        return ""
    scheme = match.group(1).lower()
    if scheme != "file" and scheme in webdataset.gopen_schemes:
        return scheme
    if scheme != "file" and url[match.end() :].startswith("//"):
        known = sorted(k for k in webdataset.gopen_schemes if not k.startswith("__"))
        raise ValueError(f"no webdataset opener for {scheme}:// in {url!r} (known: {', '.join(known)}); read "
                         f"it through a command, e.g. 'pipe:aws s3 cp {url} -'")  # fmt: skip
    return ""  # a local path (a colon in a file name is allowed)


def is_remote(url: str) -> bool:
    """True for urls that webdataset opens with a command or a download (cannot be checked ahead)."""
    return url_scheme(url) != ""


def is_pipe(url: str) -> bool:
    return url_scheme(url) == "pipe"


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
        elif is_remote(spec):
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
    the stream counts it as ``missing_shard`` when it reaches it. Remote shards (``pipe:``, ``http://``, ...)
    cannot be checked ahead.
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
        local = [s for s in shards if not is_remote(s)]
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


class _CutShort(Exception):
    """The byte stream of a shard ended before its end-of-archive block."""


class _EndChecked:
    """The shard's byte stream as tarfile reads it, raising ``_CutShort`` on a read past its end (see the module
    docstring: a complete tar never needs one)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if not data and size != 0:
            raise _CutShort("the stream ended before the end-of-archive block")
        return data


def _open(url: str) -> IO[bytes] | Pipe:
    """``webdataset.gopen`` of a shard url; BadSample(missing_shard) when it cannot be opened."""
    # local paths go in absolute, so that a colon in a relative name is not taken for a url scheme
    target = url if is_remote(url) else os.path.abspath(_local_path(url))
    try:
        return gopen(target, "rb")
    except OSError as e:  # a missing local file, or a command (curl, gsutil, ...) that is not installed
        raise BadSample("missing_shard", f"{url}: {e.strerror or e}") from None


def _failed_status(stream: IO[bytes] | Pipe) -> int | None:
    """A command's exit status once its output is drained, when it counts as a failure; None for success or a
    local file."""
    if not isinstance(stream, Pipe):
        return None
    while stream.stream.read(_CHUNK):
        pass
    status = stream.proc.wait()
    return None if status in stream.ignore_status else status


def _close(stream: IO[bytes] | Pipe) -> None:
    if not isinstance(stream, Pipe):
        stream.close()
        return
    stream.stream.close()  # a command still writing (the consumer stopped early) gets SIGPIPE
    if stream.proc.poll() is None:
        stream.proc.kill()  # and one that does not write any more must not hang the reader
    stream.proc.wait()


def _members(url: str, stream: IO[bytes] | Pipe) -> Iterator[dict[str, Any]]:
    """webdataset's member dicts (``fname``, ``data``, ``__url__``); a failed command raises at the end, so the
    last record (not yet yielded by the grouping) counts as the damaged one."""
    raw = stream.stream if isinstance(stream, Pipe) else stream
    for member in tar_file_iterator(_EndChecked(raw), skip_meta=None, select_files=_keep_member):
        member["__url__"] = url
        yield member
    status = _failed_status(stream)
    if status is not None:
        raise _CutShort(f"command exited with {status}")


def _keep_member(name: str) -> bool:
    return not os.path.basename(name).startswith("__")


def split_member_name(name: str) -> tuple[str | None, str | None]:
    """(key, extension) of a tar member as webdataset groups it (``base_plus_ext``); (None, None) for a member
    without an extension, which is dropped."""
    key, ext = base_plus_ext(name)
    return (key, ext) if ext else (None, None)


def _duplicate_member(exn: Exception) -> bool:
    """group_by_keys' handler: its only error is a repeated ``KEY.EXT`` within a record; keep the first."""
    log.warning("%s; keeping the first", exn.args[0])
    return True


def iter_shard_records(url: str) -> Iterator[RawRecord]:
    """Yield the raw records of one shard in tar order, without decoding anything (``webdataset.gopen`` opens it,
    ``webdataset.tariterators`` groups its members).

    Raises BadSample("missing_shard") if the shard cannot be opened (or a command / download fails before any
    record) and BadSample("truncated_shard") when the tar is damaged or ends without its end-of-archive block, or
    the command fails after some records; the records before the damage have been yielded already, the partial
    record at the damage is dropped.
    """
    stream = _open(url)
    n_records = 0
    try:
        for record in group_by_keys(_members(url, stream), keys=split_member_name, handler=_duplicate_member):
            n_records += 1
            yield record
    except (_CutShort, tarfile.TarError, EOFError, zlib.error, OSError) as e:
        status = _failed_status(stream)
        if status is not None and n_records == 0:
            raise BadSample("missing_shard", f"{url}: command exited with {status}") from None
        detail = str(e.args[0]).partition(" @ ")[0] if e.args else type(e).__name__  # wds appends " @ <stream>"
        raise BadSample("truncated_shard", f"{url}: {detail} after {n_records} records") from None
    finally:
        _close(stream)
