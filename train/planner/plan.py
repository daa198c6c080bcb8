"""The plan of one stage config: per-GPU memory at micro-batch 1, the largest micro-batch that fits, the gradient
accumulation that reaches the global batch, FLOPs per sample and GPU-hours (``scripts/plan.py`` prints it).

Everything is built from the composed config on fake tensors: the objective (``train.builders.build_objective``,
CLIP left unloaded), the trainable set (``train.module.select_trainable``), the UNet step traced block by block
(``train.planner.activations``), the VAE encoding of a micro-batch, and an AdamW step (``states``). The peak of a
step is the states without gradients plus the largest of: the forward and backward (activations x micro-batch,
plus the share of the gradients made by then, at each block's peak, plus autocast's parameter copies), the VAE
encoding that precedes the UNet (no gradients yet: they are freed after each step), and the optimizer step (all
gradients plus its temporaries). Activations are taken as linear in the micro-batch (each sample's saved tensors
are its own). Sizes are in GiB (2**30 bytes), written ``_gb``.

The global batch is ``data.global_batch_size`` when set, else ``data.batch_size`` x world size x
``trainer.accumulate_grad_batches`` when that is above 1, else the paper's batch for the stage
(``RECIPE_GLOBAL_BATCH``, RECIPE.md section 5), else ``data.batch_size`` x the world size. ``accumulation`` is then
global batch / (world size x micro-batch) for the largest micro-batch that fits and divides it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from omegaconf import OmegaConf

from train.conditioning import latent_hw as latent_grid
from train.perf import peak_bf16_tflops
from train.planner.activations import ActivationEstimate, estimate_activations, fake_mode
from train.planner.states import ParamCounts, count_params, optimizer_step_transient, state_bytes, zero_stage
from train.planner.tracking import LiveBytes
from train.strategy_registry import get_strategy

GIB = 2.0**30
# RECIPE 5 (SVD paper App D): II-a 1536; II-b, III T2V and the I2V stages 768. Other stages report none.
RECIPE_GLOBAL_BATCH = {"video_pretrain": 1536, "video_finetune": 768, "img2vid_finetune": 768}
H100_BF16_DENSE_TFLOPS = peak_bf16_tflops("NVIDIA H100 80GB HBM3")  # the SXM card, dense bf16 (train/perf.py)


@dataclass(frozen=True)
class PlanOptions:
    gpu_memory_gb: float = 80.0
    mfu: float = 0.45
    peak_tflops: float = H100_BF16_DENSE_TFLOPS
    world_sizes: tuple[int, ...] = (1, 8, 64)
    device: str = "cuda"  # the optimizer's path (foreach on CUDA); "cpu" for the CPU validation


def global_batch(cfg: Any, world_size: int) -> tuple[int, str]:
    """The stage's global batch and where it comes from (``select``: keys that older configs lack read as unset)."""
    value = OmegaConf.select(cfg, "data.global_batch_size", default=None)
    if value:
        return int(value), "data.global_batch_size"
    k = OmegaConf.select(cfg, "trainer.accumulate_grad_batches", default=1) or 1
    if k > 1:
        return int(cfg.data.batch_size) * world_size * k, "data.batch_size x world size x accumulate_grad_batches"
    if cfg.stage.name in RECIPE_GLOBAL_BATCH:
        return RECIPE_GLOBAL_BATCH[cfg.stage.name], "RECIPE section 5"
    return int(cfg.data.batch_size) * world_size, "data.batch_size x world size"


def build_for_plan(cfg: Any, mode: Any) -> Any:
    """The stage's objective on fake tensors, with the stage's trainable set selected."""
    from train.builders import build_objective
    from train.module import select_trainable

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    cfg.model.clip.pretrained = None  # only shapes matter: load no weights
    if cfg.stage.objective != "diffusion":
        raise ValueError(f"the planner covers diffusion stages (UNet); stage.objective={cfg.stage.objective}")
    with mode:
        objective = build_objective(cfg)
    if OmegaConf.select(cfg, "stage.lora.rank", default=0):  # only the LoRA trains (train/lora.py); its A and B are
        from train.lora import inject_lora  # real tensors (small), as peft cannot move fake ones to the base's device

        inject_lora(objective, cfg.stage.lora)
    select_trainable(objective.export_module(), list(cfg.stage.trainable), layers=cfg.stage.trainable_layers)
    return objective


def encode_peak(objective: Any, *, frames: int, height: int, width: int, mode: Any) -> int:
    """Peak bytes of the no-grad VAE encoding of one micro-batch (pixels in, latents out), traced."""
    first_stage = objective.model.first_stage
    with mode, torch.no_grad():
        x = torch.empty(frames, 3, height, width)
        tracker = LiveBytes([x])
        tracker.know_module(first_stage)
        with tracker:
            first_stage.encode_latents(x.clone(), chunk_size=objective.encode_chunk, sample=True)
    return tracker.peak


def _gib(nbytes: float) -> float:
    return round(nbytes / GIB, 6)


def _largest_fitting(need: Any, mem: float, limit: int = 1 << 16) -> int:
    """The largest micro-batch b with need(b) <= mem (need grows with b); 0 when none fits."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if need(mid) <= mem else (lo, mid - 1)
    return lo


def _largest_dividing(limit: int, world: int, total: int) -> int:
    for m in range(limit, 0, -1):
        if total % (world * m) == 0:
            return m
    return 0


@dataclass(frozen=True)
class StageTrace:
    """What the fake-tensor traces of a stage give, before any world size is chosen."""

    counts: ParamCounts
    act: ActivationEstimate
    encode: int  # VAE encoding peak (bytes)
    copies: int  # autocast's parameter copies (bytes)
    opt_step: int  # AdamW step temporaries (bytes, unsharded)


def trace_stage(cfg: Any, options: PlanOptions) -> StageTrace:
    mode = fake_mode()
    objective = build_for_plan(cfg, mode)
    precision, spec = cfg.trainer.precision, get_strategy(cfg.strategy.name)
    hw = latent_grid(cfg.stage.height, cfg.stage.width, 2 ** (len(cfg.model.autoencoder.ch_mult) - 1))
    frames, unet = cfg.stage.num_frames, objective.model.unet
    act = estimate_activations(unet, batch=1, frames=frames, latent_hw=hw, precision=precision, mode=mode)
    encode = encode_peak(objective, frames=frames, height=cfg.stage.height, width=cfg.stage.width, mode=mode)
    half_params = precision == "bf16-true" or (spec.zero_options and precision.endswith("-mixed"))
    counts = count_params(objective.export_module())
    opt_dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    opt_step = optimizer_step_transient(counts, foreach=options.device == "cuda", dtype=opt_dtype)
    return StageTrace(counts, act, encode, 0 if half_params else act.param_copies, opt_step)


def world_row(cfg: Any, traced: StageTrace, *, world_size: int, options: PlanOptions) -> dict[str, Any]:
    """The plan at one world size (see the module docstring for how the peak is put together)."""
    n, spec, act = world_size, get_strategy(cfg.strategy.name), traced.act
    s = state_bytes(
        traced.counts,
        precision=cfg.trainer.precision,
        spec=spec,
        world_size=n,
        offload_optimizer=cfg.strategy.offload_optimizer,
        offload_params=cfg.strategy.offload_params,
    )
    opt_n = 0 if cfg.strategy.offload_optimizer else traced.opt_step / (n if zero_stage(spec) else 1)

    def need(b: int, encode: float = traced.encode) -> float:
        during = max(b * a + f * s.grads for a, f in act.timeline) + traced.copies
        return s.total() - s.grads + max(during, encode, s.grads + opt_n)

    mem = options.gpu_memory_gb * GIB
    max_mb = _largest_fitting(need, mem)
    gb, source = global_batch(cfg, n)
    micro = _largest_dividing(max_mb, n, gb)
    flops = act.fwd_flops + act.bwd_flops
    hours = cfg.stage.max_steps * gb * flops / (options.mfu * options.peak_tflops * 1e12) / 3600
    return {
        "world_size": n,
        **{f"{k}_gb": _gib(v) for k, v in asdict(s).items()},
        "activations_gb": _gib(act.peak),
        "param_copies_gb": _gib(traced.copies),
        "encode_gb": _gib(traced.encode),
        "optimizer_step_gb": _gib(opt_n),
        "total_gb": _gib(need(1)),
        "unet_step_gb": _gib(need(1, encode=0)),  # from cached latents: no VAE encoding in the step
        "fits": need(1) <= mem,
        "max_micro_batch": max_mb,
        "global_batch": gb,
        "global_batch_source": source,
        "micro_batch": micro or None,
        "accumulation": gb // (n * micro) if micro else None,
        "gpu_hours": round(hours, 1),
    }


def plan(cfg: Any, options: PlanOptions = PlanOptions()) -> dict[str, Any]:
    """The plan as a JSON-ready dict: top-level fields for ``options.world_sizes[0]``, each world size in
    ``per_world_size``."""
    traced = trace_stage(cfg, options)
    counts, act, spec = traced.counts, traced.act, get_strategy(cfg.strategy.name)
    rows = [world_row(cfg, traced, world_size=n, options=options) for n in options.world_sizes]
    first = rows[0]
    return {
        **first,
        "stage": cfg.stage.name,
        "frames": cfg.stage.num_frames,
        "height": cfg.stage.height,
        "width": cfg.stage.width,
        "max_steps": cfg.stage.max_steps,
        "strategy": spec.name,
        "zero_stage": zero_stage(spec),
        "precision": cfg.trainer.precision,
        "activation_checkpointing": cfg.model.activation_checkpointing,
        "trainable_params": counts.trainable,
        "frozen_params": counts.frozen,
        "flops_per_sample": act.fwd_flops + act.bwd_flops,
        "fwd_flops_per_sample": act.fwd_flops,
        "gpu_memory_gb": options.gpu_memory_gb,
        "mfu": options.mfu,
        "peak_tflops": options.peak_tflops,
        "traced_units": f"{act.distinct_units} distinct of {act.units}",
        "per_world_size": rows,
    }


TABLE_COLUMNS = (
    ("world_size", "GPUs"),
    ("params_gb", "params"),
    ("grads_gb", "grads"),
    ("optimizer_gb", "optim"),
    ("ema_gb", "EMA"),
    ("frozen_gb", "frozen"),
    ("buffers_gb", "buffers"),
    ("activations_gb", "act(mb1)"),
    ("total_gb", "total"),
    ("fits", "fits"),
    ("max_micro_batch", "max mb"),
    ("accumulation", "accum"),
)


def format_table(result: dict[str, Any]) -> str:
    head = (
        f"{result['stage']} {result['frames']}x{result['height']}x{result['width']} {result['strategy']} "
        f"{result['precision']} checkpointing={result['activation_checkpointing']}: "
        f"{result['trainable_params'] / 1e6:.1f}M trainable, {result['frozen_params'] / 1e6:.1f}M frozen; "
        f"{result['flops_per_sample'] / 1e12:.1f} TFLOP per sample; GB per GPU (GiB), micro-batch 1"
    )
    lines = [head, " | ".join(title for _, title in TABLE_COLUMNS)]
    for row in result["per_world_size"]:
        lines.append(
            " | ".join(f"{row[key]:.2f}" if key.endswith("_gb") else str(row[key]) for key, _ in TABLE_COLUMNS)
        )
    lines.append(
        f"global batch {result['global_batch']} ({result['global_batch_source']}); {result['max_steps']} steps: "
        f"{result['gpu_hours']} GPU-hours at MFU {result['mfu']} of {result['peak_tflops']} TFLOP/s per GPU"
    )
    return "\n".join(lines)
