"""Check that a demo image-to-video sample keeps the conditioning frame's object coherent (``data/demo_coherence.py``).

Usage:
  python scripts/demo_check.py --video outputs/demo_samples/clip_00010_seed0.gif \
      --image outputs/demo_data/conditioning/clip_00010.png --fps 8
  python scripts/demo_check.py --video sample.mp4 --clip-key 000010002 --demo-data outputs/demo_data --fps 8

The clip comes from the generator record of the demo data (``--demo-data``): by its shard key, or by the
conditioning image ``clip_NNNNN.png`` that ``scripts/make_demo_data.py`` wrote. ``--fps`` is the frame rate the
sample was generated for (``sample.py --fps``): the clip is compared every ``round(clip fps / fps)`` frames.
Prints a per-frame table (the object's colour-mask area, its ratio to frame 0, centroid, components, and the
clip's own centroid), then one JSON line with the figures, ``passed`` and the failures. Exit code 0, or 1 when the
check fails and ``--strict`` is set; 2 for bad input.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from data.atomic_write import atomic_write_bytes
from data.demo_coherence import CoherenceReport, check_video, clip_truth, locate_clip, read_frames


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", type=Path, required=True, help="the generated sample (.gif or .mp4)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--image", type=Path, help="the conditioning image, conditioning/clip_NNNNN.png")
    which.add_argument("--clip-key", help="the clip's shard key in <demo-data>/clips")
    p.add_argument("--demo-data", type=Path, default=Path("outputs/demo_data"), help="make_demo_data.py --out")
    p.add_argument("--fps", type=float, default=8.0, help="the frame rate the sample was generated for")
    p.add_argument("--strip", type=Path, help="also write a PNG: the sample's frames over the clip's (4x)")
    p.add_argument("--strict", action="store_true", help="exit 1 when the check fails")
    return p.parse_args(argv)


def table(report: CoherenceReport) -> str:
    area0 = report.frames[0].area or 1
    lines = ["frame   area  ratio      cx      cy  objects   clip cx  clip cy"]
    for t, (f, r) in enumerate(zip(report.frames, report.reference, strict=True)):
        lines.append(f"{t:5d} {f.area:6d} {f.area / area0:6.2f} {f.cx:7.2f} {f.cy:7.2f} {f.components:8d} "
                     f"{r.cx:9.2f} {r.cy:8.2f}")  # fmt: skip
    return "\n".join(lines)


def write_strip(path: Path, video: np.ndarray, clip: np.ndarray, *, scale: int = 4) -> None:
    """The video's frames in the top row, the clip's below, each enlarged ``scale`` times (nearest)."""
    from PIL import Image

    rows = np.concatenate([np.concatenate(list(video), axis=1), np.concatenate(list(clip), axis=1)], axis=0)
    image = Image.fromarray(rows).resize((rows.shape[1] * scale, rows.shape[0] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if not args.fps > 0:
            raise ValueError(f"--fps must be positive, got {args.fps}")
        ref = locate_clip(args.demo_data, key=args.clip_key, image=args.image)
        video = read_frames(args.video)
        stride = max(1, round(ref.fps / args.fps))
        truth = clip_truth(ref, size=(video.shape[2], video.shape[1]), stride=stride, num_frames=len(video))
        report = check_video(video, truth)
    except ValueError as exc:
        print(f"demo_check: {exc}", file=sys.stderr)
        return 2
    print(table(report))
    f = report.figures
    verdict = "PASS" if report.passed else "FAIL: " + "; ".join(report.failures)
    print(f"coherence of the {f['object']} over {f['frames']} frames: area {f['area_ratio_min']}-{f['area_ratio_max']}"
          f" of frame 0's, at most {f['max_components']} object(s), centroid second difference <= "
          f"{f['max_jerk_px']} px, moved {f['motion_along_expected']} of the clip's motion -> {verdict}")  # fmt: skip
    if args.strip is not None:
        write_strip(args.strip, video, truth.frames)
        print(f"strip: {args.strip}")
    print(json.dumps({"video": str(args.video), "clip_index": ref.index, **report.summary()}, sort_keys=True))
    return 1 if args.strict and not report.passed else 0


if __name__ == "__main__":
    raise SystemExit(main())
