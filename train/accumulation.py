"""Gradient accumulation for the manual-optimization training loop (``train/module.py``): how many micro-batches make
one optimizer step, and the two places where Lightning and DDP must be told that a micro-batch is not a step.

A stage trains with ``k = accumulation_steps(...)`` micro-batches per optimizer step. The loop runs the backward of
every micro-batch (its loss divided by k; DeepSpeed's engine divides by its ``gradient_accumulation_steps`` itself)
and, on the k-th, clips, checks for non-finite values, steps the optimizer, the lr schedule and the EMA, and writes
one metrics row. Lightning counts a batch as a step for its loggers unless told otherwise (``hold_lightning_step``;
``uncount_optimizer_step`` takes back an optimizer step DeepSpeed did not apply); DDP all-reduces in every backward
unless its ``require_backward_grad_sync`` is off (``set_gradient_sync``).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.nn.parallel import DistributedDataParallel


def accumulation_steps(
    *, accumulate_grad_batches: int, global_batch_size: int | None, batch_size: int, world_size: int
) -> int:
    """Micro-batches per optimizer step: ``trainer.accumulate_grad_batches``, or ``data.global_batch_size`` divided by
    ``data.batch_size`` (the micro-batch of one rank) times the world size. ValueError, with the fix, when it does not
    divide or when both keys are set and disagree."""
    if accumulate_grad_batches < 1:
        raise ValueError(f"trainer.accumulate_grad_batches={accumulate_grad_batches} must be >= 1")
    if global_batch_size is None:
        return accumulate_grad_batches
    per_step = batch_size * world_size
    if global_batch_size < 1 or global_batch_size % per_step:
        below, above = max(global_batch_size // per_step, 1) * per_step, (global_batch_size // per_step + 1) * per_step
        raise ValueError(
            f"data.global_batch_size={global_batch_size} is not a multiple of data.batch_size x world size = "
            f"{batch_size} x {world_size} = {per_step}; use {below} or {above}, or change data.batch_size or the "
            "number of devices"
        )
    steps = global_batch_size // per_step
    if accumulate_grad_batches not in (1, steps):
        raise ValueError(
            f"trainer.accumulate_grad_batches={accumulate_grad_batches} and data.global_batch_size={global_batch_size} "
            f"disagree: that global batch is {steps} micro-batches of data.batch_size={batch_size} on {world_size} "
            "ranks; set only one of the two"
        )
    return steps


def set_gradient_sync(trainer: pl.Trainer, on: bool) -> None:
    """Switch DDP's gradient all-reduce for the next backward on (``on``) or off; no-op without DDP.

    This is the flag ``DistributedDataParallel.no_sync()`` flips. Lightning runs ``training_step`` inside DDP's
    forward and, under manual optimization, arms the all-reduce just before ``manual_backward`` only when the flag is
    on; DDP's post-forward arms it too when the flag is on at the end of the step, and an armed reducer all-reduces in
    the next backward even inside ``no_sync()``. So the loop turns it on for the backward of the last micro-batch and
    off again before the step returns.
    """
    model = trainer.strategy.model
    if isinstance(model, DistributedDataParallel):
        model.require_backward_grad_sync = on


def hold_lightning_step(trainer: pl.Trainer) -> None:
    """Undo what Lightning does for a batch that is not an optimizer step: its logger step (``_batches_that_stepped``,
    incremented after every batch in manual optimization) stays, and the values the step logged last are not logged
    again under this batch (Lightning keeps a step's logged values and writes them whenever its cadence says so)."""
    trainer.fit_loop.epoch_loop._batches_that_stepped -= 1
    results = trainer._results
    if results is not None:
        results.reset(fx="training_step")


def uncount_optimizer_step(trainer: pl.Trainer) -> None:
    """Take back the optimizer step Lightning counted for an ``opt.step()`` DeepSpeed did not apply, so that
    ``global_step`` (max_steps, checkpoint names, the step in the metrics) counts applied steps only."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    for tracker in (progress.total, progress.current):
        tracker.ready -= 1
        tracker.completed -= 1


def micro_batch_backward(module: pl.LightningModule, loss: torch.Tensor, *, k: int, boundary: bool) -> None:
    """The backward of one micro-batch: of 1/k of its loss (DeepSpeed's engine divides by its
    ``gradient_accumulation_steps`` itself), with DDP's gradient all-reduce on the last one of the step only."""
    if k == 1:
        module.manual_backward(loss)
        return
    trainer = module.trainer
    engine = getattr(trainer.strategy, "deepspeed_engine", None)
    if engine is not None:
        module.manual_backward(loss)
        if not boundary:
            engine.step()  # the engine counts the micro-batch and steps on the k-th; Lightning must not count it
        return
    set_gradient_sync(trainer, boundary)
    module.manual_backward(loss / k)
    set_gradient_sync(trainer, False)  # DDP's post-forward must not arm the next micro-batch's all-reduce


def mean_of_micro_batches(
    pending: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The step's (loss, metrics): the means over its micro-batches (the batch's own values when there is one)."""
    if len(pending) == 1:
        return pending[0]
    metrics = {key: torch.stack([m[key].float() for _, m in pending]).mean() for key in pending[0][1]}
    return torch.stack([loss for loss, _ in pending]).mean(), metrics
