"""Training-step performance on one device: FLOPs per sample, the card's dense bf16 peak, a timed UNet step.

- ``unet_train_flops``: forward and backward FLOPs of a UNet for one sample, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (attention decomposes to bmm there, so it is
  counted; backward is measured, not assumed to be 2x). MFU counts these model FLOPs only: the forward that
  activation checkpointing recomputes is not useful work.
- ``peak_bf16_tflops``: the dense bf16 tensor-core peak of a card, by ``torch.cuda.get_device_name()``.
- ``UNetStep`` / ``bench_unet_step``: the stage's training step as ``StageModule.training_step`` takes it, less the
  data loading and the conditioner: the objective built by ``train.builders.build_objective`` (so the frozen VAE
  and CLIP towers are resident, and ``model.activation_checkpointing`` is applied as in a run), the stage's
  trainable selection, autocast per ``trainer.precision``, the finite-loss check, backward, gradient clipping and
  its finite check, AdamW, the EMA update. Latents are random tensors of the stage's shape; the conditions come
  from one run of the real conditioner on a random frame, reused every step. Used by ``scripts/gpu_check.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.unet import UNetSpec, VideoUNet

# (substring of torch.cuda.get_device_name(), dense bf16 TFLOP/s = NVIDIA's with-sparsity figure / 2); the first
# match wins, so the PCIe / NVL parts come before their SXM names ("NVIDIA H100 80GB HBM3" is the SXM card).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.5),
    ("H100 NVL", 835.5),
    ("H200 NVL", 835.5),
    ("H100", 989.4),
    ("H200", 989.4),  # also GH200
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
)
AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16}
FLOPS_METHOD = (
    "torch.utils.flop_counter.FlopCounterMode on the meta device (scripts/bench_model.py's count): the stage's UNet "
    "spec, one sample of num_frames frames at the stage's latent size, forward + backward; MFU counts these model "
    "FLOPs only (activation checkpointing's recomputed forward is not counted)"
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak in TFLOP/s from ``PEAK_BF16_TFLOPS``; None for a card not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def latent_size(cfg: Any) -> tuple[int, int]:
    """(h, w) of the stage's latents: the frame size over the VAE's downsampling."""
    down = 2 ** (len(cfg.model.autoencoder.ch_mult) - 1)
    return cfg.stage.height // down, cfg.stage.width // down


def unet_train_flops(spec: UNetSpec, *, frames: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(forward, backward) FLOPs of a UNet for one sample of ``frames`` frames, counted on the meta device."""
    with torch.device("meta"):
        unet = VideoUNet(spec)
        x = torch.randn(frames, spec.in_channels, *latent_hw)
        t, context = torch.randn(frames), torch.randn(frames, 1, spec.context_dim)
        y = torch.randn(frames, spec.adm_in_channels) if spec.adm_in_channels else None
    with FlopCounterMode(display=False) as fwd:
        out = unet(x, t, context, y, num_video_frames=frames)
    with FlopCounterMode(display=False) as bwd:
        out.float().square().mean().backward()
    return fwd.get_total_flops(), bwd.get_total_flops()


def stage_unet_train_flops(cfg: Any) -> tuple[int, int]:
    """``unet_train_flops`` of the stage's UNet at the stage's frames and latent size."""
    from train.builders import unet_spec

    return unet_train_flops(unet_spec(cfg), frames=cfg.stage.num_frames, latent_hw=latent_size(cfg))


def tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages among ``tensors`` (non-tensors are ignored)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            seen[st.data_ptr() or id(st)] = st.nbytes()
    return sum(seen.values())


def is_out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in text or "ALLOC_FAILED" in text


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class UNetStep:
    """One training step of the stage's UNet (see the module docstring); call it to take a step."""

    def __init__(self, cfg: Any, *, device: torch.device, seed: int = 0) -> None:
        from train.builders import build_objective
        from train.ema import EMA

        if cfg.stage.objective != "diffusion":
            raise ValueError(f"stage {cfg.stage.name} trains {cfg.stage.objective!r}; the step bench needs diffusion")
        precision = str(cfg.trainer.precision)
        if precision not in AUTOCAST:
            raise ValueError(f"trainer.precision={precision}; the step bench runs {', '.join(AUTOCAST)}")
        self.device, self.dtype = device, AUTOCAST[precision]
        torch.manual_seed(seed)
        with torch.device(device):  # build in place: initialising the 1.5B UNet and ViT-H on the CPU takes long
            objective = build_objective(cfg)
        self.objective = objective.to(device)
        if cfg.model.compile:
            self.objective.model.unet.compile()
        if list(cfg.stage.trainable) != ["*"] or cfg.stage.trainable_layers != "all":
            # StageModule's selection; the default keeps every parameter the objective did not freeze, and skipping
            # the import of train.module (Lightning) saves seconds in each gpu_check worker.
            from train.module import select_trainable

            select_trainable(objective.export_module(), list(cfg.stage.trainable), layers=cfg.stage.trainable_layers)
        self.named = list(objective.named_trainable_parameters())
        self.params = [p for _, p in self.named]
        o = cfg.stage.optim
        self.optimizer = torch.optim.AdamW(
            self.params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps
        )
        e = cfg.stage.ema
        self.ema = EMA(self.named, decay=e.decay, warmup=e.warmup).to(device) if e.enabled else None
        self.clip = cfg.trainer.gradient_clip_val or math.inf
        self.frames, self.batch = int(cfg.stage.num_frames), int(cfg.data.batch_size)
        self.generator = torch.Generator(device).manual_seed(seed)
        self.x0, self.cond, self.kwargs = self._inputs(cfg, seed=seed + 1)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def _inputs(self, cfg: Any, *, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        from train.conditioning import conditioner_inputs, per_frame, sample_cond_aug
        from train.tasks import get_task

        obj, b, t, dev = self.objective, self.batch, self.frames, self.device
        g = torch.Generator(dev).manual_seed(seed)
        image = aug = None
        if get_task(obj.task).image_conditioned:
            k = len(get_task(obj.task).cond_frame_indices)  # interp: (B, 2, 3, H, W), the first and last frame
            lead = (b, k) if k > 1 else (b,)
            image = torch.rand(*lead, 3, cfg.stage.height, cfg.stage.width, generator=g, device=dev) * 2 - 1
            aug = sample_cond_aug(obj.cond_aug, b, generator=g, device=dev)
        ids = torch.full((b,), 6, device=dev), torch.full((b,), 127, device=dev)
        inputs = conditioner_inputs(
            obj.task,
            captions=["a video"] * b,
            fps_id=ids[0],
            motion_bucket_id=ids[1],
            elevation=torch.full((b,), 10.0, device=dev),  # the mv task's camera elevation (degrees); others ignore it
            cond_image=image,
            cond_aug=aug,
            generator=g,
        )
        with self.autocast():
            cond = {k: v.detach() for k, v in obj.model.conditioner(inputs, generator=g).items()}
        kwargs: dict[str, Any] = {}
        if obj.is_video:
            cond = per_frame(cond, t)  # (B, ...) -> (B*T, ...)
            kwargs = {"num_video_frames": t, "image_only_indicator": torch.zeros(b, t, device=dev)}
        h, w = latent_size(cfg)
        x0 = torch.randn(b * t, cfg.model.autoencoder.embed_dim, h, w, generator=g, device=dev)
        return x0, cond, kwargs

    def __call__(self) -> float:
        obj = self.objective
        with self.autocast():
            per_sample = obj.loss(
                obj.model.unet,
                obj.denoiser,
                self.x0,
                self.cond,
                num_video_frames=self.frames,
                generator=self.generator,
                network_kwargs=self.kwargs,
            )
            loss = per_sample.mean()
        if not torch.isfinite(loss).item():
            raise RuntimeError(f"non-finite loss {loss.item()} in the step bench")
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], self.clip)
        if not torch.isfinite(norm).item():
            raise RuntimeError(f"non-finite gradient norm {norm.item()} in the step bench")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.named)
        return float(loss.detach())

    def state_bytes(self) -> dict[str, int]:
        """Bytes the run holds between steps, by kind; ``grads`` is what the backward adds (fp32, as the params)."""
        frozen = [p for p in self.objective.parameters() if not p.requires_grad]
        optimizer = [v for s in self.optimizer.state.values() for v in s.values()]
        inputs = [self.x0, *self.cond.values(), *self.kwargs.values()]
        return {
            "trainable_params": tensor_bytes(self.params),
            "frozen_params_and_buffers": tensor_bytes([*frozen, *self.objective.buffers()]),
            "optimizer": tensor_bytes(optimizer),
            "ema": 0 if self.ema is None else tensor_bytes(self.ema.buffers()),
            "inputs": tensor_bytes(inputs),
            "grads": tensor_bytes(self.params),
        }


GIB = 2.0**30
MEM_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated / max_memory_reserved over all steps, warm-up included",
    "cpu": "state bytes + the peak rise of allocated bytes over one more step, from torch.profiler profile_memory "
    "events (train.planner.tracking.measured_peak_bytes)",
}


def bench_unet_step(cfg: Any, *, device: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    """Time ``warmup + steps`` training steps of the stage's UNet (``UNetStep``); samples/s over the timed steps,
    MFU against the card's dense bf16 peak (None on CPU or an unknown card), peak memory. A CUDA out-of-memory
    error is an answer, not a failure: ``fits`` is then False, with the peak reached before it."""
    fwd, bwd = stage_unet_train_flops(cfg)
    result: dict[str, Any] = {
        "frames": int(cfg.stage.num_frames),
        "height": int(cfg.stage.height),
        "width": int(cfg.stage.width),
        "latent_hw": list(latent_size(cfg)),
        "batch": int(cfg.data.batch_size),
        "precision": str(cfg.trainer.precision),
        "activation_checkpointing": str(cfg.model.activation_checkpointing),
        "compile": bool(cfg.model.compile),
        "unet_fwd_flops_per_sample": fwd,
        "unet_bwd_flops_per_sample": bwd,
        "unet_train_flops_per_sample": fwd + bwd,
        "flops_method": FLOPS_METHOD,
        "warmup": warmup,
        "steps": steps,
    }
    step = UNetStep(cfg, device=device)
    result["trainable_parameters"] = sum(p.numel() for p in step.params)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    try:
        for _ in range(warmup + steps):
            _sync(device)
            start = time.perf_counter()
            losses.append(step())
            _sync(device)
            times.append(time.perf_counter() - start)
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError, or a library's failed workspace allocation
        if not is_out_of_memory(err):
            raise
        result |= {"fits": False, "oom": f"{type(err).__name__}: {str(err).splitlines()[0]}", "steps_done": len(times)}
        result |= _memory(step, device, measure_cpu=False)
        return result
    timed = times[warmup:]
    median = statistics.median(timed)
    samples_per_s = step.batch / median
    result |= {
        "fits": True,
        "oom": None,
        "step_times_s": [round(s, 4) for s in times],
        "step_s_median": round(median, 5),
        "samples_per_s": round(samples_per_s, 5),
        "losses": [round(v, 5) for v in losses],
        "achieved_tflops": round((fwd + bwd) * samples_per_s / 1e12, 3),
    }
    result |= _memory(step, device, measure_cpu=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_bf16_tflops(name) if device.type == "cuda" else None
    result["peak_bf16_tflops"] = peak
    result["mfu"] = None if peak is None else round((fwd + bwd) * samples_per_s / (peak * 1e12), 4)
    if peak is None:
        result["mfu_note"] = (
            "no dense bf16 peak for the CPU" if device.type == "cpu" else f"{name!r} is not in PEAK_BF16_TFLOPS"
        )
    return result


def _memory(step: UNetStep, device: torch.device, *, measure_cpu: bool) -> dict[str, Any]:
    state = step.state_bytes()
    held = sum(v for k, v in state.items() if k != "grads")
    out: dict[str, Any] = {"memory_method": MEM_METHOD[device.type], "state_bytes": state}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        reserved = torch.cuda.max_memory_reserved(device)
        out |= {
            "peak_reserved_bytes": reserved,
            "peak_reserved_gib": round(reserved / GIB, 3),
            "card_memory_bytes": torch.cuda.get_device_properties(device).total_memory,
            "alloc_retries": torch.cuda.memory_stats(device).get("num_alloc_retries", 0),
        }
    elif measure_cpu:
        from train.planner.tracking import measured_peak_bytes

        peak = measured_peak_bytes(step, baseline=held, device=device)
    else:
        return out
    out |= {
        "peak_allocated_bytes": peak,
        "peak_allocated_gib": round(peak / GIB, 3),
        "peak_minus_held_state_bytes": peak - held,
    }
    return out


def environment(device_type: str, *, repo: Path) -> dict[str, Any]:
    """What a measurement ran on: the card (name, memory, capability, bf16 peak), torch, CUDA, cuDNN, Python, the
    allocator setting and the git commit of ``repo``."""
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
    }
    try:
        git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=repo, capture_output=True, text=True)
        env["git"] = git.stdout.strip() or f"unknown ({git.stderr.strip()})"
    except OSError as err:  # no git on the machine
        env["git"] = f"unknown ({err})"
    if device_type != "cuda":
        return env | {"card": "cpu", "peak_bf16_tflops": None}
    props = torch.cuda.get_device_properties(0)
    return env | {
        "card": props.name,
        "card_memory_gib": round(props.total_memory / GIB, 2),
        "capability": f"{props.major}.{props.minor}",
        "cudnn": torch.backends.cudnn.version(),
        "peak_bf16_tflops": peak_bf16_tflops(props.name),
    }
