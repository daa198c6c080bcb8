"""diffusers VAE configs and the inverse of ``models/vae/diffusers_convert.py`` (diffusers keys -> ours).

``AutoencoderKLTemporalDecoder`` pairs with our ``TemporalAutoencoder`` (SVD layout, no quant convs; diffusers'
``quant_conv`` is extra), ``AutoencoderKL`` with our ``AutoencoderKL``. The inverse key map is the forward
converter run on a meta-device template, so the two directions cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..vae import (
    AutoencoderKL,
    AutoencoderSpec,
    TemporalAutoencoder,
    to_diffusers_temporal_vae_state_dict,
    to_diffusers_vae_state_dict,
)


def vae_config(spec: AutoencoderSpec, *, temporal: bool, scale_factor: float) -> dict[str, Any]:
    """diffusers ``AutoencoderKLTemporalDecoder`` (``temporal``) or ``AutoencoderKL`` config of our autoencoder."""
    if spec.attn_resolutions:
        raise ValueError(f"attn_resolutions={spec.attn_resolutions}: diffusers' VAE has mid-block attention only")
    if spec.embed_dim != spec.z_channels:
        raise ValueError(f"embed_dim={spec.embed_dim} != z_channels={spec.z_channels}: diffusers' VAE has one size")
    if temporal and spec.num_res_blocks != 2:
        raise ValueError(
            f"num_res_blocks={spec.num_res_blocks}: diffusers' temporal VAE mid block has layers_per_block ResBlocks "
            "where sgm's has two, so only num_res_blocks=2 (SVD's) is expressible"
        )
    levels = len(spec.ch_mult)
    config = {
        "in_channels": spec.in_channels,
        "out_channels": spec.out_ch,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "block_out_channels": [spec.ch * m for m in spec.ch_mult],
        "layers_per_block": spec.num_res_blocks,
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
    unknown = sorted(k for k in sd if k not in key_map and k not in extra)
    missing = sorted(k for k in (*key_map, *extra) if k not in sd)
    if unknown or missing:
        raise ValueError(f"diffusers VAE does not match its config: unknown keys {unknown[:5]}, missing {missing[:5]}")
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
