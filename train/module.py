"""The one training loop of every stage: a LightningModule around a built ``Objective``.

Manual optimization, so that a non-finite loss or gradient skips the step everywhere (all ranks agree) instead of
corrupting the weights, and so that DeepSpeed and DDP share one code path. Per step: the objective's loss, NaN/inf
check, backward, gradient clipping (by DeepSpeed itself under its strategies), AdamW, linear warm-up, EMA update,
logging. A skipped step (a NaN/inf loss or gradient; under DeepSpeed, a step its engine did not apply) is counted and
advances nothing: no optimizer step, no lr-schedule step, no EMA update. The randomness of a step comes from a
generator seeded by (seed, rank, batches seen), so a resumed run draws exactly what the uninterrupted run drew;
``batches_seen`` travels in the checkpoint. So does ``run_id``, new at a fresh start, which the stage export carries
too (``train.export.check_export_run_id``). With gradient accumulation (``train/accumulation.py``) a step is k
micro-batches: each runs its backward, the last one does the rest; checkpoints are written between steps only.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from data.stream_state import STREAM_KEY
from models.checkpoints.inflation import is_temporal_unet_key
from models.latent_diffusion import UNET_PREFIX
from train.accumulation import hold_lightning_step, mean_of_micro_batches, micro_batch_backward, uncount_optimizer_step
from train.config import TRAINABLE_LAYERS, EMASchema, OptimConfig, StageConfig, TrainConfig, TrainerConfig
from train.ema import EMA
from train.objectives.base import Objective
from train.run_folder import EVAL_METRICS_FILE, trim_jsonl

log = logging.getLogger(__name__)


# The defaults are the schema's (train/config.py): stage.optim, stage.ema, stage.trainable*, trainer.*, seed.
@dataclass(frozen=True)
class OptimSettings:
    lr: float = OptimConfig.lr
    betas: tuple[float, float] = tuple(OptimConfig().betas)  # type: ignore[assignment]
    weight_decay: float = OptimConfig.weight_decay
    eps: float = OptimConfig.eps
    warmup_steps: int = OptimConfig.warmup_steps


@dataclass(frozen=True)
class LoopSettings:
    seed: int = TrainConfig.seed
    gradient_clip_val: float | None = TrainerConfig.gradient_clip_val
    accumulate_grad_batches: int = TrainerConfig.accumulate_grad_batches  # resolved: train.accumulation
    clip_in_strategy: bool = False  # DeepSpeed clips inside its engine (its config carries the value)
    max_consecutive_nonfinite: int = TrainerConfig.max_consecutive_nonfinite
    ema_decay: float | None = EMASchema.decay  # None disables the EMA
    ema_warmup: bool = EMASchema.warmup
    trainable: tuple[str, ...] = tuple(StageConfig().trainable)
    trainable_layers: str = StageConfig.trainable_layers  # "temporal": only the video UNet's temporal layers
    nonfinite_loss_at: tuple[int, ...] = ()  # fault injection (debug.nonfinite_loss_at)
    nonfinite_grad_at: tuple[int, ...] = ()  # fault injection (debug.nonfinite_grad_at)
    metrics_file: str | None = None  # per-step jsonl, flushed every step (rank 0)


class NonFiniteLossError(RuntimeError):
    pass


def in_trainable_layers(name: str, layers: str) -> bool:
    """Whether the export-module parameter ``name`` belongs to the layer set ``layers`` (stage.trainable_layers).

    ``temporal`` is the set of layers the video UNet adds over the SD 2.1 image UNet (``time_stack``,
    ``time_mixer``, ``time_pos_embed``; 656M parameters at full size), the same keys that inflation creates at
    Stage I -> II (``is_temporal_unet_key``). The temporal decoder of the VAE is not part of it.
    """
    if layers not in TRAINABLE_LAYERS:
        raise ValueError(f"stage.trainable_layers={layers!r} is not valid; choose one of {', '.join(TRAINABLE_LAYERS)}")
    if layers == "all":
        return True
    return name.startswith(UNET_PREFIX) and is_temporal_unet_key(name[len(UNET_PREFIX) :])


def select_trainable(module: nn.Module, patterns: Sequence[str], *, layers: str = "all") -> list[str]:
    """Freeze every parameter outside ``layers`` or matching none of ``patterns`` (fnmatch); return the trainable
    names. Parameters the objective froze already (VAE, CLIP towers) stay frozen."""
    names = []
    for name, param in module.named_parameters():
        keep = param.requires_grad and in_trainable_layers(name, layers)
        keep = keep and any(fnmatch.fnmatchcase(name, p) for p in patterns)
        param.requires_grad_(keep)
        if keep:
            names.append(name)
    if not names:
        raise ValueError(
            f"stage.trainable={list(patterns)} with stage.trainable_layers={layers} matches no trainable parameter "
            "of the stage's model (temporal layers exist only in a video UNet)"
        )
    return names


def log_trainable(module: nn.Module, *, patterns: Sequence[str], layers: str) -> tuple[int, int]:
    """Log and return (trainable, total) parameter counts of ``module``."""
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    trained = sum(p.numel() for p in params if p.requires_grad)
    tensors = sum(1 for p in params if p.requires_grad)
    log.info(
        "trainable: %d of %d parameter tensors, %.2fM of %.2fM parameters (stage.trainable_layers=%s, "
        "stage.trainable=%s); the optimizer, gradient clipping and the EMA see only these",
        tensors,
        len(params),
        trained / 1e6,
        total / 1e6,
        layers,
        list(patterns),
    )
    return trained, total


def gathered(params: Iterator[nn.Parameter] | Sequence[nn.Parameter]) -> contextlib.AbstractContextManager:
    """Full parameters for reading under DeepSpeed ZeRO-3 (partitioned ones carry ``ds_id``); else a no-op."""
    params = list(params)
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def step_seed(seed: int, rank: int, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{rank}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class StageModule(pl.LightningModule):
    def __init__(self, objective: Objective, *, optim: OptimSettings, loop: LoopSettings, stage_dir: Path) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.objective = objective
        self.optim_settings = optim
        self.loop = loop
        self.stage_dir = Path(stage_dir)
        select_trainable(objective.export_module(), loop.trainable, layers=loop.trainable_layers)
        log_trainable(objective.export_module(), patterns=loop.trainable, layers=loop.trainable_layers)
        self.ema = None
        if loop.ema_decay is not None:
            self.ema = EMA(objective.named_trainable_parameters(), decay=loop.ema_decay, warmup=loop.ema_warmup)
        self.batches_seen = 0
        self._pending: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []  # this step's micro-batches so far
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.stop_reason: str | None = None
        self.run_id = uuid.uuid4().hex  # replaced by the checkpoint's on a resume
        self._last_time: float | None = None

    # ----- weights -------------------------------------------------------------------------------------------
    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.objective.named_trainable_parameters())

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """The EMA weights swapped into the model (a no-op without EMA)."""
        if self.ema is None:
            yield
            return
        with self.ema.swapped_into(self.trainable()):
            yield

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The export: the objective's export module with the EMA weights, on CPU. Call on every rank (under
        ZeRO-3 the partitioned parameters are gathered first, a collective)."""
        module = self.objective.export_module()
        with gathered(module.parameters()), self.ema_weights():
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    # ----- optimization --------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim_settings
        params = [p for _, p in self.trainable()]
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
        warmup = max(o.warmup_steps, 0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _LinearWarmup(warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(step_seed(self.loop.seed, self.global_rank, self.batches_seen))
        return g

    def _all_finite(self, value: torch.Tensor) -> bool:
        flag = torch.isfinite(value.detach()).all().float().reshape(1)
        if self.trainer.world_size > 1:
            flag = self.trainer.strategy.reduce(flag, reduce_op="min")
        return bool(flag.item() > 0)

    def _grad_norm(self) -> torch.Tensor:
        """Our clipping's pre-clip norm (DeepSpeed clips inside its engine: ``_strategy_grad_norm`` after its step)."""
        params = [p for _, p in self.trainable() if p.grad is not None]
        max_norm = self.loop.gradient_clip_val if self.loop.gradient_clip_val else math.inf
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def _strategy_grad_norm(self) -> torch.Tensor:
        """The global norm DeepSpeed computed in the optimizer step just taken (it sets it inside ``step``), NaN
        when DeepSpeed did not apply that step (its overflow check found a NaN or inf gradient)."""
        engine = getattr(self.trainer.strategy, "deepspeed_engine", None)
        norm = engine.get_global_grad_norm() if engine is not None else None
        applied = engine is not None and engine.was_step_applied()
        # Some DeepSpeed versions report a NaN/inf norm as -1.
        value = float(norm) if norm is not None and norm >= 0 and applied else float("nan")
        return torch.tensor(value, device=self.device)

    @contextlib.contextmanager
    def _nonfinite_grad_injected(self, index: int) -> Iterator[None]:
        """Fault injection (debug.nonfinite_grad_at): a tensor hook turns one trainable parameter's gradient into
        NaN during backward, before DDP or DeepSpeed see it, so every strategy meets the fault where it would be."""
        if index not in self.loop.nonfinite_grad_at:
            yield
            return
        name, param = self.trainable()[0]
        fired = []

        def to_nan(grad: torch.Tensor) -> torch.Tensor:
            fired.append(True)
            return grad * float("nan")

        handle = param.register_hook(to_nan)
        try:
            yield
        finally:
            handle.remove()
        assert fired, f"debug.nonfinite_grad_at: {name} got no gradient, so no fault was injected"

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        stream_info = batch.pop(STREAM_KEY, None)
        datamodule = getattr(self.trainer, "datamodule", None)
        if stream_info is not None and datamodule is not None and hasattr(datamodule, "tracker"):
            datamodule.tracker.update(stream_info)
        index = self.batches_seen
        loss, metrics = self.objective(batch, generator=self._generator())
        self.batches_seen += 1
        if index in self.loop.nonfinite_loss_at:
            loss = loss * float("nan")
        k = self.loop.accumulate_grad_batches
        self._pending.append((loss.detach(), metrics))
        boundary = len(self._pending) == k
        # One batch a step: a non-finite loss (all ranks agree) skips the backward. Accumulating: every micro-batch
        # runs its backward (the last one all-reduces, on every rank); the checks at the step catch a NaN in any.
        skipped = k == 1 and not self._all_finite(loss)
        if not skipped:
            with self._nonfinite_grad_injected(index):
                micro_batch_backward(self, loss, k=k, boundary=boundary)
        if not boundary:
            hold_lightning_step(self.trainer)
            return loss.detach()
        loss, metrics = mean_of_micro_batches(self._pending)
        self._pending = []
        opt = self.optimizers()
        grad_norm = torch.tensor(float("nan"))
        if not skipped:
            if self.loop.clip_in_strategy:
                # DeepSpeed's gradients live in its engine: it checks them inside step() and skips the update on a
                # NaN/inf, so its verdict comes after the step (the norm is all-reduced, the flag agreed anyway).
                opt.step()
                grad_norm = self._strategy_grad_norm()
                skipped = not self._all_finite(grad_norm)
                if skipped:
                    uncount_optimizer_step(self.trainer)
            else:
                grad_norm = self._grad_norm()
                checked = grad_norm if k == 1 else torch.stack([grad_norm.float(), loss.float()])
                skipped = not self._all_finite(checked)
                if not skipped:
                    opt.step()
        opt.zero_grad(set_to_none=True)
        if skipped:
            self._on_nonfinite(loss, index)
        else:
            self.lr_schedulers().step()
            if self.ema is not None:
                trainable = self.trainable()
                with gathered(p for _, p in trainable):
                    self.ema.update(trainable)
            self.nonfinite_in_a_row = 0
        self._log_step(loss.detach(), grad_norm, metrics, batch, skipped=skipped)
        return loss.detach()

    @property
    def accumulate_grad_batches(self) -> int:
        """Micro-batches per optimizer step (``AtomicDeepSpeedStrategy`` gives it to DeepSpeed's engine)."""
        return self.loop.accumulate_grad_batches

    @property
    def mid_accumulation(self) -> bool:
        """Between the micro-batches of one optimizer step: a checkpoint now would lose the gradients so far."""
        return bool(self._pending)

    def _on_nonfinite(self, loss: torch.Tensor, index: int) -> None:
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        log.warning(
            "non-finite loss or gradient (loss %s) at batch %d, step %d: step skipped (%d in a row)",
            loss.item(),
            index,
            self.global_step,
            self.nonfinite_in_a_row,
        )
        if self.nonfinite_in_a_row >= self.loop.max_consecutive_nonfinite:
            path = self.stage_dir / "checkpoints" / f"nonfinite_step_{self.global_step:09d}.ckpt"
            self.trainer.save_checkpoint(path, weights_only=False)
            self.stop_reason = (
                f"{self.nonfinite_in_a_row} non-finite losses in a row (trainer.max_consecutive_nonfinite="
                f"{self.loop.max_consecutive_nonfinite}) at step {self.global_step}; stopped. The weights before "
                f"these batches are saved in {path}. Lower stage.optim.lr, check the data, or resume with "
                "resume=<that path> after fixing the cause."
            )
            self.trainer.should_stop = True

    # ----- logging -------------------------------------------------------------------------------------------
    def _log_step(
        self,
        loss: torch.Tensor,
        grad_norm: torch.Tensor,
        metrics: dict[str, torch.Tensor],
        batch: Any,
        *,
        skipped: bool,
    ) -> None:
        now = time.perf_counter()
        batch_size = (
            int(batch["image_only_indicator"].shape[0]) * self.trainer.world_size * self.accumulate_grad_batches
        )
        rate = batch_size / (now - self._last_time) if self._last_time is not None else float("nan")
        self._last_time = now
        values = {
            "train/loss": loss.float(),
            "train/lr": torch.tensor(self.optimizers().param_groups[0]["lr"]),
            "train/grad_norm": grad_norm.detach().float().cpu(),
            "train/samples_per_s": torch.tensor(rate),
            "train/nonfinite_skipped": torch.tensor(float(self.nonfinite_total)),
            **{f"train/{k}": v.detach().float() for k, v in metrics.items()},
        }
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "tracker"):
            for name, count in datamodule.tracker.stats().metrics().items():  # data/skipped_*, data/padded_short
                values[name] = torch.tensor(float(count))
        self.log_dict(values, on_step=True, prog_bar=False, batch_size=batch_size, sync_dist=False)
        self.log("loss", loss.float(), prog_bar=True, logger=False, batch_size=batch_size)
        if self.loop.metrics_file and self.global_rank == 0:
            row = {"batch": self.batches_seen - 1, "step": self.global_step, "skipped": skipped}
            row.update({k: float(v) for k, v in values.items() if k != "train/samples_per_s"})
            with open(self.loop.metrics_file, "a") as f:
                f.write(json.dumps(row) + "\n")

    # ----- checkpoint state ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        assert not self.mid_accumulation, "checkpoints are written at optimizer steps only (they hold no gradients)"
        checkpoint["run_id"] = self.run_id
        checkpoint["stage_loop"] = {
            "batches_seen": self.batches_seen,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "nonfinite_total": self.nonfinite_total,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("stage_loop", {})
        self.batches_seen = int(state.get("batches_seen", 0))
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.run_id = str(checkpoint.get("run_id", self.run_id))  # checkpoints from before run ids keep a new one
        if self.global_rank == 0:
            if self.loop.metrics_file:
                truncate_metrics(Path(self.loop.metrics_file), keep_batches=self.batches_seen)
            step = int(checkpoint.get("global_step", 0))  # evaluations after the checkpoint are run again
            trim_jsonl(self.stage_dir / EVAL_METRICS_FILE, keep=lambda row: int(row["step"]) <= step)


class _LinearWarmup:
    """lr factor min(1, (step + 1) / warmup); a picklable callable so the scheduler state round-trips."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return 1.0 if self.warmup_steps <= 0 else min(1.0, (step + 1) / self.warmup_steps)


def truncate_metrics(path: Path, *, keep_batches: int) -> None:
    """Drop the metric rows of batches after a resumed checkpoint (they are trained again)."""
    trim_jsonl(path, keep=lambda row: int(row["batch"]) < keep_batches)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
