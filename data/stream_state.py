"""Stream counters and the trainer-side position tracker of ``ShardStream`` (see ``data/stream.py``).

Workers are separate processes, so each yielded sample carries ``sample["_stream"]`` (its worker, record index
and the worker's cumulative counters); ``StreamTracker`` keeps the latest of these per worker on the trainer
side. Its ``state_dict()`` is the stream position saved in the training checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import torch

from data.errors import PadReason, SkipReason

STREAM_KEY = "_stream"
SKIP_REASONS: tuple[str, ...] = get_args(SkipReason)
PAD_REASONS: tuple[str, ...] = get_args(PadReason)


@dataclass
class StreamStats:
    """Counts of one worker (or, summed, of many): yielded samples, records read, skips and padded samples per
    reason. Every reason is always present (zero or not), so the per-sample copies collate into equal dicts."""

    samples_yielded: int = 0
    records_read: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    padded: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PAD_REASONS, 0))

    def as_dict(self) -> dict[str, int]:
        return {"samples_yielded": self.samples_yielded, "records_read": self.records_read, **self.skipped,
                **self.padded}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, int]) -> StreamStats:
        skipped = {r: int(d.get(r, 0)) for r in SKIP_REASONS}
        padded = {r: int(d.get(r, 0)) for r in PAD_REASONS}  # absent from states saved before padding was counted
        return cls(int(d.get("samples_yielded", 0)), int(d.get("records_read", 0)), skipped, padded)

    def __add__(self, other: StreamStats) -> StreamStats:
        skipped = {r: self.skipped[r] + other.skipped[r] for r in SKIP_REASONS}
        padded = {r: self.padded[r] + other.padded[r] for r in PAD_REASONS}
        return StreamStats(self.samples_yielded + other.samples_yielded, self.records_read + other.records_read,
                           skipped, padded)  # fmt: skip

    def nonzero_skips(self) -> dict[str, int]:
        return {r: c for r, c in self.skipped.items() if c}

    def nonzero_padded(self) -> dict[str, int]:
        return {r: c for r, c in self.padded.items() if c}

    def metrics(self) -> dict[str, int]:
        """The nonzero counters under their metric names: ``data/skipped_<reason>`` and ``data/<pad reason>``
        (``data/padded_short``), for the trainer's metrics row."""
        skips = {f"data/skipped_{r}": c for r, c in self.nonzero_skips().items()}
        return {**skips, **{f"data/{r}": c for r, c in self.nonzero_padded().items()}}


class StreamTracker:
    """Trainer side: the position and latest counters of every worker, from the samples' ``_stream`` info.

    Call ``update(batch["_stream"])`` for every batch the trainer consumes; ``state_dict()`` goes into the
    checkpoint (merge ranks with ``merge_stream_states``) and ``ShardStream.load_state_dict`` resumes from it.
    """

    def __init__(self) -> None:
        self.positions: dict[int, int] = {}
        self.next_worker: dict[int, int] = {}  # per rank: the loader worker whose batch comes next
        self._stats: dict[int, StreamStats] = {}
        self.epoch: int | None = None
        self.workers: int | None = None

    def update(self, info: Any) -> None:
        for row in _rows(info):
            g, n = int(row["worker"]), int(row["index"])
            self.epoch, self.workers = int(row["epoch"]), int(row["workers"])
            local = int(row["rank_workers"])
            self.next_worker[g // local] = (g % local + 1) % local
            if n >= self.positions.get(g, -1):
                self.positions[g] = n
                self._stats[g] = StreamStats.from_dict(row["stats"])

    def stats(self) -> StreamStats:
        """Counters summed over the workers seen (each worker's latest cumulative snapshot)."""
        total = StreamStats()
        for s in self._stats.values():
            total = total + s
        return total

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "workers": self.workers,
            "positions": {str(g): n for g, n in self.positions.items()},
            "next_worker": {str(r): w for r, w in self.next_worker.items()},
            "stats": {str(g): s.as_dict() for g, s in self._stats.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.workers = state.get("epoch"), state.get("workers")
        self.positions = {int(g): int(n) for g, n in state.get("positions", {}).items()}
        self.next_worker = {int(r): int(w) for r, w in state.get("next_worker", {}).items()}
        self._stats = {int(g): StreamStats.from_dict(d) for g, d in state.get("stats", {}).items()}


def merge_stream_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Union of the per-rank tracker states (each rank sees only its own workers)."""
    known = [s for s in states if s.get("positions")]
    if len({(s.get("epoch"), s.get("workers")) for s in known}) > 1:
        raise ValueError("Stream states disagree on epoch or worker count; were they saved by the same run?")
    head = known[0] if known else {}
    merged: dict[str, Any] = {"epoch": head.get("epoch"), "workers": head.get("workers")}
    for part in ("positions", "next_worker", "stats"):
        merged[part] = {str(k): v for s in known for k, v in s.get(part, {}).items()}
    return merged


def _rows(info: Any) -> Iterator[Mapping[str, Any]]:
    """Per-sample ``_stream`` dicts from a list of samples/infos or from torch's default_collate output."""
    if isinstance(info, Mapping) and STREAM_KEY in info:
        info = info[STREAM_KEY]
    if isinstance(info, Mapping):

        def col(v: Any) -> list[Any]:
            return v.tolist() if isinstance(v, torch.Tensor) else list(v)

        cols = {k: col(v) for k, v in info.items() if k != "stats"}
        stats = {k: col(v) for k, v in info["stats"].items()}
        for i in range(len(cols["worker"])):
            yield {**{k: v[i] for k, v in cols.items()}, "stats": {k: v[i] for k, v in stats.items()}}
        return
    for item in info:
        yield item[STREAM_KEY] if STREAM_KEY in item else item
