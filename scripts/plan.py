"""Will a stage fit? ``python scripts/plan.py <the overrides of python -m train> [--gpu-memory 80] [--mfu 0.45]
[--peak-tflops 989] [--world-sizes 1,8,64]``.

Prints a table (GB per GPU at micro-batch 1 for each world size) and, last, ONE JSON line: ``params_gb``,
``grads_gb``, ``optimizer_gb``, ``ema_gb``, ``frozen_gb`` (VAE, CLIP, frozen layers), ``buffers_gb``,
``activations_gb``, ``encode_gb`` (the VAE encoding of a micro-batch), ``total_gb`` (``unet_step_gb``: without the
encoding, as on cached latents), ``fits``, ``max_micro_batch``, ``accumulation``, ``flops_per_sample``,
``gpu_hours`` for the first world size, and every world size under ``per_world_size``. GB are GiB (2**30 bytes).
Everything is built from the composed config on fake tensors (train/planner/); nothing is downloaded or run.
Example: ``python scripts/plan.py stage=img2vid_finetune stage.num_frames=25 strategy=deepspeed_zero2
trainer.precision=bf16-mixed model.activation_checkpointing=all``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.planner.plan import H100_BF16_DENSE_TFLOPS, PlanOptions, format_table, plan  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Other arguments: Hydra overrides.")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GPU memory in GB (GiB) (default 80)")
    p.add_argument("--mfu", type=float, default=0.45, help="assumed model FLOPs utilisation (default 0.45)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=H100_BF16_DENSE_TFLOPS,
        help=f"peak TFLOP/s per GPU (default {H100_BF16_DENSE_TFLOPS:g}: dense bf16 of an H100 SXM)",
    )
    p.add_argument("--world-sizes", default="1,8,64", help="comma-separated GPU counts (default 1,8,64)")
    args, overrides = p.parse_known_args(argv)
    try:
        args.world_sizes = tuple(int(v) for v in args.world_sizes.split(","))
    except ValueError:
        p.error(f"--world-sizes {args.world_sizes!r}: give comma-separated integers, e.g. 1,8,64")
    if min(args.world_sizes) < 1 or not 0 < args.mfu <= 1 or args.gpu_memory <= 0 or args.peak_tflops <= 0:
        p.error("need world sizes >= 1, 0 < --mfu <= 1, and positive --gpu-memory and --peak-tflops")
    return args, overrides


def compose(overrides: list[str]):  # noqa: ANN201
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from train.config import TrainConfig, register_configs
    from train.config_keys import check_added_keys

    register_configs()
    check_added_keys(overrides, schema=TrainConfig, conf_dir=ROOT / "conf")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse_args(argv)
    cfg = compose(overrides)
    options = PlanOptions(
        gpu_memory_gb=args.gpu_memory, mfu=args.mfu, peak_tflops=args.peak_tflops, world_sizes=args.world_sizes
    )
    try:
        result = plan(cfg, options)
    except ValueError as err:
        sys.exit(f"Error: {err}")
    print(format_table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
