"""Inflation of an image UNet (Stage I) into the video UNet (Stage II), RECIPE 1.4.

Every spatial weight is copied; the temporal layers are new. The paper does not state their initialisation
and the official code uses PyTorch defaults (so a freshly inflated model no longer reproduces the image
model). We start the temporal layers as an exact identity instead: the temporal ResBlock's last conv is zero
(as in the official code), and the output projections of the temporal transformer block (``ff_in``,
``attn1``, ``attn2``, ``ff``) and of the frame-position MLP are zero. At initialisation the video UNet's output
on a video therefore equals the image UNet's output frame by frame, and every zeroed layer still receives
gradients, so training moves away from the image model only as the loss asks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..unet.temporal import SpatialVideoTransformer, VideoResBlock
from .keys import diff_keys

TEMPORAL_TOKENS = ("time_stack", "time_mixer", "time_pos_embed")
INPUT_CONV_KEY = "input_blocks.0.0.weight"


def is_temporal_unet_key(key: str) -> bool:
    """True for keys under ``time_stack``, ``time_mixer`` or ``time_pos_embed`` (RECIPE 1.5 key patterns)."""
    return any(token in key.split(".") for token in TEMPORAL_TOKENS)


@dataclass
class InflationReport:
    """What the video UNet has that the image checkpoint did not."""

    new_temporal: list[str] = field(default_factory=list)
    new_other: list[str] = field(default_factory=list)  # e.g. label_emb when the image model had no vector input
    widened: list[str] = field(default_factory=list)  # e.g. the input conv going from 4 to 8 channels

    def summary(self) -> str:
        return (
            f"{len(self.new_temporal)} new temporal keys, {len(self.new_other)} other new keys "
            f"({', '.join(self.new_other) or 'none'}), widened: {', '.join(self.widened) or 'none'}"
        )


@torch.no_grad()
def init_temporal_identity(unet: nn.Module) -> None:
    """Make every temporal layer of ``unet`` an exact identity (see the module docstring)."""
    for module in unet.modules():
        if isinstance(module, VideoResBlock):
            nn.init.zeros_(module.time_stack.out_layers[-1].weight)
            nn.init.zeros_(module.time_stack.out_layers[-1].bias)
        elif isinstance(module, SpatialVideoTransformer):
            nn.init.zeros_(module.time_pos_embed[-1].weight)
            nn.init.zeros_(module.time_pos_embed[-1].bias)
            for block in module.time_stack:
                outs = [block.attn1.to_out[0], block.ff.net[-1]]
                outs += [block.ff_in.net[-1]] if block.ff_in is not None and block.is_res else []
                outs += [block.attn2.to_out[0]] if block.attn2 is not None else []
                for linear in outs:
                    nn.init.zeros_(linear.weight)
                    nn.init.zeros_(linear.bias)


@torch.no_grad()
def inflate_image_unet(video_unet: nn.Module, image_state_dict: dict[str, torch.Tensor]) -> InflationReport:
    """Load an image UNet's weights (keys without the ``model.diffusion_model.`` prefix) into a video UNet.

    Explained differences are handled: new temporal layers (identity init), a wider input conv (extra input
    channels, e.g. the I2V concat latent, start at zero), a new ``label_emb`` (its last layer starts at zero,
    so the vector conditioning adds nothing at first). Anything else is an error naming the keys.
    """
    target = video_unet.state_dict()
    unexpected = diff_keys(image_state_dict, target).unexpected
    if unexpected:
        raise ValueError(
            f"{len(unexpected)} image-UNet keys have no place in the video UNet (first: {unexpected[:5]}); "
            "strip the 'model.diffusion_model.' prefix and check that both specs share the spatial config"
        )
    report = InflationReport()
    merged = dict(target)
    for key, value in image_state_dict.items():
        want = target[key].shape
        if value.shape == want:
            merged[key] = value.to(target[key].dtype)
        elif (
            key == INPUT_CONV_KEY
            and value.shape[0] == want[0]
            and value.shape[2:] == want[2:]
            and (value.shape[1] < want[1])
        ):
            widened = torch.zeros(want, dtype=target[key].dtype, device=value.device)
            widened[:, : value.shape[1]] = value
            merged[key] = widened
            report.widened.append(f"{key} {tuple(value.shape)} -> {tuple(want)}")
        else:
            raise ValueError(f"shape mismatch for {key}: checkpoint {tuple(value.shape)} vs model {tuple(want)}")

    for key in target:
        if key in image_state_dict:
            continue
        if is_temporal_unet_key(key):
            report.new_temporal.append(key)
        elif key.startswith("label_emb."):
            report.new_other.append(key)
        else:
            raise ValueError(f"video UNet key {key} is missing from the image checkpoint and is not a temporal key")

    video_unet.load_state_dict(merged, strict=True)
    init_temporal_identity(video_unet)
    if report.new_other:
        last = video_unet.label_emb[0][-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return report
