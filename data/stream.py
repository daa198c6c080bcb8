"""The shard stream: sharding across ranks and workers, weighted mixing, shuffle, filters, skips and resume.

Per global worker ``g = rank * num_workers + worker_id`` (of ``G = world_size * num_workers``) the stream is

    source shards (seeded per-epoch permutation, split across workers)
      -> raw records (tar members grouped by key; nothing decoded)
      -> weighted mix of the sources (seeded per-record choice)
      -> shuffle buffer of raw records (seeded)
      -> record index n = 0, 1, 2, ...  (the resume position)
      -> json parse, metadata filters, decode(record, rng, counters)  (skips and padded samples counted per reason)
      -> Sample + ``sample["_stream"]``

Everything above the record index is a pure function of (seed, epoch, g, G) and of the shard bytes, never of
decoding, so a stream resumes exactly by replaying the raw records up to the saved index without parsing or
decoding them (only tar bytes are read again). The decode rng of record n is seeded from (seed, epoch, g, n).

Sharding: each source's shards are permuted per epoch with a seed shared by all workers; worker g takes
``perm[g::G]``. With fewer shards than global workers, worker g reads shard ``perm[g % n]`` and keeps the
records whose index within that shard is ``g // n`` modulo the number of workers on that shard (each of those
workers reads the whole shard: more I/O, but no overlap and no loss).

Mixing: each source has its own shard iterator; a record's source is drawn with probability proportional to
the weights. With ``passes=None`` a source that runs out restarts with its next epoch (training with
max_steps); with ``passes=k`` it ends after k epochs and the remaining sources are renormalised. A source
whose epoch gives this worker no record at all (all its shards missing) ends, so the stream cannot spin.

Bad input: a skipped record or shard gives one warning line naming shard, key and reason, for the first
``warn_limit`` skips per reason and worker (then one line saying further ones are only counted, so a broken
dataset cannot flood the logs); ``filtered`` is logged at debug level. If a whole epoch of every source gives
no valid sample, the worker raises RuntimeError with the counts per reason.

Padded samples: a decode that pads a sample (a video shorter than the clip with ``on_short="pad"``) says so in
``counters`` under a ``data.errors.PadReason`` (``padded_short``); the stream counts it per reason next to the skips
and logs the first one per worker, so a run that trains on padded clips shows it in its metrics
(``data/padded_short``, from ``StreamStats.metrics``).

Counters reach the trainer on the samples (workers are separate processes): each yielded sample carries
``sample["_stream"] = {"worker": g, "workers": G, "rank_workers", "epoch", "index": n, "stats": {...}}`` where
stats are this worker's cumulative counts. ``StreamTracker.update(batch["_stream"])`` on the trainer side
keeps the latest snapshot and position per worker; torch's default_collate (tensors) and list collates are
both accepted. Skips after a worker's last yielded sample only reach its final log line (finite passes only).

Resume: DataLoader delivers batches in order, so the tracker's positions are exactly what the trainer
consumed. ``ShardStream.load_state_dict(merge_stream_states([...each rank's tracker.state_dict()]))`` makes
each worker replay to its position, continue its counters, and rotates loader worker ids so that the
round-robin batch order continues where it stopped. Same seed, epoch, world size and num_workers required.

Memory: records are decoded one at a time and dropped after decode; the only bytes held are the shuffle
buffer's: at most ``shuffle_buffer`` raw records (their tar members' bytes) per worker, plus the record being
grouped in each source's open shard. Size the buffer for video: 100 records of 5 MB clips is 500 MB a worker.

Iterating the stream again starts the same sequence over; a new epoch in ``passes`` mode is a new stream with
``epoch=e``. Resume state must be loaded before the DataLoader starts its workers.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data.batch import Sample
from data.errors import BadSample
from data.micro_cond import lookup
from data.sources import DataSources, RawRecord, SourceSpec, assign_shards, iter_shard_records, read_key_list
from data.stream_state import PAD_REASONS, STREAM_KEY, StreamStats

log = logging.getLogger(__name__)


class DecodeFn(Protocol):
    """``decode(record, rng=..., counters=...)``: e.g. ``functools.partial(data.sample_decode.decode_sample, ...)``.

    ``counters`` collects what is worth counting about a decoded sample; the stream keeps the ``PadReason`` ones.
    """

    def __call__(self, record: RawRecord, *, rng: np.random.Generator, counters: Counter[str]) -> Sample: ...


# Seed-sequence tags so the shard permutation, mixing, shuffle and decode rngs are independent streams.
_TAG_MIX, _TAG_SHUFFLE, _TAG_DECODE = 1, 2, 3


@dataclass
class MetadataFilter:
    """Keep a sample only if the json value at ``field`` (dotted path, e.g. ``captions.coca``) passes.

    ``min``/``max`` are inclusive bounds on a number; ``require`` drops samples where the field is absent,
    null or empty. A missing field passes bounds-only filters (set ``require=True`` to drop it). ``values`` is a
    categorical selection (e.g. ``camera_motion`` in ``[pan_left, pan_right]``): the value must be one of them,
    compared as text (a string itself, a number or boolean as its json text: ``"3"``, ``"true"``); a missing field
    never matches. ``values`` excludes ``min``/``max``.
    """

    field: str
    min: float | None = None
    max: float | None = None
    require: bool = False
    values: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if not self.field:
            raise ValueError("MetadataFilter.field is empty; give a dotted json path such as 'motion_score'")
        if self.values is not None:
            self.values = tuple(str(v) for v in self.values)
            if not self.values:
                raise ValueError(f"MetadataFilter({self.field!r}) has an empty values list; name at least one value")
            if self.min is not None or self.max is not None:
                raise ValueError(f"MetadataFilter({self.field!r}) sets values {list(self.values)} and min/max: a "
                                 "categorical filter has no bounds; use two filters or drop one")  # fmt: skip
        if self.min is None and self.max is None and not self.require and self.values is None:
            raise ValueError(f"MetadataFilter({self.field!r}) does nothing; set min, max, values or require=True")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"MetadataFilter({self.field!r}) has min {self.min} > max {self.max}; swap them")

    def passes(self, meta: Mapping[str, Any]) -> bool:
        value = lookup(meta, self.field)
        if self.values is not None:
            return value is not None and category_text(value) in self.values
        if value is None or value == "" or value == [] or value == {}:
            return not self.require
        if self.min is None and self.max is None:
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False  # a bound on a non-number cannot hold
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


def category_text(value: Any) -> str:
    """A json value as a categorical filter compares it: a string as it is, anything else as its json text."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
class StreamConfig:
    seed: int = 0
    shuffle_buffer: int = 100  # raw records held per worker; memory is this times the largest record
    passes: int | None = None  # epochs per source before it ends; None cycles forever
    filters: list[MetadataFilter] = field(default_factory=list)
    # True: a record without .json is skipped as missing_json before decode; False leaves it to the decoder
    # (data/sample_decode.py needs json for videos only). Invalid json is always skipped before decode.
    require_json: bool = False
    warn_limit: int = 20  # per worker and reason, skips after this many are counted but not logged
    # A file of record keys, one a line (data/sources.py write_key_list): other records are skipped as
    # "filtered" before their json is parsed. Every worker holds the keys (~100 bytes each) in memory.
    key_list: str | None = None

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"StreamConfig.seed must be >= 0 (numpy seed sequences), got {self.seed}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"StreamConfig.shuffle_buffer must be >= 0 (0 or 1 disables), got {self.shuffle_buffer}")
        if self.passes is not None and self.passes < 1:
            raise ValueError(f"StreamConfig.passes must be >= 1 or None (cycle forever), got {self.passes}")


class _Run:
    """Mutable per-worker state of one iteration: counters, rate-limited logging, replay and epoch tracking."""

    def __init__(self, *, worker: int, num_sources: int, warn_limit: int) -> None:
        self.worker = worker
        self.stats = StreamStats()
        self.warn_limit = warn_limit
        self.replaying = False
        self.epochs_done = [0] * num_sources
        self.pending_first_epoch = 0  # first-epoch records pulled but not yet processed
        self.shard_errors = 0

    def skip(self, reason: str, url: str, key: str, detail: str) -> None:
        if self.replaying:
            return  # the uninterrupted run counted and logged this already
        self.stats.skipped[reason] += 1
        if reason == "filtered":
            log.debug("filtered %s in %s: %s", key, url, detail)
            return
        count = self.stats.skipped[reason]
        if count <= self.warn_limit:
            log.warning("skip shard=%s key=%s reason=%s %s", url, key, reason, detail)
        if count == self.warn_limit:
            log.warning("worker %d: %d %s skips; further ones are counted, not logged", self.worker, count, reason)

    def pad(self, reason: str, url: str, key: str) -> None:
        self.stats.padded[reason] += 1
        if self.stats.padded[reason] == 1:  # padding is a setting (on_short="pad"), not damage: one line is enough
            log.warning("worker %d: sample shard=%s key=%s is padded (%s); further ones are counted, not logged",
                        self.worker, url, key, reason)  # fmt: skip


class ShardStream(IterableDataset):
    """Deterministic, resumable stream of decoded samples from weighted WebDataset sources (see module doc).

    ``decode(record, rng=rng, counters=counters)`` gets the raw record (``"__key__"``, ``"__url__"`` as str, one
    bytes value per member extension) and raises ``BadSample`` to skip it; other exceptions propagate (they are
    bugs). A ``PadReason`` it adds to ``counters`` is counted as a padded sample.
    """

    def __init__(
        self,
        sources: DataSources | Sequence[SourceSpec | str],
        *,
        decode: DecodeFn,
        config: StreamConfig | None = None,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.sources = sources if isinstance(sources, DataSources) else DataSources(sources)
        self.decode = decode
        self.config = config or StreamConfig()
        self._keys = read_key_list(self.config.key_list) if self.config.key_list else None
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch
        if (rank is None) != (world_size is None):
            raise ValueError("Give both rank and world_size, or neither (then torch.distributed or env decides)")
        if rank is not None and world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.rank, self.world_size = rank, world_size
        self._resume: dict[int, int] = {}
        self._resume_workers: int | None = None
        self._rotation: dict[int, int] = {}
        self._resume_stats: dict[int, dict[str, int]] = {}

    def _dist(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.iter_worker(worker_id, num_workers=num_workers)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``StreamTracker.state_dict()`` (merged across ranks). Call before iterating."""
        if int(state.get("epoch", self.epoch)) != self.epoch:
            want = state.get("epoch")
            raise ValueError(f"Stream state is for epoch {want} but this stream starts at epoch {self.epoch}; "
                             f"build it with epoch={want} and the same seed")  # fmt: skip
        self._resume = {int(g): int(n) + 1 for g, n in state.get("positions", {}).items()}
        self._resume_workers = state.get("workers")
        self._rotation = {int(r): int(w) for r, w in state.get("next_worker", {}).items()}
        self._resume_stats = {int(g): dict(d) for g, d in state.get("stats", {}).items()}

    def iter_worker(self, worker_id: int, *, num_workers: int) -> Iterator[Sample]:
        """The samples of DataLoader worker ``worker_id`` of ``num_workers`` on this rank."""
        rank, world_size = self._dist()
        if not 0 <= worker_id < num_workers:
            raise ValueError(f"worker_id {worker_id} is outside num_workers {num_workers}")
        # DataLoader hands out batches round-robin from worker 0; after a resume, loader worker w plays the worker
        # whose batch the uninterrupted run would have delivered w batches after the last consumed one.
        worker_id = (worker_id + self._rotation.get(rank, 0)) % num_workers
        g, n_global = rank * num_workers + worker_id, world_size * num_workers
        if self._resume and self._resume_workers not in (None, n_global):
            raise ValueError(f"Stream state was saved with {self._resume_workers} global workers, now {n_global}; "
                             "resume with the same world size and num_workers")  # fmt: skip
        return self._iterate(g, n_global, self._resume.get(g, 0), world_size)

    def _source(self, j: int, g: int, n_global: int, run: _Run) -> Iterator[tuple[bool, RawRecord]]:
        """Raw records of source j for worker g: (is first epoch, record), epoch after epoch."""
        cfg, src = self.config, self.sources.sources[j]
        epoch = self.epoch
        while cfg.passes is None or epoch < self.epoch + cfg.passes:
            shards, split = assign_shards(src.shards, seed=cfg.seed, source_index=j, epoch=epoch, worker=g,
                                          num_workers=n_global)  # fmt: skip
            got = 0
            for url in shards:
                try:
                    for i, record in enumerate(iter_shard_records(url)):
                        if split is None or i % split[1] == split[0]:
                            got += 1
                            yield epoch == self.epoch, record
                except BadSample as e:
                    run.shard_errors += 1
                    run.skip(e.reason, url, "-", e.detail)
            run.epochs_done[j] += 1
            if got == 0:
                if cfg.passes is None:
                    log.warning("worker %d: source %s gave no records in epoch %d; it ends", g, src.name, epoch)
                return
            epoch += 1

    def _mixed(self, g: int, n_global: int, run: _Run) -> Iterator[tuple[bool, RawRecord]]:
        iters = [self._source(j, g, n_global, run) for j in range(len(self.sources))]
        weights = np.asarray(self.sources.weights, dtype=np.float64)
        rng = np.random.default_rng([self.config.seed, _TAG_MIX, self.epoch, g])
        active = list(range(len(iters)))
        while active:
            w = weights[active]
            pick = active[min(int(np.searchsorted(np.cumsum(w) / w.sum(), rng.random(), side="right")),
                              len(active) - 1)]  # fmt: skip
            item = next(iters[pick], None)
            if item is None:
                active.remove(pick)
                continue
            run.pending_first_epoch += item[0]
            yield item

    def _shuffled(self, items: Iterator[tuple[bool, RawRecord]], g: int) -> Iterator[tuple[bool, RawRecord]]:
        size = self.config.shuffle_buffer
        if size <= 1:
            yield from items
            return
        rng = np.random.default_rng([self.config.seed, _TAG_SHUFFLE, self.epoch, g])
        buf: list[tuple[bool, RawRecord]] = []
        for item in items:
            if len(buf) < size:
                buf.append(item)
                continue
            k = int(rng.integers(len(buf)))
            buf[k], item = item, buf[k]
            yield item
        while buf:
            k = int(rng.integers(len(buf)))
            buf[k], buf[-1] = buf[-1], buf[k]
            yield buf.pop()

    def _iterate(self, g: int, n_global: int, start: int, world: int) -> Iterator[Sample]:
        run = _Run(worker=g, num_sources=len(self.sources), warn_limit=self.config.warn_limit)
        run.stats = StreamStats.from_dict(self._resume_stats.get(g, {}))  # counters continue across a resume
        records = self._shuffled(self._mixed(g, n_global, run), g)
        n = 0
        while True:
            run.replaying = n < start
            item = next(records, None)
            if item is None:
                break
            first_epoch, record = item
            run.pending_first_epoch -= first_epoch
            if n >= start:
                sample = self._process(record, g, n, run)
                if sample is not None:
                    sample[STREAM_KEY] = {"worker": g, "workers": n_global, "rank_workers": n_global // world,
                                          "epoch": self.epoch, "index": n, "stats": run.stats.as_dict()}  # type: ignore[typeddict-unknown-key]  # fmt: skip
                    yield sample
                elif start == 0 and self._nothing_valid(run):
                    raise RuntimeError(self._zero_message(g, run))
            n += 1
        log.info("worker %d of %d: stream ended: %s", g, n_global, run.stats.as_dict())
        if start == 0 and run.stats.samples_yielded == 0:
            if run.stats.records_read or run.shard_errors:
                raise RuntimeError(self._zero_message(g, run))
            log.warning("worker %d of %d got no records (more workers than records?)", g, n_global)

    def _nothing_valid(self, run: _Run) -> bool:
        return run.stats.samples_yielded == 0 and min(run.epochs_done) >= 1 and run.pending_first_epoch == 0

    def _zero_message(self, g: int, run: _Run) -> str:
        return (f"No valid samples: worker {g} went through a whole epoch of every source ({run.stats.records_read} "
                f"records) and skipped all of them: {run.stats.nonzero_skips()}. Check the shards, the metadata "
                "filters (data.stream.filters) and the decode settings")  # fmt: skip

    def _process(self, record: RawRecord, g: int, n: int, run: _Run) -> Sample | None:
        key, url = str(record["__key__"]), str(record["__url__"])
        run.stats.records_read += 1
        try:
            if self._keys is not None and key not in self._keys:
                raise BadSample("filtered", "key not in key_list")
            meta = _parse_json(record, require=self.config.require_json)
            for flt in self.config.filters:
                if not flt.passes(meta):
                    raise BadSample("filtered", f"{flt.field}={lookup(meta, flt.field)!r}")
            rng = np.random.default_rng([self.config.seed, _TAG_DECODE, self.epoch, g, n])
            counters: Counter[str] = Counter()
            sample = self.decode(record, rng=rng, counters=counters)
        except BadSample as e:
            run.skip(e.reason, url, key, e.detail)
            return None
        for reason in PAD_REASONS:
            if counters[reason]:
                run.pad(reason, url, key)
        sample["key"], sample["shard"] = key, url
        run.stats.samples_yielded += 1
        return sample


def _parse_json(record: RawRecord, *, require: bool) -> Mapping[str, Any]:
    raw = record.get("json")
    if raw is None:
        if require:
            raise BadSample("missing_json", "no .json member")
        return {}
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadSample("invalid_json", str(e)[:200]) from None
    if not isinstance(meta, dict):
        raise BadSample("invalid_json", f"top level is {type(meta).__name__}, not an object")
    return meta
