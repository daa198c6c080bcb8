"""Write the deterministic demo data set: long raw videos, single-scene clips and images as WebDataset shards.

Layout under ``--out``: ``raw/NNNNN.tar`` (video2dataset style, multi-scene videos with cuts and fades),
``clips/NNNNN.tar`` (one scene each, with motion score and captions), ``images/NNNNN.tar`` (img2dataset style)
``conditioning/clip_NNNNN.png`` (first frames of ``--conditioning-clips``, for image-to-video samples) and
``manifest.json``. The same arguments give byte-identical files. See ``data/demo_data.py``.

Usage: ``python scripts/make_demo_data.py [--out outputs/demo_data] [--seed 0] [--size 128x96] [--fps 24]``.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from data.atomic_write import atomic_write_bytes
from data.demo_data import clip_first_frame, write_demo_dataset


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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    total = args.num_raw_videos + args.num_clips + args.num_images
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
        )
    for index in (i for i in args.conditioning_clips if i < args.num_clips):
        path = args.out / "conditioning" / f"clip_{index:05d}.png"
        frame = clip_first_frame(args.seed, index, fps=args.fps, size=args.size)
        png = io.BytesIO()
        Image.fromarray(frame).save(png, format="PNG")
        atomic_write_bytes(path, png.getvalue())
        print(f"conditioning image: {path}")
    for name, shards in manifest["shards"].items():
        print(f"{name}: {manifest['counts'][name]} samples in {len(shards)} shards under {args.out / name}")
    print(f"manifest: {args.out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
