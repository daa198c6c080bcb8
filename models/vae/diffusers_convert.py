"""State-dict conversion from our (= official ldm/sgm) autoencoder layout to diffusers.

* ``to_diffusers_vae_state_dict``: ``AutoencoderKL`` -> diffusers ``AutoencoderKL``.
* ``to_diffusers_temporal_vae_state_dict``: ``TemporalAutoencoder`` (SVD ``first_stage_model`` without the
  prefix) -> diffusers ``AutoencoderKLTemporalDecoder``.

Our keys are the official checkpoint keys, so loading an official file is only a prefix strip; these
functions exist for parity tests and exports. Renames (ours -> diffusers):

* ``{enc,dec}.mid.block_{1,2}`` -> ``mid_block.resnets.{0,1}``; ``mid.attn_1`` -> ``mid_block.attentions.0``
  with ``norm/q/k/v/proj_out`` -> ``group_norm/to_q/to_k/to_v/to_out.0`` (1x1 conv weights become Linear).
* ``encoder.down.{i}.block.{j}`` -> ``down_blocks.{i}.resnets.{j}``; ``downsample`` -> ``downsamplers.0``.
* ``decoder.up.{i}`` -> ``up_blocks.{L-1-i}`` (diffusers counts from the lowest resolution);
  ``upsample`` -> ``upsamplers.0``; ``nin_shortcut`` -> ``conv_shortcut``; ``norm_out`` -> ``conv_norm_out``.
* Temporal decoder blocks: spatial keys under ``spatial_res_block.``; ``time_stack.{in_layers.0, in_layers.2,
  out_layers.0, out_layers.3}`` -> ``temporal_res_block.{norm1, conv1, norm2, conv2}``; ``mix_factor`` ->
  ``time_mixer.mix_factor`` (diffusers' ``switch_spatial_to_temporal_mix`` gives the same blend);
  ``conv_out.time_mix_conv`` -> ``time_conv_out``.
* diffusers' temporal VAE always has a ``quant_conv``; SVD's first stage has none, so an identity 1x1 conv is
  written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

_ATTN_RENAME = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_TIME_STACK_RENAME = {"in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2"}


def _num_up_levels(sd: Mapping[str, torch.Tensor]) -> int:
    levels = {int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up\.(\d+)\.", k))}
    if not levels:
        raise ValueError("no decoder.up.{i} keys; pass the state dict of our AutoencoderKL / TemporalAutoencoder")
    return max(levels) + 1


def _resnet_key(rest: str, *, temporal: bool) -> str:
    """``rest`` is the key below one ResnetBlock (``norm1.weight``, ``time_stack.in_layers.2.bias``, ...)."""
    if rest == "mix_factor":
        return "time_mixer.mix_factor"
    if rest.startswith("time_stack."):
        sub, param = rest.removeprefix("time_stack.").rsplit(".", 1)
        return f"temporal_res_block.{_TIME_STACK_RENAME[sub]}.{param}"
    rest = rest.replace("nin_shortcut.", "conv_shortcut.")
    return f"spatial_res_block.{rest}" if temporal else rest


def _convert_key(key: str, value: torch.Tensor, *, num_up: int, temporal: bool) -> tuple[str, torch.Tensor]:
    part, _, rest = key.partition(".")
    temporal_block = temporal and part == "decoder"
    if m := re.fullmatch(r"mid\.attn_1\.(\w+)\.(weight|bias)", rest):
        name, param = m.groups()
        if param == "weight" and value.ndim == 4:
            value = value[:, :, 0, 0]  # 1x1 conv (C, C, 1, 1) -> Linear (C, C)
        return f"{part}.mid_block.attentions.0.{_ATTN_RENAME[name]}.{param}", value
    if m := re.fullmatch(r"mid\.block_([12])\.(.+)", rest):
        index = int(m.group(1)) - 1
        return f"{part}.mid_block.resnets.{index}.{_resnet_key(m.group(2), temporal=temporal_block)}", value
    if m := re.fullmatch(r"down\.(\d+)\.block\.(\d+)\.(.+)", rest):
        i, j, sub = m.groups()
        return f"{part}.down_blocks.{i}.resnets.{j}.{_resnet_key(sub, temporal=False)}", value
    if m := re.fullmatch(r"down\.(\d+)\.downsample\.(.+)", rest):
        return f"{part}.down_blocks.{m.group(1)}.downsamplers.0.{m.group(2)}", value
    if m := re.fullmatch(r"up\.(\d+)\.block\.(\d+)\.(.+)", rest):
        i, j, sub = m.groups()
        up = num_up - 1 - int(i)
        return f"{part}.up_blocks.{up}.resnets.{j}.{_resnet_key(sub, temporal=temporal_block)}", value
    if m := re.fullmatch(r"up\.(\d+)\.upsample\.(.+)", rest):
        return f"{part}.up_blocks.{num_up - 1 - int(m.group(1))}.upsamplers.0.{m.group(2)}", value
    if re.fullmatch(r"(down|up)\.\d+\.attn\..+", rest):
        raise ValueError(f"{key}: per-level attention (attn_resolutions) has no diffusers mapping here; use ()")
    if rest.startswith("norm_out."):
        return f"{part}.conv_norm_out.{rest.removeprefix('norm_out.')}", value
    if temporal_block and rest.startswith("conv_out.time_mix_conv."):
        return f"{part}.time_conv_out.{rest.removeprefix('conv_out.time_mix_conv.')}", value
    if rest.startswith(("conv_in.", "conv_out.")) or part in ("quant_conv", "post_quant_conv"):
        return key, value
    raise ValueError(f"unexpected key {key!r}; pass the state dict of our AutoencoderKL / TemporalAutoencoder")


def _convert(sd: Mapping[str, torch.Tensor], *, temporal: bool) -> dict[str, torch.Tensor]:
    num_up = _num_up_levels(sd)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new_key, new_value = _convert_key(key, value, num_up=num_up, temporal=temporal)
        out[new_key] = new_value
    return out


def to_diffusers_vae_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ``AutoencoderKL`` state dict -> diffusers ``AutoencoderKL`` (``load_state_dict(strict=True)`` clean)."""
    if any(".time_stack." in k for k in sd):
        raise ValueError("temporal decoder keys found; use to_diffusers_temporal_vae_state_dict")
    return _convert(sd, temporal=False)


def to_diffusers_temporal_vae_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ``TemporalAutoencoder`` state dict -> diffusers ``AutoencoderKLTemporalDecoder``."""
    if "quant_conv.weight" in sd or "post_quant_conv.weight" in sd:
        raise ValueError("quant convs found: this is an AutoencoderKL state dict; use to_diffusers_vae_state_dict")
    out = _convert(sd, temporal=True)
    moments = sd["encoder.conv_out.weight"]
    channels = moments.shape[0]
    # diffusers applies quant_conv after the encoder; identity keeps the SVD encoder's moments unchanged.
    out["quant_conv.weight"] = torch.eye(channels, dtype=moments.dtype, device=moments.device)[:, :, None, None]
    out["quant_conv.bias"] = torch.zeros(channels, dtype=moments.dtype, device=moments.device)
    return out
