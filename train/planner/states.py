"""Per-GPU bytes of the training state (parameters, gradients, optimizer, EMA, frozen parts, buffers) by strategy.

Counts come from the stage's objective built on fake tensors (``train.builders.build_objective``, trainable
parameters chosen by ``train.module.select_trainable``); the bytes per element follow what the code does:

| precision / strategy | params | grads | AdamW | EMA | frozen |
|---|---|---|---|---|---|
| ``32-true``, any | fp32 | fp32 | m, v fp32 (8 B) | fp32 | fp32 |
| ``*-mixed``, Lightning (auto, ddp) | fp32 (+ autocast copies) | fp32 | 8 B | fp32 | fp32 |
| ``*-mixed``, DeepSpeed (casts the module) | 2 B | 2 B | fp32 master + m, v (12 B) | fp32 | 2 B |
| ``bf16-true`` | 2 B | 2 B | m, v 2 B each (4 B) | fp32 | 2 B |

Autocast's bf16 copies of the weights are ``param_copies`` of the activation trace (train/planner/activations.py).

ZeRO (``StrategySpec.zero_options``: stage 2, ``shards_weights``: stage 3) divides the optimizer state and the
gradients by the world size, and under stage 3 the parameters and frozen parts too; ``strategy.offload_optimizer``
/ ``offload_params`` put them on the CPU (0 GPU bytes). The EMA (train/ema.py) is a full fp32 copy on every rank.
``buffers`` are the communication buffers: DDP's gradient buckets (a second copy of the gradients, since
``gradient_as_bucket_view`` is off) and DeepSpeed's buckets from ``train.strategies.deepspeed_config``'s sizes
(ZeRO-2 with ``overlap_comm``: 4.5x the bucket size, as DeepSpeed's config docs state; ZeRO-3: the reduce and
prefetch buckets plus ``stage3_max_live_parameters`` gathered).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from train.strategy_registry import StrategySpec

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")


@dataclass(frozen=True)
class ParamCounts:
    trainable: int  # elements the optimizer updates
    frozen: int  # elements of frozen parameters and of buffers (VAE, CLIP, frozen UNet layers)
    trainable_shapes: tuple[tuple[int, ...], ...]


def count_params(module: nn.Module) -> ParamCounts:
    params = list(module.parameters())
    trainable = [p for p in params if p.requires_grad]
    frozen = sum(p.numel() for p in params if not p.requires_grad) + sum(b.numel() for b in module.buffers())
    return ParamCounts(sum(p.numel() for p in trainable), frozen, tuple(tuple(p.shape) for p in trainable))


def zero_stage(spec: StrategySpec) -> int:
    """0 (replicated), 2 or 3: what the registered strategy shards."""
    if spec.shards_weights:
        return 3
    return 2 if spec.zero_options else 0


@dataclass(frozen=True)
class StateBytes:
    params: float
    grads: float
    optimizer: float
    ema: float
    frozen: float
    buffers: float

    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.ema + self.frozen + self.buffers


def _deepspeed_defaults() -> dict[str, int]:
    from train.strategies import deepspeed_config

    sig = inspect.signature(deepspeed_config).parameters
    keys = ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size", "stage3_max_live_parameters")
    return {k: int(sig[k].default) for k in keys}


def state_bytes(
    counts: ParamCounts,
    *,
    precision: str,
    spec: StrategySpec,
    world_size: int,
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> StateBytes:
    """Bytes per GPU (see the module docstring for the rules)."""
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r}: the planner knows {', '.join(PRECISIONS)}")
    stage, n = zero_stage(spec), world_size
    deepspeed = spec.zero_options
    half = precision == "bf16-true" or (deepspeed and precision.endswith("-mixed"))
    p_b = 2 if half else 4
    opt_b = {True: 12 if precision.endswith("-mixed") else 4, False: 8}[half]
    t, f = counts.trainable, counts.frozen
    params, frozen = t * p_b, f * p_b
    grads, optimizer = t * p_b, t * opt_b
    if stage >= 2:
        grads, optimizer = grads / n, optimizer / n
    if stage == 3:
        params, frozen = params / n, frozen / n
    if offload_optimizer:
        optimizer = 0.0
    if offload_params:
        params = frozen = 0.0
    buffers = 0.0
    if spec.ddp_buckets_from is not None and n >= spec.ddp_buckets_from:
        buffers = t * p_b
    elif stage == 2:
        d = _deepspeed_defaults()
        buffers = 4.5 * min(max(d["reduce_bucket_size"], d["allgather_bucket_size"]), t) * p_b
    elif stage == 3:
        d = _deepspeed_defaults()
        live = d["reduce_bucket_size"] + d["stage3_prefetch_bucket_size"] + d["stage3_max_live_parameters"]
        buffers = min(live, t + f) * p_b
    return StateBytes(params, grads, optimizer, t * 4.0, frozen, buffers)


def optimizer_step_transient(counts: ParamCounts, *, foreach: bool, dtype: torch.dtype = torch.float32) -> int:
    """Peak bytes AdamW allocates inside a step beyond its states, traced on fake parameters (torch's foreach path
    on CUDA makes whole-list temporaries; the CPU default goes tensor by tensor)."""
    from train.planner.activations import fake_mode
    from train.planner.tracking import LiveBytes

    with fake_mode():
        params = [torch.empty(s, dtype=dtype, requires_grad=True) for s in counts.trainable_shapes]
        for p in params:
            p.grad = torch.empty_like(p)
        opt = torch.optim.AdamW(params, lr=1e-4, foreach=foreach)
        opt.step()  # the states (m, v) appear in the first step
        tracker = LiveBytes([*params, *(p.grad for p in params)])
        for state in opt.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    tracker.know(v)
        with tracker:
            opt.step()
    return tracker.peak
