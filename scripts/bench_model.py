"""Benchmark our VideoUNet against diffusers' UNetSpatioTemporalConditionModel carrying the same weights.

Prints ONE JSON line:

- ``ours_s`` / ``ref_s``: median seconds of a training step (forward, MSE-style loss, backward), timed alternately
  in one process after warm-up (the order flips every repetition); ``ratio`` = ours_s / ref_s.
- ``peak_mem_ours_mb`` / ``peak_mem_ref_mb``: see ``mem_method``; ``ckpt_peak_mem_ratio`` = peak of our UNet with
  activation checkpointing on every block / peak without.
- ``svd_fwd_flops_per_sample`` / ``svd_bwd_flops_per_sample`` / ``svd_train_flops_per_sample``: FLOPs of the full
  SVD UNet (``svd_unet_spec()``) for one 14-frame 576x1024 video (latent 72x128), counted on the meta device by
  ``torch.utils.flop_counter.FlopCounterMode`` (attention decomposes to bmm there, so it is counted; backward is
  measured, not assumed to be 2x).

Usage: ``python scripts/bench_model.py [--steps 5] [--frames 14] [--size 32] [--channels 64] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from models.activation_checkpointing import apply_activation_checkpointing
from models.checkpoints.diffusers_unet import (
    forward_with_diffusers_inputs,
    match_sgm_group_norm_eps,
    to_diffusers_unet_config,
    to_diffusers_unet_state_dict,
)
from models.unet import UNetSpec, VideoUNet, svd_unet_spec
from train.perf import unet_train_flops
from train.planner.tracking import measured_peak_bytes

MEM_METHOD = {
    # Cross-checked against glibc mallinfo2 live bytes sampled after every aten op: agrees within 1%. Process RSS
    # is not used: glibc keeps freed blocks mapped, so RSS peaks overstate what the step needs.
    "cpu": "params + inputs + peak rise of live tensor bytes during forward+backward, from torch.profiler "
    "profile_memory allocation events (PyTorch CPU allocator; excludes oneDNN-internal scratch and allocator slack)",
    "cuda": "params + inputs + (torch.cuda.max_memory_allocated during forward+backward - memory_allocated before)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="timed repetitions per model (after warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    p.add_argument("--frames", type=int, default=14)
    p.add_argument("--size", type=int, default=32, help="latent height and width")
    p.add_argument("--channels", type=int, default=64, help="model_channels")
    p.add_argument("--head-channels", type=int, default=32, help="num_head_channels")
    p.add_argument("--context-dim", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1, help="videos per step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-flops", action="store_true", help="skip the full-SVD FLOP count")
    args = p.parse_args(argv)
    if args.steps < 1 or args.size % 2 or args.frames < 1:
        p.error("need --steps >= 1, --frames >= 1 and an even --size (one downsampling level)")
    return args


def bench_spec(args: argparse.Namespace) -> UNetSpec:
    """Two levels with attention at both, as a small stand-in for the SVD UNet (same block types)."""
    return UNetSpec(
        in_channels=8,
        model_channels=args.channels,
        channel_mult=(1, 2),
        num_res_blocks=2,
        attention_resolutions=(1, 2),
        num_head_channels=args.head_channels,
        context_dim=args.context_dim,
    )


def build_models(spec: UNetSpec, *, device: torch.device, dtype: torch.dtype) -> tuple[VideoUNet, nn.Module]:
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    ours = VideoUNet(spec)
    with torch.no_grad():  # noise on every parameter: zero-init convs would make the output check vacuous
        for p in ours.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ref = UNetSpatioTemporalConditionModel(**to_diffusers_unet_config(spec))
    result = ref.load_state_dict(to_diffusers_unet_state_dict(ours.state_dict(), spec=spec), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    match_sgm_group_norm_eps(ref)
    ours, ref = ours.to(device), ref.to(device)
    if dtype != torch.float32:  # diffusers warns about any dtype cast, even a no-op one
        ours, ref = ours.to(dtype), ref.to(dtype)
    return ours.train(), ref.train()


def make_inputs(spec: UNetSpec, args: argparse.Namespace, *, device: torch.device, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(1)
    b, t, s = args.batch, args.frames, args.size
    inp = {
        "x": torch.randn(b, t, spec.in_channels, s, s, generator=g),
        "c_noise": 0.25 * torch.randn(b, generator=g),
        "context": torch.randn(b, 1, spec.context_dim, generator=g),
        "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]]).repeat(b, 1),  # fps_id, motion_bucket_id, cond_aug
    }
    return {k: v.to(device, dtype if v.is_floating_point() and k != "c_noise" else v.dtype) for k, v in inp.items()}


def ours_forward(unet: VideoUNet, inp: dict) -> torch.Tensor:
    """Same inputs as diffusers gets; the per-frame repeats and the vector embedding count towards our time."""
    return forward_with_diffusers_inputs(unet, inp["x"], inp["c_noise"], inp["context"], inp["added_time_ids"])


def ref_forward(unet: nn.Module, inp: dict) -> torch.Tensor:
    return unet(inp["x"], inp["c_noise"], inp["context"], inp["added_time_ids"], return_dict=False)[0]


def make_step(unet: nn.Module, forward: Callable, inp: dict) -> Callable[[], None]:
    def step() -> None:
        unet.zero_grad(set_to_none=True)
        forward(unet, inp).float().square().mean().backward()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict[str, Callable[[], None]], *, warmup: int, reps: int, device: torch.device) -> dict:
    """Seconds per step for each entry; entries alternate, and the order flips every repetition."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            steps[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def peak_memory_bytes(step: Callable[[], None], unet: nn.Module, inp: dict, *, device: torch.device) -> int:
    """Params + inputs + the largest rise of allocated tensor bytes over one forward+backward (see MEM_METHOD)."""
    base = sum(p.numel() * p.element_size() for p in unet.parameters())
    base += sum(v.numel() * v.element_size() for v in inp.values())
    unet.zero_grad(set_to_none=True)
    return measured_peak_bytes(step, baseline=base, device=device)


def svd_flops(*, frames: int = 14, latent_hw: tuple[int, int] = (72, 128)) -> tuple[int, int]:
    """(forward, backward) FLOPs of the full SVD UNet for one video, counted on the meta device."""
    return unet_train_flops(svd_unet_spec(), frames=frames, latent_hw=latent_hw)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    spec = bench_spec(args)
    ours, ref = build_models(spec, device=device, dtype=dtype)
    inp = make_inputs(spec, args, device=device, dtype=dtype)
    with torch.no_grad():
        max_abs_diff = (ours_forward(ours, inp).float() - ref_forward(ref, inp).float()).abs().max().item()

    steps = {"ours": make_step(ours, ours_forward, inp), "ref": make_step(ref, ref_forward, inp)}
    times = time_interleaved(steps, warmup=args.warmup, reps=args.steps, device=device)
    ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["ref"])

    mb = 2.0**20
    peak_ref = peak_memory_bytes(steps["ref"], ref, inp, device=device)
    peak_ours = peak_memory_bytes(steps["ours"], ours, inp, device=device)
    apply_activation_checkpointing(ours, "all")
    peak_ckpt = peak_memory_bytes(steps["ours"], ours, inp, device=device)
    apply_activation_checkpointing(ours, "none")

    result = {
        "ours_s": round(ours_s, 4),
        "ref_s": round(ref_s, 4),
        "ratio": round(ours_s / ref_s, 4),
        "peak_mem_ours_mb": round(peak_ours / mb, 1),
        "peak_mem_ref_mb": round(peak_ref / mb, 1),
        "peak_mem_ours_ckpt_mb": round(peak_ckpt / mb, 1),
        "ckpt_peak_mem_ratio": round(peak_ckpt / peak_ours, 4),
        "mem_method": MEM_METHOD[device.type],
        "max_abs_diff": max_abs_diff,
        "ours_times_s": [round(v, 4) for v in times["ours"]],
        "ref_times_s": [round(v, 4) for v in times["ref"]],
    }
    if not args.no_flops:
        fwd, bwd = svd_flops()
        result |= {
            "svd_fwd_flops_per_sample": fwd,
            "svd_bwd_flops_per_sample": bwd,
            "svd_train_flops_per_sample": fwd + bwd,
            "svd_flops_input": "svd_unet_spec(), 1 video of 14 frames, latent 72x128 (576x1024 px), fp32 graph",
        }
    result |= {
        "device": str(device) if device.type != "cpu" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "config": {
            "model_channels": spec.model_channels,
            "channel_mult": list(spec.channel_mult),
            "num_res_blocks": spec.num_res_blocks,
            "attention_resolutions": list(spec.attention_resolutions),
            "num_head_channels": spec.num_head_channels,
            "context_dim": spec.context_dim,
            "in_channels": spec.in_channels,
            "frames": args.frames,
            "latent_size": args.size,
            "batch": args.batch,
        },
        "steps": args.steps,
        "warmup": args.warmup,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
