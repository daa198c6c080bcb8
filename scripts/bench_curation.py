"""Benchmark the curation pipeline: clips/s per core of each annotator and of the whole ``curate_video``, against a
plain decode of the same videos.

Runs, video by video and in alternating order (so a load spike from another process hits both alike), all in one
process pinned to ``--threads`` threads (torch, OpenCV, onnxruntime, the PyAV decoder):

- ``decode``: PyAV decodes every frame of the video with the scan's decoder settings (``decode_threads``), and
  nothing else: no conversion, no taps. The baseline; "the same frame rates" = every frame at the native rate.
- ``curate``: ``data.curation.annotate.curate_video`` itself, instrumented from outside
  (``data/curation/timing.py``): the names it calls in its module (``probe_video``, ``scan_video``, ``CutCascade``,
  ``copy_points_of``, ``plan_clips``, ``write_clip``, ``read_frames``) and the registered annotators are wrapped in
  timers around the real objects for the length of the benchmark, so the real pipeline runs and each part is timed
  inside it. Inside the single decode pass every tap is wrapped too, so its ``push`` time is known.

Attribution (seconds, then clips/s per core = clips / (seconds * threads), video seconds/s per core likewise):

- ``probe``: ``probe_video``;
- ``cuts``: the decode pass (decode, frame conversions, every tap) minus the motion tap's ``push`` time, plus
  ``CutCascade.result``; the motion tap's frames share their conversion with the 4-fps colour-histogram detector
  (same rate and size), so the pass costs motion only its ``push``;
- ``motion``: the ``MotionTap.push`` time (grey, resize, Farneback) inside the pass;
- ``clipping``: ``copy_points_of`` + ``plan_clips`` + ``write_clip``; ``keyframes``: ``read_frames`` (first, middle,
  last frame of each clip); every other annotator (``text_area``, ``captioner``, ``clip_scores``): its calls;
- ``pipeline``: ``curate_video``'s wall time minus the annotators that are not ``cheap`` (CLIP scores, captions), i.e.
  cut detection + motion + text area and what the pipeline needs to run them (probe, clipping, frame reads, records);
  ``full_pipeline``: the whole ``curate_video`` wall time. The timing wrappers add about 1 us per tap call (< 0.5% of a
  frame's decode).

Each figure is the median over ``--reps`` of each video's time, summed over the videos (a warm-up pass on the first
video runs first). Prints ONE JSON line: the config, ``seconds``, ``clips_per_s_per_core``,
``video_s_per_s_per_core`` (per stage), ``scan_seconds`` (the decode pass split into decode + conversions and each
tap), ``pipeline_over_decode`` (the pipeline as defined above over the plain decode),
``cuts_motion_text_over_decode`` (the issue's target, <= 2: the decode pass with the cut cascade and motion, plus
the text area, over the plain decode), ``full_pipeline_over_decode``, ``scan_over_decode``, the per-repetition
``pipeline_over_decode_reps``, and ``cut_detectors``: each cut detector of ``--detectors`` (``annotate.cuts.detector``:
cascade, transnetv2, combined) run alone (its own decode pass, then the result) on the same videos, as seconds per
second of video per core and over the plain decode.

Usage: ``python scripts/bench_curation.py [--videos PATH ...] [--num-videos 3] [--size 720x1280] [--fps 24]
[--scenes 3,5] [--scene-seconds 3,6] [--reps 3] [--threads 1] [--text-detect-px N] [--clip-model tiny]
[--clip-pretrained openai] [--aesthetic-head FILE] [--no-clip-scores] [--captioner none|coca]
[--captioner-model tiny] [--captioner-pretrained TAG|FILE] [--detectors cascade,transnetv2,combined]``. Without
``--videos`` the raw videos are generated (``data.demo_data.plan_raw_video``: scenes joined by cuts, crossfades and
fades, a low bitrate, so decoding is cheaper than on real footage and the per-clip annotators weigh relatively
more). CLIP defaults to the tiny random model (nothing is downloaded); for the real cost pass ``--clip-model
ViT-L-14 --clip-pretrained openai`` (or a file).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data.curation.annotate import Annotators, curate_video
from data.curation.annotators import registered
from data.curation.clip_scores import ClipScoreConfig
from data.curation.config import AnnotateConfig
from data.curation.cuts import CutConfig, detect_cuts
from data.curation.errors import CurationSkip
from data.curation.inputs import RawVideo, safe_name
from data.curation.probe import VideoInfo, probe_video
from data.curation.text_area import TextAreaConfig
from data.curation.timing import StageClock, instrumented, plain_decode, timed_annotators

TARGET = 2.0  # issue 6: cut detection + motion + text area at most 2x the plain decode


def stage_names() -> dict[str, list[str]]:
    """The registered annotators' stages: ``scan`` (timed as tap pushes), ``clip`` (per-clip calls), ``heavy``
    (not ``cheap``: left out of ``pipeline``), ``cheap_clip`` (per-clip and cheap: in the issue's target)."""
    kinds = registered()
    return {
        "scan": [a.name for a in kinds if a.needs == "scan"],
        "clip": [a.name for a in kinds if a.needs != "scan"],
        "heavy": [a.name for a in kinds if not a.cheap],
        "cheap_clip": [a.name for a in kinds if a.needs != "scan" and a.cheap],
    }


def stage_list() -> tuple[str, ...]:
    names = stage_names()
    return ("decode", "probe", "cuts", *names["scan"], "clipping", "keyframes", *names["clip"])


def _pair(kind: Callable[[str], Any], sep: str) -> Callable[[str], tuple[Any, Any]]:
    def parse(text: str) -> tuple[Any, Any]:
        try:
            a, b = (kind(v) for v in text.lower().split(sep))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected two values joined by {sep!r}, got {text!r}") from exc
        return a, b

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", nargs="+", type=Path, default=None, help="your own video files (default: generated)")
    p.add_argument("--num-videos", type=int, default=3, help="generated raw videos")
    p.add_argument(
        "--size", type=_pair(int, "x"), default=(720, 1280), help="generated videos' HxW (720p: typical raw web video)"
    )
    p.add_argument("--fps", type=float, default=24.0, help="generated videos' frame rate")
    p.add_argument("--scenes", type=_pair(int, ","), default=(3, 5), help="scenes per generated video: LO,HI")
    p.add_argument("--scene-seconds", type=_pair(float, ","), default=(3.0, 6.0), help="scene length: LO,HI")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (the median counts)")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenCV / onnxruntime / decoder threads")
    p.add_argument("--text-detect-px", type=float, default=None, help="text detector: input height of 12-px text")
    p.add_argument("--detectors", default="cascade,transnetv2,combined", help="cut detectors timed alone (or '')")
    p.add_argument("--clip-model", default="tiny", help="open_clip model for CLIP scores, or 'tiny'")
    p.add_argument("--clip-pretrained", default=None, help="hub tag or weights file (default: random weights)")
    p.add_argument("--aesthetic-head", default=None, help="LAION aesthetic predictor file (default: none)")
    p.add_argument("--no-clip-scores", dest="clip_scores", action="store_false")
    p.add_argument("--captioner", choices=("none", "coca"), default="none")
    p.add_argument("--captioner-model", default="tiny", help="open_clip CoCa model, or 'tiny'")
    p.add_argument("--captioner-pretrained", default=None, help="hub tag or weights file (default: random weights)")
    args = p.parse_args(argv)
    if args.reps < 1 or args.threads < 1 or args.num_videos < 1:
        p.error("need --reps >= 1, --threads >= 1 and --num-videos >= 1")
    for path in args.videos or []:
        if not path.is_file():
            p.error(f"--videos: {path} is not a file")
    return args


def demo_videos(folder: Path, args: argparse.Namespace) -> list[RawVideo]:
    """Generated raw videos with their captions (as a video2dataset shard would carry them)."""
    from data.demo_data import plan_raw_video, sample_rng, write_video

    height, width = args.size
    videos = []
    for i in range(args.num_videos):
        plan = plan_raw_video(
            sample_rng(args.seed, "raw", i), fps=args.fps, size=(width, height), num_scenes=args.scenes,
            scene_seconds=args.scene_seconds,
        )  # fmt: skip
        path = folder / f"raw_{i:04d}.mp4"
        meta = write_video(plan, path)
        caption = "; then ".join(s["caption"] for s in meta["scenes"])
        videos.append(RawVideo(key=path.stem, source=str(path), path=str(path), caption=caption))
    return videos


def annotate_config(args: argparse.Namespace) -> AnnotateConfig:
    text = TextAreaConfig(intra_op_threads=args.threads)
    if args.text_detect_px is not None:
        text = dataclasses.replace(text, detect_px=args.text_detect_px)
    clip = ClipScoreConfig(model=args.clip_model, pretrained=args.clip_pretrained, aesthetic_head=args.aesthetic_head)
    options = {"model": args.captioner_model, "pretrained": args.captioner_pretrained}
    return AnnotateConfig(
        text=text, clip_scores=args.clip_scores, clip=clip, captioner=args.captioner,
        captioner_options=options if args.captioner != "none" else {}, decode_threads=args.threads,
    )  # fmt: skip


def build_annotators(args: argparse.Namespace, clock: StageClock) -> Annotators:
    """The annotators ``curate_video`` uses, built from the arguments, with their work timed by ``clock``."""
    return timed_annotators(Annotators.build(annotate_config(args)), clock)


def one_curate(raw: RawVideo, annotators: Annotators, clock: StageClock) -> dict[str, float]:
    """Seconds of each stage of one ``curate_video`` run (module docstring), plus ``clips``."""
    clock.take()
    start = time.perf_counter()
    outcome = curate_video(raw, annotators)
    total = time.perf_counter() - start
    if outcome.skips:
        print(f"bench_curation: {raw.source}: skipped {dict(outcome.skips)}", file=sys.stderr)
    s = defaultdict(float, clock.take())
    names = stage_names()
    taps = {k: v for k, v in s.items() if k.startswith("tap:")}
    run = {"full_pipeline": total, "clips": float(len(outcome.clips)), **taps}
    run.update({k: s[k] for k in ("probe", *names["scan"], "clipping", "keyframes", *names["clip"])})
    run.update(scan=s["scan"], cut_result=s["cut_result"])
    scan_annotators = sum(s[k] for k in names["scan"])
    run["cuts"] = s["scan"] - scan_annotators + s["cut_result"]
    run["decode_convert"] = s["scan"] - scan_annotators - sum(taps.values())
    run["pipeline"] = total - sum(s[k] for k in names["heavy"])
    known = ("probe", "scan", "cut_result", "clipping", "keyframes", *names["clip"])
    run["other"] = total - sum(s[k] for k in known)
    return run


def measure(videos: list[RawVideo], annotators: Annotators, clock: StageClock, args: argparse.Namespace) -> Any:
    """runs[rep][video] = the stages' seconds; decode and curate alternate which goes first."""
    with instrumented(clock):
        plain_decode(str(videos[0].path), args.threads)  # warm-up: models, onnxruntime arenas, swscale tables
        one_curate(videos[0], annotators, clock)
        runs: list[list[dict[str, float]]] = []
        for rep in range(args.reps):
            row = []
            for i, raw in enumerate(videos):
                run: dict[str, float] = {}
                for name in ("decode", "curate") if (rep + i) % 2 == 0 else ("curate", "decode"):
                    if name == "curate":
                        run.update(one_curate(raw, annotators, clock))
                    else:
                        start = time.perf_counter()
                        run["frames"] = float(plain_decode(str(raw.path), args.threads))
                        run["decode"] = time.perf_counter() - start
                row.append(run)
            runs.append(row)
            print(f"bench_curation: rep {rep + 1}/{args.reps} done", file=sys.stderr)
    return runs


def _sig(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else float(f"{x:.{digits}g}")


def summarise(runs: list[list[dict[str, float]]], infos: list[VideoInfo], args: argparse.Namespace) -> dict[str, Any]:
    keys = sorted({k for rep in runs for run in rep for k in run})
    # per video: the median over repetitions; then summed over videos
    total = {k: sum(statistics.median(rep[v].get(k, 0.0) for rep in runs) for v in range(len(infos))) for k in keys}
    clips = int(total["clips"])
    if any(rep[v]["clips"] != runs[0][v]["clips"] for rep in runs for v in range(len(infos))):
        raise RuntimeError("curate_video gave different clips in different repetitions; it must be deterministic")
    video_s = sum(i.duration_s for i in infos)
    cfg, names = annotate_config(args), stage_names()
    enabled = {a.name: a.enabled(cfg) for a in registered()}
    stages = [*stage_list(), "pipeline", "full_pipeline"]
    seconds = {k: _sig(total[k]) if enabled.get(k, True) else None for k in stages}
    seconds.update({k: _sig(total[k]) for k in ("scan", "cut_result", "other")})

    def rate(amount: float, k: str) -> float | None:
        s = total[k] * args.threads
        return _sig(amount / s) if enabled.get(k, True) and s > 0 else None

    decode_reps = [sum(r["decode"] for r in rep) for rep in runs]
    return {
        "source": "generated" if args.videos is None else "files",
        "videos": len(infos),
        "video_seconds": round(video_s, 3),
        "frames": int(total["frames"]),
        "clips": clips,
        "sizes_wh": sorted({f"{i.width}x{i.height}" for i in infos}),
        "fps": sorted({round(i.fps, 3) for i in infos}),
        "threads": args.threads,
        "reps": args.reps,
        "text_detect_px": args.text_detect_px or TextAreaConfig().detect_px,
        "clip_model": args.clip_model if args.clip_scores else None,
        "captioner": args.captioner if args.captioner == "none" else f"coca:{args.captioner_model}",
        "clips_per_s_per_core": {k: rate(clips, k) for k in stages},
        "video_s_per_s_per_core": {k: rate(video_s, k) for k in stages},
        "seconds": seconds,
        "scan_seconds": {
            k: _sig(total[k]) for k in keys if k.startswith("tap:") or k in ("decode_convert", *names["scan"])
        },
        "pipeline_over_decode": _sig(total["pipeline"] / total["decode"]),
        "cuts_motion_text_over_decode": _sig(
            (total["scan"] + total["cut_result"] + sum(total[k] for k in names["cheap_clip"])) / total["decode"]
        ),
        "full_pipeline_over_decode": _sig(total["full_pipeline"] / total["decode"]),
        "scan_over_decode": _sig(total["scan"] / total["decode"]),
        "pipeline_over_decode_reps": [
            _sig(sum(r["pipeline"] for r in rep) / d) for rep, d in zip(runs, decode_reps, strict=True)
        ],
        "target_cuts_motion_text_over_decode": TARGET,
        "cpu_count": os.cpu_count(),
    }


def detector_costs(videos: list[RawVideo], infos: list[VideoInfo], decode_s: float, args: argparse.Namespace) -> Any:
    """Each cut detector alone (``detect_cuts``: its taps in one decode pass, then the result), per video in
    alternating order, the median over ``--reps``: seconds per second of video and per core, and over the decode."""
    names = [d for d in args.detectors.split(",") if d]
    seconds: dict[str, list[list[float]]] = {d: [[] for _ in videos] for d in names}
    for d in names:  # warm-up: TransNetV2's weights load once per process
        detect_cuts(str(videos[0].path), infos[0], CutConfig(detector=d), threads=args.threads)
    for rep in range(args.reps):
        for v, (raw, info) in enumerate(zip(videos, infos, strict=True)):
            order = names if (rep + v) % 2 == 0 else names[::-1]
            for d in order:
                start = time.perf_counter()
                detect_cuts(str(raw.path), info, CutConfig(detector=d), threads=args.threads)
                seconds[d][v].append(time.perf_counter() - start)
    video_s = sum(i.duration_s for i in infos)
    total = {d: sum(statistics.median(per_video) for per_video in seconds[d]) for d in names}
    return {
        d: {"s_per_video_s_per_core": _sig(total[d] * args.threads / video_s), "over_decode": _sig(total[d] / decode_s)}
        for d in names
    }


def bench(videos: list[RawVideo], args: argparse.Namespace) -> dict[str, Any]:
    infos = []
    for raw in videos:
        try:
            infos.append(probe_video(str(raw.path)))
        except CurationSkip as e:
            raise ValueError(f"{raw.source}: {e}; pass videos the curation can read") from e
    clock = StageClock()
    annotators = build_annotators(args, clock)
    runs = measure(videos, annotators, clock, args)
    for raw, info, run in zip(videos, infos, runs[0], strict=True):
        if run["frames"] != info.num_frames:
            print(f"bench_curation: {raw.source}: {run['frames']:.0f} of {info.num_frames} decode", file=sys.stderr)
    result = summarise(runs, infos, args)
    decode_s = sum(statistics.median(rep[v]["decode"] for rep in runs) for v in range(len(infos)))
    result["cut_detectors"] = detector_costs(videos, infos, decode_s, args)
    return result


def main(argv: list[str] | None = None) -> int:
    import cv2
    import torch

    args = parse_args(argv)
    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_curation_") as tmp:
            if args.videos:
                videos = [RawVideo(key=safe_name(p.stem), source=str(p), path=str(p)) for p in args.videos]
            else:
                print(f"bench_curation: writing {args.num_videos} raw videos", file=sys.stderr)
                videos = demo_videos(Path(tmp), args)
            result = bench(videos, args)
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
