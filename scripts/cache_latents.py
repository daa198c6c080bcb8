"""Encode clips with the frozen VAE (and optionally the CLIP image embedder) into cached-latent shards.

Each input shard ``NAME.tar`` becomes ``--out/NAME.tar`` (same relative name) holding, per sample, the source
json (plus a ``latent_cache`` object), the txt, and ``KEY.latents.safetensors`` with the VAE posterior moments,
the clean conditioning frame and, with ``--clip-model``, its CLIP image embedding (format: ``data/latent_cache.py``)
with the CLIP's fingerprint in the json; an image-to-video stage whose CLIP tower has that fingerprint then skips its
CLIP forward (a stage with another CLIP refuses the shards with a clear error).
The stream reads such shards transparently (``data.sample_decode.decode_sample``), so a stage switches to cached
latents by pointing its sources at ``--out``.

Clips are cut deterministically (centred window, centred crop). Shards are written atomically with a
``NAME.tar.done`` marker each; a killed run re-run with the same arguments skips finished shards and redoes the
rest. Bad samples are skipped and counted; the last stdout line is a JSON summary.

Usage::

    python scripts/cache_latents.py --shards 'shards/{00000..00099}.tar' --out cache/ \\
        --vae checkpoints/svd.safetensors --vae-variant svd --clip-model checkpoint \\
        --num-frames 14 --target-fps 6 --size 320x576 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from data.latent_cache_writer import CacheSettings, Encoders, cache_shard
from data.shard_writer import is_done, mark_done, output_names
from data.sources import expand_urls
from data.video_decode import ClipSpec
from models.checkpoints import VARIANTS, load_official_checkpoint, load_state_dict
from models.conditioners.open_clip_factory import tiny_open_clip_config
from models.conditioners.open_clip_image import FrozenOpenCLIPImageEmbedder
from models.vae import AutoencoderKL, AutoencoderSpec, TemporalAutoencoder
from models.vae.spec import tiny_autoencoder_spec

log = logging.getLogger("cache_latents")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VAE_CONFIGS = {"tiny": tiny_autoencoder_spec, "sd21": AutoencoderSpec}


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 320x576 (HEIGHTxWIDTH), got {text!r}") from None
    return height, width


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, nargs="+", help="input shards: brace ranges, globs, @list.txt, pipe:")
    p.add_argument("--out", required=True, type=Path, help="output folder (shards keep their relative names)")
    vae = p.add_mutually_exclusive_group(required=True)
    vae.add_argument("--vae", type=Path, help="official checkpoint (see --vae-variant) or a plain VAE state dict")
    vae.add_argument("--vae-random-tiny", action="store_true", help="a tiny random VAE from --seed (tests only)")
    p.add_argument(
        "--vae-variant",
        choices=[*VARIANTS, "plain"],
        default="svd",
        help="layout of --vae: an official checkpoint (its first_stage_model encodes) or 'plain'",
    )
    p.add_argument("--vae-config", choices=sorted(VAE_CONFIGS), default="sd21", help="network size of a plain VAE")
    p.add_argument("--seed", type=int, default=0, help="weights of --vae-random-tiny / tiny-random CLIP")
    p.add_argument("--num-frames", type=int, default=14)
    p.add_argument("--target-fps", type=float, default=None, help="default: the native rate")
    p.add_argument("--size", type=parse_size, default=(320, 576), help="HEIGHTxWIDTH of the cached frames")
    p.add_argument("--on-short", choices=["skip", "pad"], default="skip", help="clips shorter than the window")
    p.add_argument(
        "--clip-model",
        default="none",
        help="none | checkpoint (the SVD checkpoint's embedder) | tiny-random | an open_clip name "
        "such as ViT-H-14 with --clip-pretrained",
    )
    p.add_argument("--clip-pretrained", default=None, help="open_clip tag or weights file for a named --clip-model")
    p.add_argument(
        "--clip-resize",
        choices=("kornia", "torch"),
        default="kornia",
        help="resize of a tiny-random or named CLIP's input (the trainer's conditioner.clip_resize; the fingerprint "
        "records it, and the trainer uses the embeddings only when its CLIP tower has the same fingerprint)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="frames per VAE forward")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes that decode (0: in this process)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--part",
        type=parse_part,
        default=(0, 1),
        help="INDEX/PARTS: cache every PARTS-th shard from INDEX (one process per GPU or node)",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="compute dtype of the encoders")
    return p.parse_args(argv)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def build_random_tiny_vae(seed: int) -> TemporalAutoencoder:
    """The test VAE: SVD's first-stage layout at ``tiny_autoencoder_spec`` size, weights from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TemporalAutoencoder(tiny_autoencoder_spec()).eval()


def build_encoders(args: argparse.Namespace) -> Encoders:
    """The frozen encoders on ``args.device`` in ``args.dtype``."""
    clip: nn.Module | None = None
    clip_name: str | None = None if args.clip_model == "none" else args.clip_model
    if args.vae_random_tiny:
        vae: nn.Module = build_random_tiny_vae(args.seed)
        info: dict[str, Any] = {"source": "random-tiny", "seed": args.seed, "sha256": None}
    elif args.vae_variant == "plain":
        state = load_state_dict(args.vae)
        spec = VAE_CONFIGS[args.vae_config]()
        # The SD 2.1 autoencoder has quant convs; SVD's first stage has none.
        vae = AutoencoderKL(spec) if "quant_conv.weight" in state else TemporalAutoencoder(spec)
        vae.load_state_dict(state)
        info = {"source": os.fspath(args.vae), "sha256": sha256_of(args.vae), "variant": "plain"}
    else:
        loaded = load_official_checkpoint(args.vae, variant=args.vae_variant)
        vae = loaded.first_stage
        if args.clip_model == "checkpoint":
            if not args.vae_variant.startswith("svd"):
                raise ValueError("--clip-model checkpoint needs an SVD checkpoint (--vae-variant svd/svd_xt/...)")
            clip = loaded.conditioner.embedders[0].open_clip
        info = {"source": os.fspath(args.vae), "sha256": sha256_of(args.vae), "variant": args.vae_variant}
        del loaded  # keep only the encoders
    info["kind"] = "temporal" if isinstance(vae, TemporalAutoencoder) else "image"
    if args.clip_model == "tiny-random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            clip = FrozenOpenCLIPImageEmbedder(tiny_open_clip_config(), resize=args.clip_resize)
    elif args.clip_model not in ("none", "checkpoint"):
        if args.clip_pretrained is None:
            raise ValueError(
                f"--clip-model {args.clip_model} needs --clip-pretrained (a tag such as "
                "laion2b_s32b_b79k or a weights file); without it the weights would be random"
            )
        clip = FrozenOpenCLIPImageEmbedder(args.clip_model, pretrained=args.clip_pretrained, resize=args.clip_resize)
        clip_name = f"{args.clip_model}:{args.clip_pretrained}"
    elif args.clip_model == "checkpoint" and clip is None:
        raise ValueError("--clip-model checkpoint takes the embedder from --vae, an official SVD checkpoint")
    dtype = DTYPES[args.dtype]
    vae = vae.to(args.device, dtype).eval().requires_grad_(False)
    fingerprint = None
    if clip is not None:
        fingerprint = clip.fingerprint()  # of the weights as loaded (before the cast to the compute dtype)
        clip = clip.to(args.device, dtype).eval().requires_grad_(False)
    return Encoders(vae, info, clip, clip_name, clip_fingerprint=fingerprint)


def cache_settings(args: argparse.Namespace) -> CacheSettings:
    clip = ClipSpec(num_frames=args.num_frames, target_fps=args.target_fps, size=args.size, on_short=args.on_short)
    return CacheSettings(
        clip=clip, batch_size=args.batch_size, device=args.device, dtype=DTYPES[args.dtype], workers=args.workers
    )


def parse_part(text: str) -> tuple[int, int]:
    try:
        index, parts = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--part must look like 0/4 (INDEX/PARTS), got {text!r}") from None
    if not 0 <= index < parts:
        raise argparse.ArgumentTypeError(f"--part needs 0 <= INDEX < PARTS, got {text!r}")
    return index, parts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {args.batch_size}")
    urls = expand_urls(args.shards)
    if not urls:
        raise ValueError(f"--shards {args.shards} expands to no shards; check the spec and the working directory")
    names = output_names(urls)  # over all shards, so that every part names its outputs the same way
    index, parts = args.part
    mine = list(zip(urls, names, strict=True))[index::parts]
    todo = [(url, args.out / name) for url, name in mine if not is_done(args.out / name)]
    log.info(
        "%d shards in part %d/%d, %d already done under %s", len(mine), index, parts, len(mine) - len(todo), args.out
    )
    load_start = time.perf_counter()
    encoders = build_encoders(args) if todo else None  # loading a checkpoint is skipped when all is done
    counts: Counter[str] = Counter()
    written = shards_done = 0
    settings = cache_settings(args)
    start = time.perf_counter()
    with tqdm(unit="sample", desc="cache latents") as bar:
        for url, out_path in todo:
            assert encoders is not None
            n = cache_shard(url, out_path, settings=settings, encoders=encoders, counts=counts, progress=bar.update)
            if n is None:  # unreadable shard: no marker, so a re-run tries it again
                continue
            mark_done(out_path, {"source": url, "samples": n})
            written += n
            shards_done += 1
    seconds = time.perf_counter() - start
    summary = {
        "shards": len(mine),
        "shards_done": shards_done,
        "shards_already_done": len(mine) - len(todo),
        "samples_written": written,
        "skipped": dict(sorted(counts.items())),
        "load_seconds": round(start - load_start, 3),
        "seconds": round(seconds, 3),
        "samples_per_s": round(written / seconds, 3) if seconds > 0 else None,
    }
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
