"""Evaluate generated videos: FVD, CLIP text-video similarity and consistency, the paper's UCF-101 protocol.

Usage:
  python scripts/evaluate.py fvd --generated samples --reference-shards 'shards/{000..099}.tar' --i3d i3d_torchscript.pt
  python scripts/evaluate.py clip --generated samples/ --prompts prompts.jsonl --clip-pretrained open_clip_vit_b32.bin
  python scripts/evaluate.py ucf101 --export runs/x/video_finetune/export --ucf-root UCF-101/ --i3d i3d_torchscript.pt
  python scripts/evaluate.py multiview --export runs/x/multiview/export --data 'orbits/test/*.tar'

Each prints one JSON line with the metrics (and writes it to --out when given).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.video_decode import ClipSpec
from train.conditioning import fps_to_fps_id
from train.config import EvaluationConfig, GenerationSettings
from train.evaluation import multiview
from train.evaluation import ucf101 as u
from train.evaluation.clip_metrics import ClipScorer, score_videos
from train.evaluation.features import I3D_HELP, VideoFeatureExtractor, accumulate_features, build_extractor, metric_name
from train.evaluation.frechet import FeatureStats, frechet_distance, load_stats
from train.evaluation.generate import generate_video, load_export_generator
from train.evaluation.video_files import iter_file_clips, iter_shard_clips, iter_video_files, list_videos
from train.media import atomic_path
from train.tasks import get_task

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def ucf_epilog() -> str:
    table = "\n".join(f"  {name:<14} {fvd:7.2f}" for name, fvd in u.PAPER_FVD.items())
    return (
        f"ucf101 protocol (SVD paper Tab. 2, App. E.4): {u.UCF_NUM_VIDEOS} videos in UCF-101's class distribution, "
        f"prompt = class name; {u.UCF_NUM_FRAMES} frames at {u.UCF_FPS:g} fps, CFG w={u.UCF_CFG:g}, generated at "
        f"{u.GENERATION_SIZE[0]}x{u.GENERATION_SIZE[1]}; bilinear-antialias resize to 240x432, centre crop "
        f"{u.EVAL_SIZE[0]}x{u.EVAL_SIZE[1]}; I3D TorchScript (rescale=True, resize=True, return_features=True).\n"
        f"Zero-shot UCF-101 FVD reported in the paper (lower is better):\n{table}\n"
        f"--i3d: {I3D_HELP}. --features clip gives a CLIP-space Frechet distance ('fd_clip'), not comparable to FVD."
    )


def _common(p: argparse.ArgumentParser, *, features: bool) -> None:
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--batch-size", type=int, default=EvaluationConfig.batch_size, help="videos per feature-network call"
    )
    p.add_argument(
        "--clip-arch", default=EvaluationConfig.clip_arch, help="open_clip model name (tiny: random test-size model)"
    )
    p.add_argument("--clip-pretrained", help="open_clip tag (downloads) or local weights file; default: random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the JSON line here (atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if features:
        f = p.add_mutually_exclusive_group()
        f.add_argument("--i3d", type=Path, help="path of i3d_torchscript.pt (FVD); only a file you trust")
        f.add_argument("--features", choices=["clip", "clip+diff"], help="CLIP features instead of I3D (not FVD)")
        p.add_argument("--reference-stats", type=Path, help="npz cache of the reference statistics: read or written")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, epilog=ucf_epilog(), formatter_class=raw)
    sub = p.add_subparsers(dest="mode", required=True)
    fvd = sub.add_parser("fvd", help="Frechet distance of generated clips to reference clips")
    gen = fvd.add_mutually_exclusive_group(required=True)
    gen.add_argument("--generated", type=Path, help="folder of generated mp4/gif files (each evaluated whole)")
    gen.add_argument("--generated-shards", nargs="+", help="shard specs of generated clips")
    ref = fvd.add_mutually_exclusive_group(required=True)
    ref.add_argument("--reference-shards", nargs="+", help="shard specs of real clips (data/ layout)")
    ref.add_argument("--reference-dir", type=Path, help="folder (searched recursively) of real video files")
    fvd.add_argument("--num-frames", type=int, help="clip length; default: the generated clips' frame count")
    fvd.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="default: the generated clips' size")
    fvd.add_argument("--fps", type=float, help="frame rate of the reference clips (default: native)")
    fvd.add_argument("--num-generated", type=int)
    fvd.add_argument("--num-reference", type=int)
    _common(fvd, features=True)
    clip = sub.add_parser("clip", help="CLIP text-video similarity (CLIPSIM) and frame consistency")
    clip.add_argument("--generated", type=Path, required=True, help="folder of generated mp4/gif files")
    clip.add_argument("--prompts", type=Path, help="jsonl {video, prompt | image} or .txt (one per sorted video)")
    clip.add_argument("--per-video", type=Path, help="jsonl of the per-video scores")
    _common(clip, features=False)
    ucf = sub.add_parser(
        "ucf101",
        help="zero-shot UCF-101 FVD of a text-to-video stage export (see below)",
        epilog=ucf_epilog(),
        formatter_class=raw,
    )
    ucf.add_argument("--export", type=Path, help="a text-to-video stage export (video_pretrain, video_finetune)")
    ucf.add_argument("--ucf-root", type=Path, required=True, help="UCF-101 folder: <root>/<ClassName>/v_*.avi")
    ucf.add_argument(
        "--num-videos", type=int, default=u.UCF_NUM_VIDEOS, help=f"generated videos (default {u.UCF_NUM_VIDEOS})"
    )
    ucf.add_argument("--num-reference", type=int, help=f"real videos (default: all, {u.UCF_NUM_VIDEOS})")
    ucf.add_argument(
        "--cfg", type=float, default=u.UCF_CFG, help=f"guidance scale, constant over frames (default {u.UCF_CFG:g})"
    )
    ucf.add_argument("--steps", type=int, default=GenerationSettings.num_steps)
    ucf.add_argument("--prompt-template", default="{}", help="'{}' is replaced by the class name (default '{}')")
    ucf.add_argument("--num-frames", type=int, default=u.UCF_NUM_FRAMES)
    ucf.add_argument("--fps", type=float, default=u.UCF_FPS, help="conditions fps_id = fps - 1")
    ucf.add_argument("--height", type=int, default=u.GENERATION_SIZE[0])
    ucf.add_argument("--width", type=int, default=u.GENERATION_SIZE[1])
    ucf.add_argument("--motion-bucket-id", type=int, default=GenerationSettings.motion_bucket_id)
    ucf.add_argument("--decode-chunk", type=int, default=GenerationSettings.decode_chunk)
    ucf.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ucf.add_argument("--real-start", choices=["random", "center"], default="random", help="real clip start (seeded)")
    ucf.add_argument("--on-short", choices=["skip", "pad"], default="skip", help="real videos under 16 frames")
    ucf.add_argument("--parts", type=int, help="split generation into N parts (separate jobs) kept in --work-dir")
    ucf.add_argument("--part", type=int, help="generate only part K (0-based) of --parts and save its features")
    ucf.add_argument("--work-dir", type=Path, help="where --part writes (and a --parts run reads) features")
    _common(ucf, features=True)
    multiview.add_parser(sub, _common)
    args = p.parse_args(argv)
    if args.mode in ("fvd", "ucf101") and args.i3d is None and args.features is None:
        p.error(f"{args.mode} needs --i3d PATH ({I3D_HELP}) or --features clip (a CLIP-space distance, not FVD)")
    if args.mode == "ucf101":
        if (args.part is not None or args.parts is not None) and args.work_dir is None:
            p.error("--part / --parts keep the generated features in --work-dir; give one")
        if args.part is not None and (args.parts is None or not 0 <= args.part < args.parts):
            p.error(f"--part K needs --parts N with 0 <= K < N; got --part {args.part} --parts {args.parts}")
        if args.export is None and (args.parts is None or args.part is not None):
            p.error("ucf101 generates with --export (a t2v stage export); only a --parts run without --part skips it")
    return args


def extractor_from_args(args: argparse.Namespace) -> VideoFeatureExtractor:
    return build_extractor(
        "i3d" if args.i3d is not None else args.features,
        i3d_path=args.i3d,
        device=args.device,
        batch_size=args.batch_size,
        clip_arch=args.clip_arch,
        clip_pretrained=args.clip_pretrained,
    )


def reference_stats(args: argparse.Namespace, extractor: VideoFeatureExtractor, videos: Any, **kw: Any):
    """(mu, sigma, count) of the reference set, from --reference-stats when it exists, else computed (and saved)."""
    if args.reference_stats is not None and args.reference_stats.exists():
        return load_stats(args.reference_stats, extractor=extractor.name)
    stats = accumulate_features(extractor, videos(), batch_size=args.batch_size, progress=not args.quiet, **kw)
    if args.reference_stats is not None:
        stats.save(args.reference_stats, extractor=extractor.name)
    return (*stats.stats(), stats.count)


def distance(extractor: VideoFeatureExtractor, generated: FeatureStats, reference: tuple) -> dict[str, Any]:
    mu, sigma, count = reference
    value = frechet_distance(*generated.stats(), mu, sigma)
    return {
        metric_name(extractor): value,
        "extractor": extractor.name,
        "num_generated": generated.count,
        "num_reference": count,
    }


def run_fvd(args: argparse.Namespace) -> dict[str, Any]:
    size = tuple(args.size) if args.size else None
    if args.generated is not None:
        generated: Iterator[torch.Tensor] = iter_video_files(
            list_videos(args.generated), size=size, num_frames=args.num_frames
        )
    else:
        if args.num_frames is None or size is None:
            raise ValueError("--generated-shards needs --num-frames and --size (shards hold videos of any length)")
        generated = iter_shard_clips(args.generated_shards, num_frames=args.num_frames, size=size, seed=args.seed)
    first = next(generated, None)
    if first is None:
        raise ValueError("no generated videos: the generated set is empty")
    num_frames, size = int(first.shape[0]), (int(first.shape[2]), int(first.shape[3]))
    extractor = extractor_from_args(args)
    gen_stats = accumulate_features(
        extractor,
        itertools.chain([first], generated),
        batch_size=args.batch_size,
        limit=args.num_generated,
        what="generated videos",
        progress=not args.quiet,
    )

    skipped: Counter[str] = Counter()

    def reference() -> Iterator[torch.Tensor]:
        if args.reference_shards:
            return iter_shard_clips(args.reference_shards, num_frames=num_frames, size=size, target_fps=args.fps)
        spec = ClipSpec(num_frames=num_frames, target_fps=args.fps, size=size, start="center")
        return iter_file_clips(list_videos(args.reference_dir, recursive=True), spec, skipped=skipped)

    ref = reference_stats(
        args, extractor, reference, num_frames=num_frames, limit=args.num_reference, what="reference videos"
    )
    result = distance(extractor, gen_stats, ref)
    return {"mode": "fvd", **result, "num_frames": num_frames, "size": list(size), "skipped_reference": dict(skipped)}


def read_prompts(folder: Path, prompts: Path | None) -> tuple[list[Path], list[str] | None, list[Path] | None]:
    if prompts is None:
        return list_videos(folder), None, None
    if prompts.suffix == ".jsonl":
        rows = [json.loads(line) for line in prompts.read_text().splitlines() if line.strip()]
        if any("video" not in r or ("prompt" not in r and "image" not in r) for r in rows):
            raise ValueError(f"each line of {prompts} needs 'video' and 'prompt' (or 'image' for i2v)")
        videos = [folder / r["video"] for r in rows]
        texts = [r["prompt"] for r in rows] if all("prompt" in r for r in rows) else None
        images = [folder / r["image"] for r in rows] if all("image" in r for r in rows) else None
        return videos, texts, images
    videos, texts = list_videos(folder), [t for t in prompts.read_text().splitlines() if t.strip()]
    if len(texts) != len(videos):
        raise ValueError(f"{prompts} has {len(texts)} prompts for {len(videos)} videos; give one line per video")
    return videos, texts, None


def run_clip(args: argparse.Namespace) -> dict[str, Any]:
    videos, prompts, images = read_prompts(args.generated, args.prompts)
    scorer = ClipScorer.build(args.clip_arch, pretrained=args.clip_pretrained, device=args.device)
    scores = score_videos(scorer, iter_video_files(videos), prompts=prompts, image_paths=images)
    if args.per_video is not None:
        with atomic_path(args.per_video) as tmp:
            rows = [
                {
                    "video": str(v),
                    "consistency": scores.consistency[i],
                    **({"clipsim": scores.clipsim[i]} if scores.clipsim else {}),
                    **({"image_similarity": scores.image_similarity[i]} if scores.image_similarity else {}),
                }
                for i, v in enumerate(videos)
            ]
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"mode": "clip", **scores.summary(), "num_videos": len(videos), "clip_arch": args.clip_arch}


def ucf_generated_stats(
    args: argparse.Namespace, plan: list, extractor: VideoFeatureExtractor, *, rows: list[torch.Tensor] | None = None
) -> FeatureStats:
    """Feature statistics of the protocol's generated videos, generated with the --export model; ``rows``, when
    given, also receives the (B, dim) features of each batch (what ``--part`` saves)."""
    source = load_export_generator(args.export, device=args.device, dtype=DTYPES[args.dtype])
    task = get_task(source.task)
    if not task.video or task.image_conditioned:
        raise ValueError(
            f"{args.export} is a {source.task} stage; the UCF-101 protocol is text-to-video "
            "(use a video_pretrain or video_finetune export)"
        )
    settings = GenerationSettings(
        num_steps=args.steps,
        min_cfg=args.cfg,
        max_cfg=args.cfg,
        fps_id=fps_to_fps_id(args.fps),
        motion_bucket_id=args.motion_bucket_id,
        decode_chunk=args.decode_chunk,
    )

    def make(request: Any) -> torch.Tensor:
        return generate_video(
            source.model,
            source.denoiser,
            task=task.name,
            num_frames=args.num_frames,
            height=args.height,
            width=args.width,
            settings=dataclasses.replace(settings, seed=request.seed),
            prompt=request.prompt,
            device=source.device,
        )

    return accumulate_features(
        extractor,
        u.iter_generated(make, plan),
        batch_size=args.batch_size,
        limit=len(plan),
        what="generated videos",
        progress=not args.quiet,
        rows=rows,
    )


def part_file(args: argparse.Namespace, extractor: VideoFeatureExtractor, k: int) -> Path:
    return args.work_dir / f"generated_{extractor.name}_seed{args.seed}_n{args.num_videos}_part{k}of{args.parts}.npz"


def load_parts(args: argparse.Namespace, extractor: VideoFeatureExtractor) -> FeatureStats:
    files = [part_file(args, extractor, k) for k in range(args.parts)]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise ValueError(f"generated features of {len(missing)} parts are missing: {missing}; run --part K first")
    stats = FeatureStats()
    for f in files:
        with np.load(f, allow_pickle=False) as data:
            stats.add(data["features"])
    return stats


def run_ucf101(args: argparse.Namespace) -> dict[str, Any]:
    videos = u.scan_ucf_folder(args.ucf_root)
    counts = u.class_counts(videos)
    plan = u.generation_plan(counts, num_videos=args.num_videos, seed=args.seed, template=args.prompt_template)
    extractor = extractor_from_args(args)
    if args.part is not None:
        mine = plan[args.part :: args.parts]
        rows: list[torch.Tensor] = []
        ucf_generated_stats(args, mine, extractor, rows=rows)
        path = part_file(args, extractor, args.part)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, index=np.array([r.index for r in mine]), features=torch.cat(rows).numpy())
        return {
            "mode": "ucf101",
            "part": args.part,
            "parts": args.parts,
            "num_generated": len(mine),
            "saved": str(path),
        }
    if args.parts is not None:
        gen_stats = load_parts(args, extractor)
    else:
        gen_stats = ucf_generated_stats(args, plan, extractor)
    skipped: Counter[str] = Counter()
    spec = u.real_clip_spec(num_frames=args.num_frames, fps=args.fps, start=args.real_start, on_short=args.on_short)
    real = u.pick_reference(videos, args.num_reference, seed=args.seed)
    ref = reference_stats(
        args,
        extractor,
        lambda: u.iter_real_clips(real, spec=spec, seed=args.seed, skipped=skipped),
        what="real UCF-101 videos",
    )
    settings = {"cfg": args.cfg, "steps": args.steps, "seed": args.seed, "prompt_template": args.prompt_template}
    return {"mode": "ucf101", **distance(extractor, gen_stats, ref), "skipped_real": dict(skipped), **settings}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)  # a CLIP tower without --clip-pretrained is random: make it the seed's
    modes = {"fvd": run_fvd, "clip": run_clip, "ucf101": run_ucf101, "multiview": multiview.run_multiview}
    result = modes[args.mode](args)
    line = json.dumps(result)
    if args.out is not None:
        with atomic_path(args.out) as tmp:
            tmp.write_text(line + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
