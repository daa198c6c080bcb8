"""Our (= official ldm/sgm) autoencoder layout <-> diffusers' VAEs: configs and state-dict keys, both ways.

* ``to_diffusers_vae_state_dict``: ``AutoencoderKL`` -> diffusers ``AutoencoderKL``.
* ``to_diffusers_temporal_vae_state_dict``: ``TemporalAutoencoder`` (SVD ``first_stage_model`` without the
  prefix) -> diffusers ``AutoencoderKLTemporalDecoder``.
* ``from_diffusers_vae_state_dict``: the inverse, the forward converter run on a meta-device template, so the two
  directions cannot drift apart.

``AutoencoderKLTemporalDecoder`` pairs with our ``TemporalAutoencoder`` (SVD layout, no quant convs; diffusers'
``quant_conv`` is extra), ``AutoencoderKL`` with our ``AutoencoderKL``. Renames (ours -> diffusers):

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
  written (a first stage with its own ``quant_conv``, as the ``temporal_decoder`` stage trains, writes its own).
* diffusers' temporal VAE needs ``layers_per_block=2`` (its mid block has ``layers_per_block`` ResBlocks, sgm's two);
  a ``num_res_blocks=1`` autoencoder (the tiny/demo one) is written with ``TEMPORAL_LAYERS`` ResBlocks per level,
  the extra ones exact identities: all-zero convs (``x + conv2(...) = x``; the temporal half likewise, and its
  ``mix_factor`` 0 blends two equal tensors). Read back, it is a ``num_res_blocks=2`` autoencoder computing the same.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..vae import AutoencoderKL, AutoencoderSpec, TemporalAutoencoder
from .keys import diff_keys

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


TEMPORAL_LAYERS = 2  # layers_per_block of every diffusers temporal VAE this module writes


def _num_res_blocks(sd: Mapping[str, torch.Tensor]) -> int:
    return 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))


def _identity_blocks(out: dict[str, Tensor], block: str, have: int, want: int) -> None:
    """Add ResBlocks ``{block}.{have}`` .. ``{want - 1}``, all zero but for GroupNorm weights 1: identities.

    Shapes come from block ``have - 1`` of the same level, whose conv2 / norm2 already have the output width.
    """
    template = {
        k.removeprefix(f"{block}.{have - 1}."): v for k, v in out.items() if k.startswith(f"{block}.{have - 1}.")
    }
    for j in range(have, want):
        for name in template:
            if name.startswith("conv_shortcut.") or ".conv_shortcut." in name:
                continue
            like = template[name.replace("conv1.", "conv2.").replace("norm1.", "norm2.")]
            fill = 1.0 if re.search(r"norm\d\.weight$", name) else 0.0
            out[f"{block}.{j}.{name}"] = torch.full_like(like, fill)


def to_diffusers_temporal_vae_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ``TemporalAutoencoder`` state dict -> diffusers ``AutoencoderKLTemporalDecoder``.

    Its ``quant_conv`` is written when it has one (and an identity when not); a ``post_quant_conv`` has no place.
    """
    if "post_quant_conv.weight" in sd:
        raise ValueError(
            "post_quant_conv found: an AutoencoderKL (use to_diffusers_vae_state_dict) or a temporal autoencoder "
            "with both quant convs, which diffusers' AutoencoderKLTemporalDecoder cannot hold; build the temporal "
            "decoder with models.vae.temporal_from_kl(kl, fold_post_quant_conv=True)"
        )
    quant = {k: sd[k] for k in ("quant_conv.weight", "quant_conv.bias") if k in sd}
    out = _convert({k: v for k, v in sd.items() if k not in quant}, temporal=True)
    moments = sd["encoder.conv_out.weight"]
    channels = moments.shape[0]
    # diffusers applies quant_conv after the encoder; identity keeps the SVD encoder's moments unchanged.
    out["quant_conv.weight"] = torch.eye(channels, dtype=moments.dtype, device=moments.device)[:, :, None, None]
    out["quant_conv.bias"] = torch.zeros(channels, dtype=moments.dtype, device=moments.device)
    out |= quant
    blocks = _num_res_blocks(sd)
    if blocks < TEMPORAL_LAYERS:
        for i in range(_num_up_levels(sd)):
            _identity_blocks(out, f"encoder.down_blocks.{i}.resnets", blocks, TEMPORAL_LAYERS)
            _identity_blocks(out, f"decoder.up_blocks.{i}.resnets", blocks + 1, TEMPORAL_LAYERS + 1)
    return out


def vae_config(spec: AutoencoderSpec, *, temporal: bool, scale_factor: float) -> dict[str, Any]:
    """diffusers ``AutoencoderKLTemporalDecoder`` (``temporal``) or ``AutoencoderKL`` config of our autoencoder."""
    if spec.attn_resolutions:
        raise ValueError(f"attn_resolutions={spec.attn_resolutions}: diffusers' VAE has mid-block attention only")
    if spec.embed_dim != spec.z_channels:
        raise ValueError(f"embed_dim={spec.embed_dim} != z_channels={spec.z_channels}: diffusers' VAE has one size")
    if temporal and spec.num_res_blocks > TEMPORAL_LAYERS:
        raise ValueError(
            f"num_res_blocks={spec.num_res_blocks}: diffusers' temporal VAE mid block has layers_per_block ResBlocks "
            "where sgm's has two, so only num_res_blocks <= 2 (SVD's 2; 1 written with identity blocks) is expressible"
        )
    levels = len(spec.ch_mult)
    config = {
        "in_channels": spec.in_channels,
        "out_channels": spec.out_ch,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "block_out_channels": [spec.ch * m for m in spec.ch_mult],
        "layers_per_block": TEMPORAL_LAYERS if temporal else spec.num_res_blocks,
        "latent_channels": spec.z_channels,
        "sample_size": spec.resolution,
        "scaling_factor": scale_factor,
        "force_upcast": True,
    }
    if not temporal:
        config |= {"up_block_types": ["UpDecoderBlock2D"] * levels, "act_fn": "silu", "norm_num_groups": 32}
    return config


def autoencoder_spec_from_config(config: Mapping[str, Any]) -> AutoencoderSpec:
    """Our ``AutoencoderSpec`` of a diffusers VAE config (either class); inverse of ``vae_config``."""
    channels = list(config["block_out_channels"])
    if any(not config.get(k, True) for k in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention")):
        raise ValueError("this diffusers VAE drops a quant conv or the mid-block attention; ours always has them")
    if config.get("act_fn", "silu") != "silu" or config.get("norm_num_groups", 32) != 32:
        raise ValueError("this diffusers VAE uses another activation or GroupNorm size than SD's KL-f8")
    return AutoencoderSpec(
        embed_dim=config["latent_channels"],
        z_channels=config["latent_channels"],
        in_channels=config["in_channels"],
        out_ch=config["out_channels"],
        ch=channels[0],
        ch_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=config["layers_per_block"],
    )


def _vae_key_map(spec: AutoencoderSpec, *, temporal: bool) -> dict[str, tuple[str, torch.Size]]:
    """{diffusers key: (our key, our shape)}: the forward converters run on a meta-device template."""
    with torch.device("meta"):
        template = (TemporalAutoencoder(spec) if temporal else AutoencoderKL(spec)).state_dict()
    theirs = (to_diffusers_temporal_vae_state_dict if temporal else to_diffusers_vae_state_dict)(template)
    # The converters emit one key per input key in input order (the temporal one then appends quant_conv).
    pairs = list(zip(template.items(), theirs.items(), strict=False))
    assert all(o.numel() == t.numel() for (_, o), (_, t) in pairs), "VAE converter changed its key order"
    return {their_key: (our_key, value.shape) for (our_key, value), (their_key, _) in pairs}


def from_diffusers_vae_state_dict(
    sd: Mapping[str, Tensor], *, spec: AutoencoderSpec, temporal: bool
) -> dict[str, Tensor]:
    """diffusers VAE keys -> ours (``TemporalAutoencoder`` keys plus ``quant_conv.*`` when ``temporal``)."""
    key_map = _vae_key_map(spec, temporal=temporal)
    extra = ("quant_conv.weight", "quant_conv.bias") if temporal else ()
    # Shapes are not compared: the attention projections are Linear weights here and 1x1 convs in ours.
    diff = diff_keys(sd, dict.fromkeys((*key_map, *extra)), compare_shapes=False)
    if diff:
        raise ValueError(
            f"diffusers VAE does not match its config: unknown keys {diff.unexpected[:5]}, missing {diff.missing[:5]}"
        )
    out = {our_key: sd[k].reshape(shape) for k, (our_key, shape) in key_map.items()}
    return out | {k: sd[k] for k in extra}


def fold_quant_conv(encoder: Mapping[str, Tensor], weight: Tensor, bias: Tensor) -> dict[str, Tensor]:
    """Encoder keys whose ``conv_out`` also applies the 1x1 ``quant_conv`` (``weight`` (C, C, 1, 1), ``bias``).

    ``quant(conv_out(h))`` is one conv with weight ``Q @ W`` (per tap) and bias ``Q @ b + q``; an identity
    ``quant_conv`` returns the encoder unchanged, so that case stays bitwise.
    """
    q = weight[:, :, 0, 0]
    if torch.equal(q, torch.eye(q.shape[0], dtype=q.dtype, device=q.device)) and not bias.any():
        return dict(encoder)
    w, b = encoder["conv_out.weight"], encoder["conv_out.bias"]
    folded_w = torch.einsum("ok,kchw->ochw", q.double(), w.double()).to(w.dtype)
    folded_b = (q.double() @ b.double() + bias.double()).to(b.dtype)
    return {**encoder, "conv_out.weight": folded_w, "conv_out.bias": folded_b}
