"""Score the curation's cut detection, text area and motion score against labelled footage.

Usage: ``python scripts/eval_curation.py DIR [curation overrides ...] [--motion-fps 2] [--text-threshold X]``

``DIR`` is laid out like the project's calibration set (``cuts/``, ``text/``, ``motion/``, each with a
``truth.json``; the README documents the format, ``data/curation/scoring.py`` the matching rules). The overrides are
the curation's own (``conf/curate``), so what is scored is what ``python -m data.curation`` would run, e.g.
``annotate.cuts.detector=transnetv2`` or ``annotate.text.detect_px=12``.

Prints a table to stderr and ONE JSON line to stdout: ``cut_precision``, ``cut_recall``, ``cut_f1``,
``recall_per_kind``, ``false_transitions`` (with ``false_transition_list``: file, frame and where it lies),
``cut_s_per_video_s``; ``text_accuracy`` (``has_text`` right per image at the threshold the ``high_quality`` filter
uses), ``text_area_mae`` / ``text_area_bias`` on the images with text, ``text_s_per_image``; ``motion_order_ok`` and
``motion_kendall_tau`` at the configured motion fps, and the same with ``_2fps`` (the paper's rate) unless
``annotate.motion.fps`` is already 2; ``camera_accuracy`` (the ``camera_motion`` label right), with
``camera_accuracy_per_kind`` (pans, tilts and zooms derived from the real footage, static real shots, synthetic demo
scenes), ``camera_accuracy_per_label``, ``camera_order_ok`` (``camera_tx`` / ``camera_ty`` / ``camera_zoom`` order the
derived moves by speed) and ``camera_wrong`` (``data/curation/camera_truth.py`` builds these shots).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from data.curation.camera_truth import score_camera  # noqa: E402
from data.curation.config import CONF_DIR, CurateConfig, compose_config  # noqa: E402
from data.curation.scoring import evaluate, text_area_bound  # noqa: E402

FILTERS = CONF_DIR / "filters"


def compose(overrides: list[str]) -> CurateConfig:
    """The curation config with ``overrides`` applied, as ``python -m data.curation`` composes it; no subsets (their
    filters play no part here and may need models that are not configured)."""
    return compose_config(["input=unused", f"out={tempfile.gettempdir()}/unused", *overrides], subsets=False)


def print_table(result: dict[str, Any]) -> None:
    w = sys.stderr.write
    if "cut_f1" in result:
        w(f"cuts ({result['detector']}): F1 {result['cut_f1']:.3f}  P {result['cut_precision']:.3f}  ")
        w(f"R {result['cut_recall']:.3f}  false {result['false_transitions']}  ")
        w(f"{result['cut_s_per_video_s']:.3f} s per s of video\n")
        for name, row in result["cuts_per_file"].items():
            w(f"  {name:40s} {row['hits']}/{row['transitions']}  missed {row['missed']}  false {row['false']}\n")
        for line in result["false_transition_list"]:
            w(f"  false: {line}\n")
    if "text_accuracy" in result:
        w(f"text: accuracy {result['text_accuracy']:.3f} at area > {result['text_threshold']}, ")
        w(f"area MAE {result['text_area_mae']}, bias {result['text_area_bias']}\n")
        for name, row in result["per_image"].items():
            w(f"  {name:40s} truth {row['truth']:.3f}  found {row['found']:.3f}  {'ok' if row['ok'] else 'WRONG'}\n")
    if "motion_order_ok" in result:
        w(f"motion: order ok {result['motion_order_ok']}, tau {result['motion_kendall_tau']}  ")
        w(f"{result['motion_scores']}\n")
        if "motion_order_ok_2fps" in result:
            w(f"  at 2 fps: order ok {result['motion_order_ok_2fps']}, {result['motion_scores_2fps']}\n")
    if "camera_accuracy" in result:
        w(f"camera motion: accuracy {result['camera_accuracy']} over {result['camera_shots']} shots, ")
        w(f"order ok {result['camera_order_ok']}, per kind {result['camera_accuracy_per_kind']}\n")
        w(f"  per label {result['camera_accuracy_per_label']}\n")
        for line in result["camera_wrong"]:
            w(f"  wrong: {line}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="labelled folder (cuts/ text/ motion/ with truth.json)")
    parser.add_argument("overrides", nargs="*", help="curation config overrides, e.g. annotate.cuts.detector=...")
    parser.add_argument("--text-threshold", type=float, default=None, help="has-text area (default: the filter's)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir() or not any(
        (args.folder / p / "truth.json").is_file() for p in ("cuts", "text", "motion")
    ):
        parser.error(f"{args.folder} holds none of cuts/truth.json, text/truth.json, motion/truth.json")
    try:
        cfg = compose(args.overrides)
    except ValueError as e:
        parser.error(str(e))
    threshold = text_area_bound(FILTERS / "high_quality.yaml") if args.text_threshold is None else args.text_threshold
    result = evaluate(args.folder, cfg.annotate, text_threshold=threshold)
    result.update(score_camera(args.folder, cfg.annotate.motion, cfg.annotate.camera_motion))
    print_table(result)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
