"""Does the temporal decoder reduce flicker? Real clips -> KL encoder -> KL decoder / temporal decoder; one JSON line.

Usage:
  python scripts/decoder_consistency.py --temporal-decoder outputs/runs/demo/temporal_decoder/export
  python scripts/decoder_consistency.py --temporal-decoder <export> --autoencoder <autoencoder export> \\
      --shards 'clips/{00000..00009}.tar' --max-clips 64

The clips are cut as evaluation cuts them (``train.evaluation.video_files.iter_shard_clips``: centred, the
temporal_decoder export's frames and size unless given). Each clip is encoded once (posterior mean, the encoder both
decoders share), decoded frame by frame by the KL decoder and clip-wise by the temporal decoder, and quantised to
uint8 as a written video would be. All figures are mean absolute differences of pixels in [0, 1]:

* ``frame_diff_{source,kl,temporal}``: ``|x_t - x_{t-1}|``, the frame-to-frame change of each version;
* ``recon_{kl,temporal}``: ``|x_hat_t - x_t|``, the per-frame reconstruction error;
* ``flicker_{kl,temporal}``: ``|(x_hat_t - x_hat_{t-1}) - (x_t - x_{t-1})|``, the frame-to-frame change the decoder
  adds or removes against the source: flicker (0 for a decoder whose errors do not change from frame to frame).

The KL autoencoder is the one the temporal decoder export names (export.json ``kl_autoencoder``) unless
``--autoencoder`` is given; its encoder must be the temporal decoder's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from models.checkpoints import load_state_dict
from models.checkpoints.keys import strip_prefix
from models.latent_diffusion import FIRST_STAGE_PREFIX
from models.vae import AutoencoderKL, TemporalAutoencoder
from train.builders import autoencoder_spec
from train.evaluation.video_files import iter_shard_clips
from train.export import read_export_meta, resolve_weights_file

DEFAULT_SHARDS = "outputs/demo_data/clips/*.tar"
ENCODER_PARTS = ("encoder.", "quant_conv.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--temporal-decoder", type=Path, required=True, help="a temporal_decoder stage export folder")
    p.add_argument("--autoencoder", type=Path, help="the KL autoencoder export (default: the one the export names)")
    p.add_argument("--shards", nargs="+", default=[DEFAULT_SHARDS], help="clip shards (brace and glob patterns)")
    p.add_argument("--num-frames", type=int, help="frames per clip (default: the export's)")
    p.add_argument("--height", type=int, help="default: the export's")
    p.add_argument("--width", type=int, help="default: the export's")
    p.add_argument("--max-clips", type=int, default=32)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def load_decoders(temporal_export: Path, autoencoder: Path | None) -> tuple[AutoencoderKL, TemporalAutoencoder, dict]:
    """The KL autoencoder and the temporal autoencoder of a temporal_decoder export (same encoder, checked)."""
    config, meta = read_export_meta(temporal_export)
    if meta.get("objective") != "temporal_decoder":
        raise ValueError(f"{temporal_export} is a {meta.get('objective')} export; pass a temporal_decoder stage export")
    kl_path = autoencoder if autoencoder is not None else meta.get("kl_autoencoder")
    if not kl_path:
        raise ValueError(f"{temporal_export}/export.json names no kl_autoencoder; pass --autoencoder")
    spec = autoencoder_spec(config)
    state = strip_prefix(load_state_dict(resolve_weights_file(temporal_export)), FIRST_STAGE_PREFIX)
    temporal = TemporalAutoencoder(spec, quant_convs=True, post_quant_conv="post_quant_conv.weight" in state)
    temporal.load_state_dict(state, strict=True)
    kl_state = strip_prefix(load_state_dict(resolve_weights_file(kl_path)), FIRST_STAGE_PREFIX)
    kl = AutoencoderKL(spec)
    kl.load_state_dict(kl_state, strict=True)
    if any(not torch.equal(v, state[k]) for k, v in kl_state.items() if k.startswith(ENCODER_PARTS)):
        raise ValueError(f"{kl_path} has another encoder than {temporal_export}: not the autoencoder it was trained on")
    return kl.eval(), temporal.eval(), meta


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> [0, 1], quantised to 8 bits as a written video."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 255.0


@torch.no_grad()
def measure(kl: AutoencoderKL, temporal: TemporalAutoencoder, clips: list[torch.Tensor], device: str) -> dict:
    """Mean figures (module docstring) over uint8 ``(T, 3, H, W)`` clips."""
    sums: dict[str, float] = {}
    kl, temporal = kl.to(device), temporal.to(device)
    for clip in clips:
        x = clip.to(device).float() / 127.5 - 1.0  # (T, 3, H, W) in [-1, 1]
        z = kl.encode(x).mode()
        source = _to_unit(x)
        versions = {"kl": _to_unit(kl.decode(z)), "temporal": _to_unit(temporal.decode(z, num_frames=len(x)))}
        figures = {"frame_diff_source": (source[1:] - source[:-1]).abs().mean()}
        for name, rec in versions.items():
            figures[f"frame_diff_{name}"] = (rec[1:] - rec[:-1]).abs().mean()
            figures[f"recon_{name}"] = (rec - source).abs().mean()
            figures[f"flicker_{name}"] = ((rec[1:] - rec[:-1]) - (source[1:] - source[:-1])).abs().mean()
        for key, value in figures.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    return {key: round(value / len(clips), 6) for key, value in sums.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kl, temporal, meta = load_decoders(args.temporal_decoder, args.autoencoder)
    num_frames = args.num_frames or int(meta["num_frames"])
    if num_frames < 2:
        raise ValueError(f"--num-frames {num_frames}: frame-to-frame differences need at least 2 frames")
    size = (args.height or int(meta["height"]), args.width or int(meta["width"]))
    clips = []
    for clip in iter_shard_clips(args.shards, num_frames=num_frames, size=size):
        clips.append(clip)
        if len(clips) == args.max_clips:
            break
    if not clips:
        raise ValueError(f"no clips of {num_frames} frames in {args.shards}; check --shards and --num-frames")
    result = {"clips": len(clips), "num_frames": num_frames, "height": size[0], "width": size[1]}
    print(json.dumps(result | measure(kl, temporal, clips, args.device)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
