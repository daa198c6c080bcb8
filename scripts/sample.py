"""Sample a video from a stage export or a released SVD checkpoint; writes ``<out>/<name>.mp4`` and ``.gif``.

Usage:
  python scripts/sample.py --export runs/svd_stage/export --image cond.png --out samples/
  python scripts/sample.py --checkpoint svd_xt.safetensors --variant svd_xt --image cond.png --out samples/
  python scripts/sample.py --export runs/r/img2vid_finetune/export --image cond.png --out samples/
      --lora runs/r/camera_lora/export/lora.safetensors:0.8   (a LoRA on the base at scale 0.8; repeat to mix)

Sampling defaults (frames, steps, guidance) follow the variant (RECIPE 3: svd 14 frames, 25 steps, cfg 1.0 -> 2.5;
svd_xt 25 frames, 30 steps, cfg 1.5 -> 3.0); a stage export samples at its training size and frame count.
The GIF path is printed last.

Decoder (``--decoder``): an export whose stage decoded with a trained temporal decoder (``stage=temporal_decoder``,
export.json ``decoder: temporal``), and the released svd / svd_xt files, decode with it by default; ``--decoder kl``
decodes such an export frame by frame with the KL autoencoder its export.json names (``kl_autoencoder``, the
autoencoder stage export the temporal decoder was trained from). ``--decoder temporal`` on a model without one is an
error. The decoder used is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoints import CheckpointSizes, load_official_checkpoint
from models.conditioners import tiny_open_clip_config
from models.diffusion import Denoiser, VScalingWithEDMcNoise
from models.latent_diffusion import LatentDiffusion
from models.unet import tiny_unet_spec
from models.vae import TemporalAutoencoder, tiny_autoencoder_spec
from train.conditioning import fps_to_fps_id
from train.config import GenerationSettings, SamplesConfig
from train.lora import load_loras, parse_lora_arg
from train.media import read_image, write_gif, write_mp4
from train.sampling import PRESETS, SamplingPreset, sample_video
from train.tasks import SVD_TASK

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DECODERS = ("kl", "temporal")


@dataclass
class Source:
    model: LatentDiffusion
    denoiser: nn.Module
    task: str
    preset: SamplingPreset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--export", type=Path, help="a stage export folder (train.export)")
    src.add_argument("--checkpoint", type=Path, help="a released single-file checkpoint")
    p.add_argument("--variant", choices=sorted(PRESETS), help="layout of --checkpoint")
    p.add_argument("--image", type=Path, help="conditioning image (i2v)")
    p.add_argument("--interpolate", nargs=2, type=Path, metavar=("A", "B"), help="frame interpolation: A, 3 new, B")
    p.add_argument("--interpolate-video", type=Path, help="frame interpolation: raise a video's frame rate")
    p.add_argument("--factor", type=int, default=4, help="--interpolate-video: 4 (one pass), 16 (two passes), ...")
    p.add_argument("--prompt", help="caption (t2i, t2v)")
    p.add_argument("--num-frames", type=int, help="default: the variant's or the stage's")
    p.add_argument("--height", type=int, help="default: 576, or the stage's")
    p.add_argument("--width", type=int, help="default: 1024, or the stage's")
    p.add_argument(
        "--fps",
        type=float,
        default=float(SamplesConfig.fps),
        help="frame rate of the files; conditions fps_id = fps - 1",
    )
    p.add_argument("--motion-bucket-id", type=int, default=GenerationSettings.motion_bucket_id)
    p.add_argument("--cond-aug", type=float, default=GenerationSettings.cond_aug)
    p.add_argument("--elevation", type=float, help="camera elevation in degrees (a multiview export, with --image)")
    p.add_argument("--steps", type=int, help="default: 25 (svd) or 30 (svd_xt)")
    p.add_argument("--min-cfg", type=float, help="default: 1.0 (svd) or 1.5 (svd_xt)")
    p.add_argument("--max-cfg", type=float, help="default: 2.5 (svd) or 3.0 (svd_xt)")
    p.add_argument(
        "--decoder",
        choices=DECODERS,
        help="temporal (SVD's deflickering decoder) or kl (frame by frame); default: temporal when the model has one",
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        type=parse_lora_arg,
        metavar="FILE[:SCALE]",
        help="a LoRA (a camera_lora stage's lora.safetensors) on the UNet at SCALE (default 1); repeat to mix several",
    )
    p.add_argument("--decode-chunk", type=int, default=GenerationSettings.decode_chunk, help="frames decoded at a time")
    p.add_argument("--seed", type=int, default=GenerationSettings.seed)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--name", help="file name without suffix; default from the image or prompt and the seed")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # test-size networks (tests only)
    args = p.parse_args(argv)
    if args.checkpoint is not None and args.variant is None:
        p.error(f"--checkpoint needs --variant (one of {', '.join(sorted(PRESETS))})")
    if args.export is not None and args.variant is not None:
        p.error("--variant describes --checkpoint; a stage export knows its own layout, drop --variant")
    return args


def tiny_sizes() -> CheckpointSizes:
    """The test-size SVD layout: tiny UNet (context 32 = the tiny OpenCLIP width), VAE and OpenCLIP."""
    unet = dataclasses.replace(tiny_unet_spec(), context_dim=32)
    return CheckpointSizes(unet=unet, autoencoder=tiny_autoencoder_spec(), clip_arch=tiny_open_clip_config())


def load_source(args: argparse.Namespace) -> Source:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.export is not None:
        from train.export import load_export  # imported here: the export module pulls in the training stack

        export = load_export(args.export, device=device)
        preset = SamplingPreset(
            num_frames=export.num_frames, height=export.height, width=export.width, **_cfg(PRESETS["svd"])
        )
        choose_decoder(export, args.decoder, source=str(args.export))
        model = export.model.to(device=device, dtype=dtype)
        return Source(model, export.denoiser.to(device), export.task, preset)
    sizes = tiny_sizes() if args.tiny else None
    loaded = load_official_checkpoint(args.checkpoint, variant=args.variant, sizes=sizes, device=device, dtype=dtype)
    model = LatentDiffusion(unet=loaded.unet, first_stage=loaded.first_stage, conditioner=loaded.conditioner)
    has = "temporal" if isinstance(model.first_stage, TemporalAutoencoder) else "kl"
    if args.decoder not in (None, has):
        raise ValueError(
            f"--decoder {args.decoder}: the released {args.variant} file has only its {has} decoder "
            f"(svd / svd_xt: temporal, svd_image_decoder: kl); pick the variant with the decoder you want"
        )
    print(f"[decoder] {has} ({args.variant} file)", flush=True)
    return Source(model.eval(), Denoiser(VScalingWithEDMcNoise()), SVD_TASK, PRESETS[args.variant])


def choose_decoder(export: Any, decoder: str | None, *, source: str) -> None:
    """Decode ``export`` with ``decoder`` (None: the one it trained with); swaps in the KL autoencoder for ``kl``."""
    has = "temporal" if isinstance(export.model.first_stage, TemporalAutoencoder) else "kl"
    if decoder is None or decoder == has:
        print(f"[decoder] {has} (the export's; export.json says which)", flush=True)
        return
    if decoder == "temporal":
        raise ValueError(
            f"--decoder temporal: {source} has no temporal decoder (its stage decoded with the KL decoder); train "
            "stage=temporal_decoder in its run and retrain the stage, or sample with --decoder kl"
        )
    from train.export import kl_first_stage  # the training stack, only for this route

    export.model.first_stage_model = kl_first_stage(export)
    print(f"[decoder] kl (from {export.meta['kl_autoencoder']})", flush=True)


def _cfg(preset: SamplingPreset) -> dict[str, Any]:
    return {"num_steps": preset.num_steps, "min_cfg": preset.min_cfg, "max_cfg": preset.max_cfg}


def output_name(args: argparse.Namespace) -> str:
    if args.name:
        return args.name
    base = args.image.stem if args.image is not None else re.sub(r"[^A-Za-z0-9]+", "_", args.prompt or "")[:40]
    return f"{base.strip('_') or 'sample'}_seed{args.seed}"


def generation_settings(args: argparse.Namespace, preset: SamplingPreset) -> GenerationSettings:
    """The flags as ``GenerationSettings``; steps and guidance default to the variant's (or svd's for an export)."""
    return GenerationSettings(
        num_steps=args.steps or preset.num_steps,
        min_cfg=preset.min_cfg if args.min_cfg is None else args.min_cfg,
        max_cfg=preset.max_cfg if args.max_cfg is None else args.max_cfg,
        fps_id=fps_to_fps_id(args.fps),
        motion_bucket_id=args.motion_bucket_id,
        cond_aug=args.cond_aug,
        elevation=args.elevation,
        seed=args.seed,
        decode_chunk=args.decode_chunk,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source = load_source(args)
    if args.lora:
        load_loras(source.model.unet, args.lora)  # peft adapters, each at its scale (train/lora.py)
    preset = source.preset
    height, width = args.height or preset.height, args.width or preset.width
    if args.interpolate or args.interpolate_video:  # train/interpolation.py
        from train.interpolation import write_interpolation

        paths = write_interpolation(
            source.model,
            source.denoiser,
            task=source.task,
            source=str(args.export or args.checkpoint),
            num_frames=preset.num_frames,
            size=(height, width),
            settings=generation_settings(args, preset),
            out=args.out,
            images=args.interpolate,
            video=args.interpolate_video,
            factor=args.factor,
            fps=args.fps,
            name=args.name,
            device=args.device,
            progress=args.progress,
        )
        print("\n".join(map(str, paths)))
        return 0
    frames = sample_video(
        source.model,
        source.denoiser,
        task=source.task,
        prompt=args.prompt,
        image=None if args.image is None else read_image(args.image, size=(height, width)),
        num_frames=args.num_frames or preset.num_frames,
        height=height,
        width=width,
        settings=generation_settings(args, preset),
        device=args.device,
        progress=args.progress,
    )
    name = output_name(args)
    print(write_mp4(frames, args.out / f"{name}.mp4", args.fps))
    print(write_gif(frames, args.out / f"{name}.gif", args.fps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
