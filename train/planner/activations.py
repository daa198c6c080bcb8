"""Activation bytes and FLOPs of a UNet training step, traced block by block on fake tensors.

A naive fake-tensor trace of the whole 1.5B SVD UNet at 25x576x1024 took about 9 minutes (issue 15); most of its
blocks repeat. So each *unit* (the UNet's blocks in ``VideoUNet.forward`` order, the output blocks with their skip
concatenation, then the output head with an MSE-style loss) is traced once per distinct (structure, checkpointing,
input shapes and dtypes) under ``LiveBytes`` and ``FlopCounterMode`` (a checkpointed one once more without
checkpointing, for its model FLOPs), giving what its forward leaves saved for backward, its output, the transient of
its backward above that, the gradients it hands back and its parameters' gradients. ``combine`` replays the step
from those numbers: the forward adds each unit's saved bytes; the backward walks the units in reverse with the
incoming gradient and the skip gradients still waiting for their input block, and the activation peak is the largest
(saved so far + waiting gradients + one unit's backward transient). Each point also records the share of parameter
gradients made by then, since activations are freed as gradients appear (the plan adds the two per point).
``whole_trace_bytes`` traces ``VideoUNet.forward`` in one piece for the test that checks this combination; a
checkpointed block's backward traced alone peaks up to ~13% higher than within the whole step at test size (autograd
runs its recomputation in another order), so the combination errs on the safe side there.

Mixed precision is traced under ``torch.autocast`` (CPU kernels on fake tensors; SDPA takes the fused CPU path,
which saves the output and log-sum-exp like CUDA's flash attention). FLOPs are model FLOPs: the recomputed
forward of a checkpointed block is left out, so MFU has the usual meaning.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from models.unet import VideoUNet
from models.unet.embeddings import timestep_embedding
from train.planner.tracking import LiveBytes, grads_set_aside, storage_bytes

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


# FlopCounterMode knows the CUDA attention kernels, not the fused CPU one that fake CPU tensors dispatch to.
def _cpu_sdpa_flops(q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(q, k, v)


def _cpu_sdpa_backward_flops(grad_out: Any, q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> int:
    # Model FLOPs: twice the forward's two matmuls, as the unfused backward does; torch's flash-backward formula
    # adds the recomputed scores, which is hardware work like a checkpointed block's forward.
    return 2 * sdpa_flop_count(q, k, v)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)


@dataclass(frozen=True)
class UnitTrace:
    saved: int  # bytes its forward leaves for the backward (its input included when it is saved)
    out: int  # bytes of its output
    fwd_extra: int  # forward peak above its input
    bwd_extra: int  # backward peak above saved + output + incoming gradient
    grads_in: tuple[int, ...]  # bytes of the gradients of its tensor inputs
    param_copies: int  # autocast's copies of parameters made in its forward
    param_grads: int  # bytes of the gradients of its parameters
    fwd_flops: int
    bwd_flops: int  # model FLOPs of its backward (``trace_unet`` leaves a checkpointed block's recomputation out)
    out_shape: tuple[int, ...]
    out_dtype: torch.dtype


@dataclass(frozen=True)
class ActivationEstimate:
    peak: int  # activation bytes at the step's peak (parameter gradients and copies excluded)
    saved: int  # bytes saved for backward at the end of the forward
    # (activation bytes, fraction of the parameter gradients already made) at each unit's peak, in step order:
    # the step's peak with gradients of G bytes is max(a + f * G), as activations are freed while gradients appear
    timeline: tuple[tuple[int, float], ...]
    param_copies: int
    fwd_flops: int
    bwd_flops: int
    distinct_units: int
    units: int


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    dtype = AUTOCAST.get(precision)
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def trace_unit(
    fn: Any, module: nn.Module, inputs: list[tuple[tuple[int, ...], torch.dtype]], precision: str
) -> UnitTrace:
    """Trace ``fn(*tensors)`` (fake tensors of ``inputs`` that need grad) forward and backward; see ``UnitTrace``."""
    bases = [torch.empty(shape, dtype=dtype, requires_grad=True) for shape, dtype in inputs]
    tracker = LiveBytes(bases)
    tracker.know_module(module)
    hooks = grads_set_aside(module.parameters(), tracker)
    try:
        with tracker:
            xs = [b.clone() for b in bases]  # tracked: whether the unit saves its input shows after ``del xs``
            start = tracker.live
            tracker.reset_peak()
            with flop_counter() as fwd, _autocast(precision):
                out = fn(*xs)
            fwd_extra = tracker.peak - start
            del xs
            out_bytes = storage_bytes(out)
            saved = tracker.live - out_bytes
            grad_out = torch.ones_like(out)
            before_bwd = tracker.live
            tracker.reset_peak()
            with flop_counter() as bwd, _autocast(precision):
                out.backward(grad_out)
            bwd_extra = tracker.peak - before_bwd
            grads_in = tuple(storage_bytes(b.grad) if b.grad is not None else 0 for b in bases)
            copies, param_grads = tracker.param_copies, tracker.grads
    finally:
        for h in hooks:
            h.remove()
    for p in module.parameters():
        p.grad = None
    fwd_flops, bwd_flops = fwd.get_total_flops(), bwd.get_total_flops()
    return UnitTrace(
        saved,
        out_bytes,
        fwd_extra,
        bwd_extra,
        grads_in,
        copies,
        param_grads,
        fwd_flops,
        bwd_flops,
        tuple(out.shape),
        out.dtype,
    )


@dataclass
class _Unit:
    kind: str  # "input", "middle", "output", "head"
    module: nn.Module
    trace: UnitTrace


class _BlockRunner:
    """Calls a UNet block the way ``VideoUNet.forward`` does, with the step's fixed conditioning tensors."""

    def __init__(self, block: nn.Module, args: tuple, *, concat: bool) -> None:
        self.block, self.args, self.concat = block, args, concat

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        x = torch.cat(xs, dim=1) if self.concat else xs[0]
        return self.block(x, *self.args)


def _head_loss(unet: VideoUNet, h: torch.Tensor) -> torch.Tensor:
    return unet.out(h).float().square().mean()


def step_inputs(unet: VideoUNet, *, batch: int, frames: int, latent_hw: tuple[int, int], precision: str) -> tuple:
    """Fake UNet inputs: x (B*T, C, h, w), and the block arguments (emb needing grad, context, indicator)."""
    spec, n = unet.spec, batch * frames
    x = torch.empty(n, spec.in_channels, *latent_hw)
    context = torch.empty(n, 1, spec.context_dim) if spec.context_dim else None
    with _autocast(precision):
        emb = unet.time_embed(timestep_embedding(torch.empty(n), spec.model_channels).to(x.dtype))
        if spec.adm_in_channels is not None:
            emb = emb + unet.label_emb(torch.empty(n, spec.adm_in_channels))
    emb = emb.detach().requires_grad_(True)
    indicator = torch.zeros(batch, frames) if spec.is_video else None
    return x, (emb, context, frames, indicator, None)


def fake_mode() -> FakeTensorMode:
    """The fake-tensor mode to build and trace in (a model built in it holds no memory)."""
    return FakeTensorMode(allow_non_fake_inputs=True)


def trace_unet(
    unet: VideoUNet, *, batch: int, frames: int, latent_hw: tuple[int, int], precision: str, mode: Any = None
) -> tuple[list[_Unit], int]:
    """The units of one training step, each traced once per distinct (structure, input) on fake tensors, in
    ``mode`` (the one ``unet`` was built in, if it was; a new ``fake_mode()`` otherwise)."""
    cache: dict[tuple, UnitTrace] = {}
    with mode or fake_mode():
        x, args = step_inputs(unet, batch=batch, frames=frames, latent_hw=latent_hw, precision=precision)

        def run(kind: str, module: nn.Module, fn: Any, inputs: list) -> UnitTrace:
            key = (repr(module), getattr(module, "checkpointing", False), kind, tuple(inputs))
            if key not in cache:
                cache[key] = trace_unit(fn, module, inputs, precision)
                args[0].grad = None
                if getattr(module, "checkpointing", False):  # model FLOPs: without the recomputed forward
                    module.checkpointing = False
                    plain = trace_unit(fn, module, inputs, precision)
                    module.checkpointing = True
                    args[0].grad = None
                    cache[key] = replace(cache[key], fwd_flops=plain.fwd_flops, bwd_flops=plain.bwd_flops)
            units.append(_Unit(kind, module, cache[key]))
            return cache[key]

        units: list[_Unit] = []
        h = (tuple(x.shape), x.dtype)
        skips = []
        for block in unet.input_blocks:
            t = run("input", block, _BlockRunner(block, args, concat=False), [h])
            h = (t.out_shape, t.out_dtype)
            skips.append(h)
        t = run("middle", unet.middle_block, _BlockRunner(unet.middle_block, args, concat=False), [h])
        h = (t.out_shape, t.out_dtype)
        for block in unet.output_blocks:
            t = run("output", block, _BlockRunner(block, args, concat=True), [h, skips.pop()])
            h = (t.out_shape, t.out_dtype)
        run("head", unet.out, lambda y: _head_loss(unet, y), [h])
    return units, len(cache)


def combine(units: list[_Unit], distinct: int) -> ActivationEstimate:
    """Replay the step from the unit traces (see the module docstring); returns the activation peak."""
    live = 0
    timeline: list[tuple[int, float]] = []
    for u in units:  # forward: saved bytes accumulate; the running unit's input and transient on top
        timeline.append((live + u.trace.fwd_extra, 0.0))
        live += u.trace.saved
    saved = live
    skip_grads: list[int] = []  # gradients of input-block outputs, waiting for their block
    grad = made = 0
    all_grads = sum(u.trace.param_grads for u in units) or 1
    for u in reversed(units):
        t = u.trace
        if u.kind == "input" and skip_grads:
            grad += skip_grads.pop()  # the skip gradient joins the one flowing back (summed by autograd)
        made += t.param_grads  # counted from the start of the unit's backward: an upper bound
        timeline.append((live + sum(skip_grads) + grad + t.bwd_extra, made / all_grads))
        live -= t.saved
        grad = t.grads_in[0]
        if u.kind == "output":
            skip_grads.append(t.grads_in[1])
    return ActivationEstimate(
        peak=max(a for a, _ in timeline),
        saved=saved,
        timeline=tuple(timeline),
        param_copies=sum(u.trace.param_copies for u in units),
        fwd_flops=sum(u.trace.fwd_flops for u in units),
        bwd_flops=sum(u.trace.bwd_flops for u in units),
        distinct_units=distinct,
        units=len(units),
    )


def estimate_activations(
    unet: VideoUNet, *, batch: int, frames: int, latent_hw: tuple[int, int], precision: str, mode: Any = None
) -> ActivationEstimate:
    units, distinct = trace_unet(unet, batch=batch, frames=frames, latent_hw=latent_hw, precision=precision, mode=mode)
    return combine(units, distinct)


def whole_trace_bytes(unet: VideoUNet, *, batch: int, frames: int, latent_hw: tuple[int, int], precision: str) -> int:
    """Activation peak of the UNet step traced in one piece through ``VideoUNet.forward`` (checks ``combine``)."""
    spec, n = unet.spec, batch * frames
    with fake_mode():
        x, t = torch.empty(n, spec.in_channels, *latent_hw), torch.empty(n)
        context = torch.empty(n, 1, spec.context_dim)
        y = torch.empty(n, spec.adm_in_channels) if spec.adm_in_channels is not None else None
        tracker = LiveBytes([x, t, context, *([y] if y is not None else [])])
        tracker.know_module(unet)
        hooks = grads_set_aside(unet.parameters(), tracker)
        try:
            with tracker, _autocast(precision):
                loss = unet(x, t, context, y, num_video_frames=frames).float().square().mean()
                loss.backward()
        finally:
            for hook in hooks:
                hook.remove()
        for p in unet.parameters():
            p.grad = None
    return tracker.peak
