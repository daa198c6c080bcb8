"""The shard stream as a LightningDataModule whose state (the stream position) goes into the checkpoint.

``StreamTracker`` is updated by the training step with every consumed batch; ``state_dict()`` merges the
trackers of all ranks (every rank calls it while a checkpoint is written), and ``load_state_dict`` runs before
``train_dataloader()``, which resumes the stream at exactly the next sample of every worker.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist
from torch.utils.data import DataLoader

from data.loader import DatasetConfig, build_dataloader, build_stream
from data.stream_state import StreamTracker, merge_stream_states


class StreamDataModule(pl.LightningDataModule):
    def __init__(self, dataset: DatasetConfig, *, batch_size: int, num_workers: int, pin_memory: bool = False) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.tracker = StreamTracker()
        self._resume_state: dict[str, Any] | None = None

    def train_dataloader(self) -> DataLoader:
        stream = build_stream(self.dataset)
        if self._resume_state:
            stream.load_state_dict(self._resume_state)
        return build_dataloader(
            stream, batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory
        )

    def state_dict(self) -> dict[str, Any]:
        state = self.tracker.state_dict()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
            return merge_stream_states(states)
        return merge_stream_states([state])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_state = dict(state_dict)
        # The tracker keeps only this rank's workers: otherwise a rank's stale copy of another rank's positions
        # could win when the states are merged at the next save.
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.tracker.load_state_dict(rank_state(state_dict, rank=rank, world_size=world))


def rank_state(state: dict[str, Any], *, rank: int, world_size: int) -> dict[str, Any]:
    """The part of a merged stream state that belongs to ``rank`` (global worker g is on rank g // local)."""
    workers = state.get("workers")
    if not workers:
        return dict(state)
    local = int(workers) // world_size

    def mine(g: str) -> bool:
        return int(g) // local == rank

    return {
        **state,
        "positions": {g: n for g, n in state.get("positions", {}).items() if mine(g)},
        "stats": {g: v for g, v in state.get("stats", {}).items() if mine(g)},
        "next_worker": {r: w for r, w in state.get("next_worker", {}).items() if int(r) == rank},
    }
