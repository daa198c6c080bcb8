"""Write the deterministic demo data set: long raw videos, single-scene clips and images as WebDataset shards.

Layout under ``--out``: ``raw/NNNNN.tar`` (video2dataset style, multi-scene videos with cuts and fades),
``clips/NNNNN.tar`` (one scene each, with motion score and captions), ``images/NNNNN.tar`` (img2dataset style)
``conditioning/clip_NNNNN.png`` (first frames of ``--conditioning-clips``, for image-to-video samples) and
``manifest.json``. With ``--orbits N``: ``orbits/train/NNNNN.tar`` (N orbit videos of procedural objects for the
multiview stage, ``--orbit-views`` views each at ``--orbit-size`` pixels, ``elevation`` and ``azimuths`` in the json)
and ``orbits/test/NNNNN.tar`` (``--orbit-test`` held-out objects: the ground-truth views of ``scripts/evaluate.py
multiview``), plus ``conditioning/orbit_test_NNNNN.png`` (their first views). The same arguments give byte-identical
files. See ``data/demo_data.py`` and ``data/demo_orbits.py``.

Usage: ``python scripts/make_demo_data.py [--out outputs/demo_data] [--seed 0] [--size 128x96] [--fps 24]
[--orbits 0]``.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from data.atomic_write import atomic_write_bytes
from data.demo_data import clip_first_frame, orbit_first_view, write_demo_dataset


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 128x96 (WIDTHxHEIGHT), got {text!r}") from None
    if width < 8 or height < 8 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"--size needs even width and height >= 8, got {text!r}")
    return width, height


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("outputs/demo_data"), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-raw-videos", type=int, default=4, help="long multi-scene videos (raw/)")
    p.add_argument("--num-clips", type=int, default=12, help="single-scene clips, 2-12 s (clips/)")
    p.add_argument("--num-images", type=int, default=32, help="images (images/)")
    p.add_argument("--samples-per-shard", type=int, default=8)
    p.add_argument("--size", type=parse_size, default=(128, 96), help="WIDTHxHEIGHT of videos and images")
    p.add_argument("--fps", type=float, default=24.0)
    # Clip i moves static/slow/fast by i % 3: 2 and 5 are fast, 10 is the slow orange circle make demo samples from.
    p.add_argument(
        "--conditioning-clips",
        type=int,
        nargs="*",
        default=[2, 5, 10],
        help="clips whose frame 0 goes to conditioning/ (I2V samples); those past --num-clips are skipped",
    )
    p.add_argument("--orbits", type=int, default=0, help="orbit videos for the multiview stage (orbits/train/)")
    p.add_argument(
        "--orbit-test", type=int, default=None, help="held-out orbits (orbits/test/); default 4 with --orbits, else 0"
    )
    p.add_argument("--orbit-views", type=int, default=21, help="views per orbit (SVD-MV: 21)")
    p.add_argument("--orbit-size", type=int, default=64, help="orbit frame side in pixels (even)")
    args = p.parse_args(argv)
    if args.orbit_test is None:
        args.orbit_test = 4 if args.orbits > 0 else 0
    if min(args.orbits, args.orbit_test) < 0 or args.orbit_views < 1 or args.orbit_size < 8 or args.orbit_size % 2:
        p.error("--orbits/--orbit-test must be >= 0, --orbit-views >= 1 and --orbit-size even and >= 8")
    return args


def write_png(path: Path, frame: np.ndarray) -> None:
    png = io.BytesIO()
    Image.fromarray(frame).save(png, format="PNG")
    atomic_write_bytes(path, png.getvalue())
    print(f"conditioning image: {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    total = args.num_raw_videos + args.num_clips + args.num_images + args.orbits + args.orbit_test
    with tqdm(total=total, unit="sample", desc="demo data") as bar:
        manifest = write_demo_dataset(
            args.out,
            seed=args.seed,
            num_raw_videos=args.num_raw_videos,
            num_clips=args.num_clips,
            num_images=args.num_images,
            samples_per_shard=args.samples_per_shard,
            size=args.size,
            fps=args.fps,
            progress=bar.update,
            num_orbits=args.orbits,
            num_orbit_test=args.orbit_test,
            orbit_views=args.orbit_views,
            orbit_size=args.orbit_size,
        )
    for index in (i for i in args.conditioning_clips if i < args.num_clips):
        frame = clip_first_frame(args.seed, index, fps=args.fps, size=args.size)
        write_png(args.out / "conditioning" / f"clip_{index:05d}.png", frame)
    for index in range(args.orbit_test):  # the held-out objects' first views: scripts/sample.py --elevation inputs
        frame, elevation = orbit_first_view(args.seed, index, split="test", size=args.orbit_size)
        write_png(args.out / "conditioning" / f"orbit_test_{index:05d}.png", frame)
        print(f"  its elevation: {elevation} degrees (scripts/sample.py --elevation {elevation})")
    for name, shards in manifest["shards"].items():
        print(f"{name}: {manifest['counts'][name]} samples in {len(shards)} shards under {args.out / name}")
    print(f"manifest: {args.out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
