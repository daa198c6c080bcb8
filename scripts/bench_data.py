"""Benchmark clip decoding: our pipeline against raw decord and against a decode-everything PyAV baseline.

Streams the same generated clips (``data.demo_data.write_demo_video``) three ways, alternating clip by clip, all
single-threaded (decord and PyAV one thread each, ``torch.set_num_threads(1)``):

- ``pipeline``: ``data.video_decode.decode_clip`` (reader per clip, one ``get_batch``, uint8 resize and crop);
- ``raw``: decord ``get_batch`` of exactly the frame indices the pipeline chose, handed to torch by the same
  zero-copy DLPack wrap, no transforms (the limit);
- ``full_decode``: PyAV decodes every frame to RGB, then the same indices are selected and the same resize and
  crop applied (what a naive loader does).

Prints ONE JSON line: clips/s of each (total time over all repetitions), ``pipeline_over_raw`` (target >= 0.85),
``pipeline_over_full_decode`` (target >= 3), and the pipeline's clips/s with 1 and 2 worker processes
(``workers``: total and per worker, plus raw per worker and ``pipeline_over_raw`` measured inside the workers,
where pipeline and raw alternate without a full decode in between, as in a DataLoader worker). Targets assume 14
frames at stride >= 2 from clips of 10 s or more. ``shard_read``: the same clips as one shard written by
``data.shard_writer.ShardWriter`` and read back record by record by ``data.sources.iter_shard_records`` (webdataset's
opener and tar iterator): records/s and MB/s, a plain chunked read of the same file in MB/s (both from the page
cache), and ``read_over_pipeline``: the time reading a clip's record takes as a fraction of the time the pipeline
takes to decode it (what the shard reader adds to the stream).

Usage: ``python scripts/bench_data.py [--clips 6] [--seconds 10] [--fps 24] [--src 320x576] [--frames 14]
[--target-fps 8] [--size 256x384] [--reps 3] [--workers 1,2] [--shard-reps 20] [--no-keep-decode-buffers]``.
Clips come from the demo generator (synthetic scenes at a low bitrate, so decoding is cheaper than on real footage
and the transforms weigh relatively more). By default every process first applies
``data.video_decode.keep_decode_buffers`` (the glibc heap tuning that ``data.loader.build_dataloader`` applies in its
workers), so the pipeline is measured as training runs it; raw and full decode run in the same processes.
``--no-keep-decode-buffers`` measures glibc's defaults.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack

from data.shard_writer import ShardWriter
from data.sources import iter_shard_records
from data.transforms import resize_and_crop
from data.video_decode import ClipSpec, decode_clip, keep_decode_buffers


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x384, got {text!r}") from exc
    return h, w


def make_clips(count: int, *, seconds: float, fps: float, src: tuple[int, int]) -> list[bytes]:
    from data.demo_data import write_demo_video

    clips = []
    for seed in range(count):
        buf = io.BytesIO()
        write_demo_video(buf, seconds=seconds, fps=fps, size=(src[1], src[0]), seed=seed)  # size is (W, H) there
        clips.append(buf.getvalue())
    return clips


def pipeline_one(data: bytes, i: int, spec: ClipSpec) -> tuple[int, ...]:
    return decode_clip(data, spec, rng=np.random.default_rng([0, i])).frame_indices


def raw_one(data: bytes, indices: tuple[int, ...]) -> None:
    import decord

    reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
    from_dlpack(reader.get_batch(sorted(set(indices))).to_dlpack())
    del reader


def full_decode_one(data: bytes, indices: tuple[int, ...], spec: ClipSpec) -> None:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    chosen = torch.from_numpy(np.stack([frames[i] for i in indices])).permute(0, 3, 1, 2)
    resize_and_crop(chosen, size=spec.size, crop=spec.crop)


def time_methods(clips: list[bytes], spec: ClipSpec, reps: int) -> dict[str, float]:
    """clips/s of each method. Methods alternate clip by clip, so a load spike from another process hits all three
    alike instead of one whole pass.

    Each clip runs ``full_decode`` first, then ``pipeline`` and ``raw`` in an order that flips every clip: a full
    decode (some 130 MB of RGB frames) leaves the caches cold and the heap trimmed, which slows whatever runs next
    by several ms, so ``pipeline`` and ``raw`` must each follow it equally often. (A plain rotation of the three
    puts ``pipeline`` after ``full_decode`` twice as often as ``raw`` and understates ``pipeline_over_raw``.)
    """
    indices = [pipeline_one(d, i, spec) for i, d in enumerate(clips)]  # warm-up; raw and full_decode reuse these
    calls: dict[str, Callable[[int], object]] = {
        "pipeline": lambda i: pipeline_one(clips[i], i, spec),
        "raw": lambda i: raw_one(clips[i], indices[i]),
        "full_decode": lambda i: full_decode_one(clips[i], indices[i], spec),
    }
    totals = dict.fromkeys(calls, 0.0)
    for rep in range(reps):
        for i in range(len(clips)):
            pair = ["pipeline", "raw"] if (rep * len(clips) + i) % 2 == 0 else ["raw", "pipeline"]
            for name in ["full_decode", *pair]:
                start = time.perf_counter()
                calls[name](i)
                totals[name] += time.perf_counter() - start
    return {name: reps * len(clips) / total for name, total in totals.items()}


def _worker(args: tuple[list[bytes], ClipSpec, int, bool]) -> tuple[float, float]:
    """(pipeline, raw) clips/s of one worker process that alternates the two clip by clip, with no full decode
    in between: the steady state of a DataLoader worker, next to the limit measured the same way."""
    clips, spec, reps, keep_buffers = args
    torch.set_num_threads(1)
    if keep_buffers:
        keep_decode_buffers()
    indices = [pipeline_one(d, i, spec) for i, d in enumerate(clips)]  # warm-up outside the timed part
    totals = {"pipeline": 0.0, "raw": 0.0}
    for rep in range(reps):
        for i, data in enumerate(clips):
            for name in ("pipeline", "raw") if (rep * len(clips) + i) % 2 == 0 else ("raw", "pipeline"):
                start = time.perf_counter()
                pipeline_one(data, i, spec) if name == "pipeline" else raw_one(data, indices[i])
                totals[name] += time.perf_counter() - start
    return len(clips) * reps / totals["pipeline"], len(clips) * reps / totals["raw"]


def bench_workers(clips: list[bytes], spec: ClipSpec, workers: int, reps: int, keep_buffers: bool) -> dict[str, float]:
    # Each worker streams the whole clip list at once; total throughput is the sum of the workers' rates.
    ctx = mp.get_context("spawn")  # decord readers must not cross a fork; spawn sidesteps the question
    with ctx.Pool(workers) as pool:
        rates = pool.map(_worker, [(clips, spec, reps, keep_buffers)] * workers, chunksize=1)
    pipeline, raw = sum(r[0] for r in rates), sum(r[1] for r in rates)
    return {
        "clips_per_s": round(pipeline, 2),
        "per_worker": round(pipeline / workers, 2),
        "raw_per_worker": round(raw / workers, 2),
        "pipeline_over_raw": round(pipeline / raw, 3),
    }


def bench_shard_read(clips: list[bytes], reps: int) -> dict[str, float]:
    """Records/s and MB/s of reading the clips as one shard, alternating with a plain read of the file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "000000.tar"
        with ShardWriter(path) as writer:
            for i, data in enumerate(clips):
                writer.write(f"{i:08d}", {"mp4": data, "json": b'{"caption": "clip"}', "txt": b"clip"})
        size_mb = path.stat().st_size / 1e6
        totals = {"shard": 0.0, "file": 0.0}
        for _ in range(reps):
            start = time.perf_counter()
            records = sum(1 for _ in iter_shard_records(str(path)))
            totals["shard"] += time.perf_counter() - start
            start = time.perf_counter()
            with open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
            totals["file"] += time.perf_counter() - start
    assert records == len(clips)
    return {
        "records_per_s": round(reps * records / totals["shard"], 1),
        "mb_per_s": round(reps * size_mb / totals["shard"], 1),
        "file_read_mb_per_s": round(reps * size_mb / totals["file"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--src", type=_hw, default=(320, 576), help="source HxW")
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--target-fps", type=float, default=8.0)
    parser.add_argument("--size", type=_hw, default=(256, 384), help="output HxW")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts; empty to skip")
    parser.add_argument("--shard-reps", type=int, default=20, help="passes over the shard in shard_read")
    parser.add_argument(
        "--no-keep-decode-buffers",
        dest="keep_decode_buffers",
        action="store_false",
        help="skip data.video_decode.keep_decode_buffers() (the loader's worker heap tuning)",
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    keep_buffers = args.keep_decode_buffers and keep_decode_buffers()
    spec = ClipSpec(num_frames=args.frames, target_fps=args.target_fps, size=args.size, start="random")
    clips = make_clips(args.clips, seconds=args.seconds, fps=args.fps, src=args.src)
    rates = time_methods(clips, spec, args.reps)
    worker_counts = [int(n) for n in args.workers.split(",") if n.strip()]
    shard_read = bench_shard_read(clips, args.shard_reps)
    shard_read["read_over_pipeline"] = round(rates["pipeline"] / shard_read["records_per_s"], 4)
    result = {
        "clips": args.clips,
        "clip_seconds": args.seconds,
        "src_hw": list(args.src),
        "out_hw": list(args.size),
        "frames": args.frames,
        "stride": max(1, round(args.fps / args.target_fps)),
        "reps": args.reps,
        "pipeline_clips_per_s": round(rates["pipeline"], 2),
        "raw_clips_per_s": round(rates["raw"], 2),
        "full_decode_clips_per_s": round(rates["full_decode"], 2),
        "pipeline_over_raw": round(rates["pipeline"] / rates["raw"], 3),
        "pipeline_over_full_decode": round(rates["pipeline"] / rates["full_decode"], 3),
        "workers": {str(n): bench_workers(clips, spec, n, args.reps, keep_buffers) for n in worker_counts},
        "shard_read": shard_read,
        "keep_decode_buffers": keep_buffers,
        "cpu_count": os.cpu_count(),
        "torch_threads": 1,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
