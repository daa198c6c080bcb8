"""Benchmark a stage's training throughput: pixels (decode + VAE encode every step) against cached latents.

Runs the real training loop (``train.run.run``: ``StageModule`` + Lightning ``Trainer`` + ``StreamDataModule``)
in one process on the same clips, ``--warmup + --steps`` optimizer steps a run, the two modes alternating (pixels,
cached, cached, pixels, pixels, cached, ... ``--repeats`` runs of each, the order swapped every repeat, so a slow
spell or a drift of a shared machine hits both alike):

- ``pixels``: the data pipeline decodes the clips and the objective encodes them with the frozen VAE every step;
- ``cached``: the same clips first cached with the stage's own VAE (``train/stage_cache.py``, the library functions
  of ``scripts/cache_latents.py``; the VAE is the one the stage builds and initialises, so both runs train the same
  model), then the stage's ``data.sources`` pointed at the cached shards.

``--compare clip`` (an image-to-video stage) compares two cached-latent modes the same way: ``recomputed_clip`` (the
cache holds no CLIP embedding, so the conditioner runs its CLIP image tower on the conditioning frame every step)
against ``cached_clip`` (the cache also holds the embeddings of the stage's own CLIP tower, which then never runs);
the keys are named after the modes (``recomputed_clip_samples_per_s``, ``cached_clip_samples_per_s``,
``cached_clip_over_recomputed_clip``, ...) and ``clip_encode_flops_per_sample`` replaces the VAE's. At Stage III size
on CPU: ``--stage img2vid_finetune --compare clip --overrides model.clip.arch=ViT-H-14 model.unet.context_dim=1024
stage.num_frames=14 ...`` (the full ViT-H-14 image tower, random weights, with the tiny UNet; see scripts/README.md).

Prints ONE JSON line: ``pixels_samples_per_s``, ``cached_samples_per_s`` and ``cached_over_pixels`` (steady state:
batch size / median step time over the steps after ``--warmup`` of all runs of the mode; the step time is
StageModule's per-step ``train/samples_per_s``, which spans data wait, forward, backward, AdamW, EMA and logging),
the same from the mean step time (``*_mean``: samples over the summed time, so data stalls and CPU contention weigh
in), each repeat's pair side by side (``*_samples_per_s_by_repeat``, ``cached_over_pixels_by_repeat`` and their
median ``cached_over_pixels_median_of_repeats``), the per-step times (runs in order), the caching time, and FLOPs
per sample counted as ``scripts/bench_model.py`` counts them (``train.perf``: ``FlopCounterMode`` on the meta
device; here for the stage's own UNet spec at the stage's latent size, plus the VAE encoder's forward). ``mfu`` =
UNet training FLOP/s achieved / peak FLOP/s, with the peak from ``--peak-tflops`` or, on CUDA, the dense bf16 peaks
of ``train.perf.PEAK_BF16_TFLOPS``; null when the peak is unknown (CPU without ``--peak-tflops``).

Usage: ``python scripts/bench_train.py [--stage video_pretrain] [--overrides key=value ...] [--steps 8]
[--warmup 2] [--repeats 3] [--device cpu|cuda] [--peak-tflops X] [--threads N] [--data DATA_ROOT]
[--compare pixels|clip]``. Defaults:
``experiment=demo`` (tiny networks, 64x96, 8 frames, batch 4, 2 decoding workers; about 2 minutes on one CPU
thread) trained from scratch (``stage.init.from_stage=null``, ``stage.init.keep=[unet,first_stage,conditioner]``),
on demo shards written to a temporary folder unless ``--data`` names a data root (``paths.data_root``). On a GPU:
``--device cuda --experiment none --overrides model=svd data.sources=... ...`` (bf16-mixed).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from train.builders import build_first_stage
from train.config import register_configs
from train.perf import peak_bf16_tflops, stage_unet_train_flops
from train.run import run
from train.stage_cache import cache_stage_sources, clip_tower, stage_model, with_sources

REPO = Path(__file__).resolve().parents[1]
LOOP = (
    "trainer: train.run.run (StageModule, Lightning Trainer, StreamDataModule); step time from StageModule's "
    "per-step train/samples_per_s in the CSV log"
)
FLOPS_METHOD = (
    "torch.utils.flop_counter.FlopCounterMode on the meta device, as scripts/bench_model.py: the stage's UNet "
    "spec, one sample (num_frames frames) at the stage's latent size, forward + backward; mfu counts these UNet "
    "FLOPs only (the frozen VAE encode of the pixel path is reported apart and not counted as useful work)"
)
# --compare: (the baseline mode, the mode it is compared with), run alternately.
COMPARISONS = {"pixels": ("pixels", "cached"), "clip": ("recomputed_clip", "cached_clip")}
MODES_HELP = {
    "pixels": "pixels: decode + VAE encode every step; cached: cached latents (the same clips, the stage's VAE)",
    "clip": "both on cached latents; recomputed_clip: the CLIP image tower embeds the conditioning frame every "
    "step; cached_clip: the cached embeddings of the stage's own CLIP tower (the tower does not run)",
}
BENCH_KEYS = (
    "stage.init.from_stage=null",
    "stage.init.keep=[unet,first_stage,conditioner]",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="video_pretrain", help="a conf/stage/ name (a diffusion stage)")
    p.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides (after the bench's own)")
    p.add_argument("--experiment", default="demo", help="conf/experiment/ name ('none' for no experiment)")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run (>= 1)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each mode, alternating pixels and cached")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s of the device for the MFU")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of the training process (default: 1 on --device cpu, where OpenMP threads spinning "
        "against other processes on a shared machine stall steps for seconds; torch's choice on cuda)",
    )
    p.add_argument("--data", type=Path, default=None, help="paths.data_root (default: demo shards in a temp dir)")
    p.add_argument("--cache-batch-size", type=int, default=16, help="frames per VAE forward when caching")
    p.add_argument(
        "--compare",
        choices=sorted(COMPARISONS),
        default="pixels",
        help="pixels: pixels vs cached latents; clip: cached latents with CLIP recomputed vs cached CLIP embeddings "
        "(an image-to-video stage)",
    )
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        p.error("need --steps, --repeats >= 1 and --warmup >= 1 (the first step has no previous step to time against)")
    return args


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def bench_config(args: argparse.Namespace, *, root: Path, data_root: Path, mode: str) -> DictConfig:
    """The stage's config for one mode: the bench's keys, then the user's overrides, then the timing keys."""
    device = ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed"]
    overrides = [
        f"stage={args.stage}",
        *([f"experiment={args.experiment}"] if args.experiment != "none" else []),
        *BENCH_KEYS,
        *(device if args.device == "cuda" else ["trainer.accelerator=cpu", "trainer.devices=1"]),
        f"paths.data_root={data_root}",
        *args.overrides,
        f"stage.max_steps={args.warmup + args.steps}",
        f"paths.root={root}",
        f"paths.run_name={mode}",
        "trainer.log_every_n_steps=1",
        "trainer.checkpoint_every_n_steps=1000000000",
        "trainer.progress_bar=false",
        "logger.csv=true",
        "logger.wandb=false",
        "logger.samples.every_n_steps=0",
        "resume=never",
    ]
    cfg = compose(overrides)
    if cfg.stage.objective != "diffusion":
        raise ValueError(f"--stage {args.stage} trains {cfg.stage.objective!r}; the bench needs a diffusion stage")
    return cfg


def read_step_rates(stage_folder: Path) -> list[float]:
    """StageModule's per-step train/samples_per_s from the CSV log, in step order (the first is NaN)."""
    files = sorted(stage_folder.glob("logs/**/metrics.csv"))
    if not files:
        raise ValueError(f"no CSV log under {stage_folder}/logs; the bench needs logger.csv=true")
    with open(files[0], newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/samples_per_s", "") != ""]
    return [float(r["train/samples_per_s"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


def timed_run(cfg: DictConfig, *, warmup: int) -> list[float]:
    """Train the stage; the seconds of each step after ``warmup``."""
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON line
        code = run(cfg)
    if code != 0:
        raise RuntimeError(f"the {cfg.paths.run_name} run stopped with exit code {code}; see the log above")
    rates = read_step_rates(Path(cfg.paths.root) / cfg.paths.run_name / cfg.stage.name)
    timed = rates[warmup:]
    if not timed or any(not math.isfinite(r) or r <= 0 for r in timed):
        raise RuntimeError(f"expected {cfg.stage.max_steps} finite step rates in the CSV log, got {rates}")
    return [cfg.data.batch_size / r for r in timed]


def summary(runs: list[list[float]], *, batch: int) -> dict[str, Any]:
    """One mode's figures from the step seconds of each of its runs: median and mean over all steps, and each
    run's own steady rate."""
    seconds = [s for r in runs for s in r]
    median = statistics.median(seconds)
    return {
        "samples_per_s": batch / median,
        "samples_per_s_mean": batch * len(seconds) / sum(seconds),
        "step_s_median": median,
        "step_times_s": [round(s, 4) for s in seconds],
        "by_repeat": [batch / statistics.median(r) for r in runs],
    }


def vae_encode_flops(cfg: Any) -> int:
    """FLOPs of the frozen VAE encoder for one sample (the pixel path's extra work per step)."""
    with torch.device("meta"):
        vae = build_first_stage(cfg)
        x = torch.randn(cfg.stage.num_frames, 3, cfg.stage.height, cfg.stage.width)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vae.encode(x)
    return counter.get_total_flops()


def peak_flops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops is not None:
        return args.peak_tflops * 1e12
    tflops = peak_bf16_tflops(torch.cuda.get_device_name()) if args.device == "cuda" else None
    return None if tflops is None else tflops * 1e12


def demo_data_root(folder: Path) -> Path:
    from data.demo_data import write_demo_dataset

    write_demo_dataset(folder, seed=0, num_raw_videos=0, num_clips=8, num_images=8, samples_per_shard=4)
    return folder


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads is not None or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    try:
        result = bench(args)
    finally:
        torch.set_num_threads(threads)
    print(json.dumps(result))
    return 0


def cache_sources(args: argparse.Namespace, cfg: DictConfig, folder: Path) -> dict[str, list[dict[str, Any]] | None]:
    """Each mode's ``data.sources`` (None: the stage's own), cached with the stage's own VAE (and CLIP tower)."""
    model = stage_model(cfg)  # the modes' stage is the same stage: the same VAE and CLIP tower
    tower = clip_tower(model)
    kw = {"device": args.device, "batch_size": args.cache_batch_size}
    latents = cache_stage_sources(cfg, folder / "latents", vae=model.first_stage, **kw)
    sources = {"pixels": None, "cached": latents, "recomputed_clip": latents}
    if args.compare == "clip":
        vae = model.first_stage
        sources["cached_clip"] = cache_stage_sources(cfg, folder / "latents_clip", vae=vae, clip=tower, **kw)
    return sources


def meta_clip_tower(cfg: Any) -> Any:
    """The stage's CLIP image tower built on the meta device (no weights), or None when its conditioner has none."""
    from train.builders import build_conditioner

    with torch.device("meta"):
        return clip_tower(SimpleNamespace(conditioner=build_conditioner(cfg)))


def check_comparison(args: argparse.Namespace, cfg: Any) -> None:
    """ValueError when the stage cannot run ``args.compare`` (before any data is written or cached)."""
    if args.compare == "clip" and meta_clip_tower(cfg) is None:
        raise ValueError(
            f"--compare clip needs an image-to-video stage (--stage img2vid_finetune); {args.stage} has no CLIP "
            "image embedder"
        )


def clip_encode_flops(cfg: Any) -> int:
    """FLOPs of the CLIP image tower's forward for one sample (what cached embeddings save per step)."""
    tower = meta_clip_tower(cfg)
    with torch.device("meta"):
        x = torch.randn(1, 3, *tower.image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tower.model.visual(x)
    return counter.get_total_flops()


def bench(args: argparse.Namespace) -> dict[str, Any]:
    base, new = COMPARISONS[args.compare]
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp_path = Path(tmp)
        check_comparison(args, bench_config(args, root=tmp_path, data_root=tmp_path, mode="check"))
        data_root = args.data if args.data is not None else demo_data_root(tmp_path / "demo_data")
        runs = tmp_path / "runs"

        def config(mode: str, repeat: int) -> DictConfig:
            cfg = bench_config(args, root=runs, data_root=data_root, mode=f"{mode}_{repeat}")
            return cfg if sources[mode] is None else with_sources(cfg, sources[mode])

        stage_cfg = bench_config(args, root=runs, data_root=data_root, mode="cache")
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            sources = cache_sources(args, stage_cfg, tmp_path / "cache")
        cache_seconds = time.perf_counter() - start
        seconds: dict[str, list[list[float]]] = {base: [], new: []}
        # Alternate, so a slow spell of the machine hits both modes, and swap the order every repeat (A B, B A,
        # A B, ...), so a drift over the runs (machine load, one process running them all) does not favour one.
        for repeat in range(args.repeats):
            for mode in (base, new) if repeat % 2 == 0 else (new, base):
                seconds[mode].append(timed_run(config(mode, repeat), warmup=args.warmup))
    batch = int(stage_cfg.data.batch_size)
    figures = {mode: summary(seconds[mode], batch=batch) for mode in (base, new)}
    fwd, bwd = stage_unet_train_flops(stage_cfg)
    by_repeat = [n / b for b, n in zip(figures[base]["by_repeat"], figures[new]["by_repeat"], strict=True)]
    peak = peak_flops(args)

    def mfu(samples_per_s: float) -> float | None:
        return None if peak is None else float(f"{(fwd + bwd) * samples_per_s / peak:.4g}")

    ratio = f"{new}_over_{base}"
    a, b = figures[base], figures[new]
    result = {
        "stage": args.stage,
        "compare": args.compare,
        "modes": MODES_HELP[args.compare],
        "loop": LOOP,
        f"{base}_samples_per_s": round(a["samples_per_s"], 4),
        f"{new}_samples_per_s": round(b["samples_per_s"], 4),
        ratio: round(b["samples_per_s"] / a["samples_per_s"], 4),
        f"{base}_samples_per_s_mean": round(a["samples_per_s_mean"], 4),
        f"{new}_samples_per_s_mean": round(b["samples_per_s_mean"], 4),
        f"{ratio}_mean": round(b["samples_per_s_mean"] / a["samples_per_s_mean"], 4),
        f"{base}_step_s_median": round(a["step_s_median"], 4),
        f"{new}_step_s_median": round(b["step_s_median"], 4),
        f"{base}_step_times_s": a["step_times_s"],
        f"{new}_step_times_s": b["step_times_s"],
        "repeats": args.repeats,
        "order": f"{base}, {new}, {new}, {base}, {base}, {new}, ... (one run of each per repeat, the order swapped "
        "every repeat)",
        f"{base}_samples_per_s_by_repeat": [round(v, 4) for v in a["by_repeat"]],
        f"{new}_samples_per_s_by_repeat": [round(v, 4) for v in b["by_repeat"]],
        f"{ratio}_by_repeat": [round(v, 4) for v in by_repeat],
        f"{ratio}_median_of_repeats": round(statistics.median(by_repeat), 4),
        "cache_seconds": round(cache_seconds, 3),
        "cached_shards": sum(len(s["urls"]) for s in sources[new] or sources["cached"]),
        "unet_fwd_flops_per_sample": fwd,
        "unet_bwd_flops_per_sample": bwd,
        "unet_train_flops_per_sample": fwd + bwd,
        **(
            {"vae_encode_flops_per_sample": vae_encode_flops(stage_cfg)}
            if args.compare == "pixels"
            else {"clip_encode_flops_per_sample": clip_encode_flops(stage_cfg)}
        ),
        "flops_method": FLOPS_METHOD,
        "peak_tflops": None if peak is None else peak / 1e12,
        f"{base}_mfu": mfu(a["samples_per_s"]),
        f"{new}_mfu": mfu(b["samples_per_s"]),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": str(stage_cfg.trainer.precision),
        "batch_size": batch,
        "num_workers": int(stage_cfg.data.num_workers),
        "num_frames": int(stage_cfg.stage.num_frames),
        "height": int(stage_cfg.stage.height),
        "width": int(stage_cfg.stage.width),
        "steps": args.steps,
        "warmup": args.warmup,
        "overrides": list(args.overrides),
        "data": "demo shards (temp folder)" if args.data is None else str(args.data),
        "config": OmegaConf.to_container(stage_cfg.model, resolve=True),
    }
    return result


if __name__ == "__main__":
    sys.exit(main())
