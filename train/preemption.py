"""Preemption and time limits under SLURM: checkpoint, requeue, stop; the requeued job resumes (resume=auto).

Submit with ``--requeue --signal=USR1@<seconds>`` (the sbatch scripts in slurm/ do): SLURM sends SIGUSR1 that
many seconds before the time limit, or when a preemption is announced. The handler only raises a flag; at the end
of the current step every rank agrees (the flag is reduced across ranks, so all of them save the same step), the
checkpoint is written atomically, rank 0 runs ``scontrol requeue $SLURM_JOB_ID`` and training stops without an
export. A finished job never requeues. Lightning's own SLURM auto-requeue is switched off (``run.py``) so there is
one mechanism and one checkpoint folder.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Any

import pytorch_lightning as pl
import torch

from train.checkpointing import PeriodicCheckpoint

log = logging.getLogger(__name__)

REQUEUE_SIGNAL = signal.SIGUSR1


class PreemptionCheckpoint(pl.Callback):
    def __init__(self, checkpoints: PeriodicCheckpoint, *, requeue: bool = True) -> None:
        self.checkpoints = checkpoints
        self.requeue = requeue
        self.signalled = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous = signal.signal(REQUEUE_SIGNAL, self._handler)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._previous is not None:
            signal.signal(REQUEUE_SIGNAL, self._previous)

    def _any_rank_signalled(self, trainer: pl.Trainer, device: torch.device) -> bool:
        flag = torch.tensor([1.0 if self.signalled else 0.0], device=device)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag, reduce_op="max")
        return bool(flag.item() > 0)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if getattr(pl_module, "mid_accumulation", False):  # at the next optimizer step (all ranks are at the same)
            return
        if not self._any_rank_signalled(trainer, pl_module.device) or trainer.global_step >= (trainer.max_steps or 0):
            return
        path = self.checkpoints.save(trainer)
        job = os.environ.get("SLURM_JOB_ID")
        message = f"preempted at step {trainer.global_step}: checkpoint {path}"
        if self.requeue and job and trainer.is_global_zero:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode:
                log.error("scontrol requeue %s failed: %s", job, result.stderr.strip())
            else:
                message += f"; job {job} requeued, it resumes from there"
        print(f"[preempted] {message}", flush=True)
        pl_module.preempted = message
        trainer.should_stop = True
