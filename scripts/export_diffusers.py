"""Write a diffusers ``StableVideoDiffusionPipeline`` folder from a stage export or a released SVD checkpoint.

Usage:
  python scripts/export_diffusers.py --export runs/demo/img2vid_finetune/export --out svd_diffusers/
  python scripts/export_diffusers.py --official svd_xt.safetensors --variant svd_xt --out svd_xt_diffusers/ \\
      --dtype float16

Load it with ``StableVideoDiffusionPipeline.from_pretrained(out)``; ``match_sgm_group_norm_eps(pipe.unet)``
(``models.checkpoints.diffusers_unet``) makes its UNet compute exactly as ours (diffusers hard-codes GroupNorm eps
1e-6 in some ResBlocks). The folder also initialises training: ``load_init_weights(model, out)``. What the folder
does not carry is printed, and which VAE it holds: a stage that decoded with a trained temporal decoder
(``stage=temporal_decoder``) is written with it as ``AutoencoderKLTemporalDecoder``. The folder is written under a
temporary name and renamed when complete. ``--check`` then loads the folder in diffusers and prints how its VAE
decodes the same latents as ours, in float32 and float64 (``train.interop_diffusers.decoder_parity``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from models.checkpoints.diffusers_pipeline import TEMPORAL_VAE, tiny_diffusers_sizes
from train.interop_diffusers import OFFICIAL_VARIANTS, decoder_parity, export_pipeline

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--export", type=Path, help="an i2v stage export folder (train.export)")
    src.add_argument("--official", type=Path, help="a released single-file checkpoint (svd.safetensors, ...)")
    p.add_argument("--variant", choices=OFFICIAL_VARIANTS, help="layout of --official")
    p.add_argument("--out", type=Path, required=True, help="the pipeline folder to write")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="dtype of the written weights (default: the source's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument(
        "--check", action="store_true",
        help="after writing, load the folder in diffusers and print (JSON) how its VAE decodes against ours "
        "(float32 and float64; --export only)",
    )  # fmt: skip
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # test-size official layout (tests only)
    args = p.parse_args(argv)
    if args.official is not None and args.variant is None:
        p.error(f"--official needs --variant (one of {', '.join(OFFICIAL_VARIANTS)})")
    if args.check and args.export is None:
        p.error("--check compares the pipeline with a stage export's decoder; it needs --export")
    if args.export is not None and args.variant is not None:
        p.error("--variant describes --official; a stage export knows its own layout, drop --variant")
    if args.out.exists() and not args.overwrite:
        p.error(f"{args.out} exists; pass --overwrite to replace it")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source = args.export if args.export is not None else args.official
    sizes = tiny_diffusers_sizes() if args.tiny and args.official is not None else None
    dtype = DTYPES.get(args.dtype)
    notes = export_pipeline(source, args.out, variant=args.variant, sizes=sizes, dtype=dtype, overwrite=args.overwrite)
    if notes.dropped or notes.warnings:
        print(notes.summary())
    vae = json.loads((args.out / "vae" / "config.json").read_text())["_class_name"]
    print(f"  vae: {vae} ({'the temporal decoder' if vae == TEMPORAL_VAE else 'frame-wise KL decoder'})")
    print(args.out)
    if args.check:
        print(json.dumps(decoder_parity(args.export, args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
