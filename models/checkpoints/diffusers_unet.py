"""Convert the video UNet between our (= official sgm) layout and diffusers' ``UNetSpatioTemporalConditionModel``.

Our state-dict keys are the official ``model.diffusion_model.*`` keys without the prefix. The mapping is built
from the network's structure (which UNet block holds which ResBlock, transformer or resampler), not from a table
of regular expressions, so it holds for any spec diffusers can express. Tensors are renamed, never reshaped: both
sides use ``Conv3d`` (3, 1, 1) temporal convolutions and ``Linear`` transformer projections.

Calling conventions (what to feed diffusers to get our outputs):

- ``sample`` (B, T, C, H, W) is our ``x`` (B*T, C, H, W) unflattened; the output comes back as (B, T, C, H, W).
- ``timestep`` (B,) is our ``timesteps`` = c_noise, one value per video (diffusers repeats it over frames).
- ``encoder_hidden_states`` (B, S, D) is our ``context`` of the first frame (diffusers repeats it over frames).
- ``added_time_ids`` (B, 3) = (fps_id, motion_bucket_id, cond_aug): diffusers embeds each with the same ``[cos, sin]``
  sinusoid (``flip_sin_to_cos=True``, ``downscale_freq_shift=0``, max period 10000) and concatenates, which is our
  ``y`` = concat of three 256-d ``timestep_embedding``s.
- diffusers builds ``image_only_indicator`` as zeros internally: whole-UNet parity holds for pure video batches.

Numerical difference (not a weight matter): diffusers gives the ResBlocks of attention down blocks and of all up
blocks GroupNorm eps 1e-6; sgm (and our UNet) use 1e-5 in every ResBlock (``GroupNorm32`` default). Outputs
therefore differ slightly (about 1e-5 relative, below bf16 resolution) unless ``match_sgm_group_norm_eps`` aligns
those norms.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..unet.embeddings import timestep_embedding
from ..unet.spec import UNetSpec

_OFFICIAL_PREFIX = "model.diffusion_model."

# (ours, diffusers) module paths inside one VideoResBlock / SpatioTemporalResBlock.
_RESBLOCK = [
    (f"{ours_stack}{ours}", f"{theirs_stack}{theirs}")
    for ours_stack, theirs_stack in (("", "spatial_res_block."), ("time_stack.", "temporal_res_block."))
    for ours, theirs in (
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
        ("skip_connection", "conv_shortcut"),
    )
] + [("time_mixer", "time_mixer")]

# (ours, diffusers) module paths inside one SpatialVideoTransformer / TransformerSpatioTemporalModel. The spatial
# and temporal transformer blocks use the same sub-module names on both sides (norm1, attn1.to_q, ff.net.0.proj...).
_TRANSFORMER = [
    ("norm", "norm"),
    ("proj_in", "proj_in"),
    ("proj_out", "proj_out"),
    ("transformer_blocks", "transformer_blocks"),
    ("time_stack", "temporal_transformer_blocks"),
    ("time_pos_embed.0", "time_pos_embed.linear_1"),
    ("time_pos_embed.2", "time_pos_embed.linear_2"),
    ("time_mixer", "time_mixer"),
]

_TOP_LEVEL = [
    ("time_embed.0", "time_embedding.linear_1"),
    ("time_embed.2", "time_embedding.linear_2"),
    ("label_emb.0.0", "add_embedding.linear_1"),
    ("label_emb.0.2", "add_embedding.linear_2"),
    ("input_blocks.0.0", "conv_in"),
    ("out.0", "conv_norm_out"),
    ("out.2", "conv_out"),
]


def _level_has_attention(spec: UNetSpec, level: int) -> bool:
    return 2**level in spec.attention_resolutions


def _check_expressible(spec: UNetSpec) -> None:
    """Raise ValueError naming the spec field diffusers' SVD UNet cannot represent."""
    t = spec.temporal
    problems = []
    if t is None:
        problems.append("temporal=None (an image UNet): use diffusers' UNet2DConditionModel, or add a TemporalSpec")
    else:
        if t.merge_strategy != "learned_with_images":
            problems.append(f"merge_strategy={t.merge_strategy!r}: diffusers only has 'learned_with_images'")
        if tuple(t.video_kernel_size) != (3, 1, 1):
            problems.append(f"video_kernel_size={t.video_kernel_size}: diffusers hard-codes (3, 1, 1)")
        if not t.extra_ff_mix_layer:
            problems.append("extra_ff_mix_layer=False: diffusers' temporal blocks always have ff_in")
        if not t.use_spatial_context:
            problems.append("use_spatial_context=False: diffusers' temporal cross-attention always uses the context")
        if t.disable_temporal_crossattention:
            problems.append("disable_temporal_crossattention=True: diffusers' temporal blocks always cross-attend")
        if t.max_time_embed_period != 10000:
            problems.append(f"max_time_embed_period={t.max_time_embed_period}: diffusers hard-codes 10000")
    if not spec.use_linear_in_transformer:
        problems.append("use_linear_in_transformer=False: diffusers' spatio-temporal transformer projects with Linear")
    if spec.adm_in_channels is None or spec.adm_in_channels % 3:
        problems.append(
            f"adm_in_channels={spec.adm_in_channels}: diffusers embeds 3 added time ids, so it must be 3 * dim"
        )
    if problems:
        raise ValueError(
            "this UNetSpec cannot be expressed as a diffusers UNetSpatioTemporalConditionModel: " + "; ".join(problems)
        )


def to_diffusers_unet_config(spec: UNetSpec) -> dict:
    """Keyword arguments of diffusers' ``UNetSpatioTemporalConditionModel`` for the network ``spec`` describes.

    ``dropout`` is not represented (diffusers' SVD blocks have none); it does not change weights or inference.
    """
    _check_expressible(spec)
    levels = range(len(spec.channel_mult))
    attn = [_level_has_attention(spec, level) for level in levels]
    channels = [spec.model_channels * mult for mult in spec.channel_mult]
    return {
        "in_channels": spec.in_channels,
        "out_channels": spec.out_channels,
        "down_block_types": tuple("CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in attn),
        "up_block_types": tuple(
            "CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in reversed(attn)
        ),
        "block_out_channels": tuple(channels),
        "addition_time_embed_dim": spec.adm_in_channels // 3,
        "projection_class_embeddings_input_dim": spec.adm_in_channels,
        "layers_per_block": spec.num_res_blocks,
        "cross_attention_dim": spec.context_dim,
        "transformer_layers_per_block": spec.transformer_depth,
        "num_attention_heads": tuple(ch // spec.num_head_channels for ch in channels),
    }


def _module_map(spec: UNetSpec) -> dict[str, str]:
    """{our module path: diffusers module path}, walking the blocks in the order ``VideoUNet`` builds them."""
    pairs: list[tuple[str, str]] = list(_TOP_LEVEL)

    def add_block(ours: str, theirs: str, inner: list[tuple[str, str]]) -> None:
        pairs.extend((f"{ours}.{o}", f"{theirs}.{t}") for o, t in inner)

    nrb, n_levels = spec.num_res_blocks, len(spec.channel_mult)
    k = 1  # input_blocks.0 is conv_in
    for level in range(n_levels):
        for i in range(nrb):
            add_block(f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{i}", _RESBLOCK)
            if _level_has_attention(spec, level):
                add_block(f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{i}", _TRANSFORMER)
            k += 1
        if level != n_levels - 1:
            pairs.append((f"input_blocks.{k}.0.op", f"down_blocks.{level}.downsamplers.0.conv"))
            k += 1

    add_block("middle_block.0", "mid_block.resnets.0", _RESBLOCK)
    add_block("middle_block.1", "mid_block.attentions.0", _TRANSFORMER)
    add_block("middle_block.2", "mid_block.resnets.1", _RESBLOCK)

    k = 0
    for j, level in enumerate(reversed(range(n_levels))):
        has_attn = _level_has_attention(spec, level)
        for i in range(nrb + 1):
            add_block(f"output_blocks.{k}.0", f"up_blocks.{j}.resnets.{i}", _RESBLOCK)
            if has_attn:
                add_block(f"output_blocks.{k}.1", f"up_blocks.{j}.attentions.{i}", _TRANSFORMER)
            if level and i == nrb:
                pairs.append((f"output_blocks.{k}.{2 if has_attn else 1}.conv", f"up_blocks.{j}.upsamplers.0.conv"))
            k += 1
    return dict(pairs)


def _rename(sd: Mapping[str, torch.Tensor], table: dict[str, str], *, source: str) -> dict[str, torch.Tensor]:
    """Rename each key by the longest module-path prefix found in ``table``; unknown keys are an error."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            target = table.get(".".join(parts[:cut]))
            if target is not None:
                new_key = ".".join([target, *parts[cut:]])
                assert new_key not in out, f"two keys map to {new_key}"
                out[new_key] = value
                break
        else:
            unknown.append(key)
    if unknown:
        hint = ""
        if any(k.startswith(_OFFICIAL_PREFIX) for k in unknown):
            hint = f" (strip the '{_OFFICIAL_PREFIX}' prefix of official checkpoints first)"
        raise ValueError(
            f"{len(unknown)} {source} keys do not belong to the UNet this spec describes, e.g. {unknown[:5]}{hint}; "
            "check that the spec (channel_mult, num_res_blocks, attention_resolutions) matches the checkpoint"
        )
    return out


def match_sgm_group_norm_eps(diffusers_unet: nn.Module, *, eps: float = 1e-5) -> int:
    """Give every ResBlock GroupNorm of a diffusers SVD UNet sgm's eps; returns how many norms changed.

    Matched by class name so ``models/`` does not import diffusers. The transformers' norms (1e-6) and the output
    norm (1e-5) already agree with sgm and are left alone.
    """
    changed = 0
    for module in diffusers_unet.modules():
        if type(module).__name__ in ("ResnetBlock2D", "TemporalResnetBlock"):
            for norm in (module.norm1, module.norm2):
                changed += norm.eps != eps
                norm.eps = eps
    return changed


def to_diffusers_unet_state_dict(sd: Mapping[str, torch.Tensor], *, spec: UNetSpec) -> dict[str, torch.Tensor]:
    """Our (= sgm ``model.diffusion_model.*`` without the prefix) UNet keys -> diffusers ``UNetSpatioTemporal...``."""
    _check_expressible(spec)
    return _rename(sd, _module_map(spec), source="VideoUNet")


def from_diffusers_unet_state_dict(sd: Mapping[str, torch.Tensor], *, spec: UNetSpec) -> dict[str, torch.Tensor]:
    """diffusers ``UNetSpatioTemporalConditionModel`` keys -> ours; the inverse of ``to_diffusers_unet_state_dict``."""
    _check_expressible(spec)
    inverse = {theirs: ours for ours, theirs in _module_map(spec).items()}
    return _rename(sd, inverse, source="diffusers")


def forward_with_diffusers_inputs(
    unet: nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    added_time_ids: torch.Tensor,
    *,
    image_only_indicator: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run our ``VideoUNet`` on the inputs diffusers' UNet takes (see the module docstring for the conventions).

    ``sample`` (B, T, C, H, W), ``timestep`` (B,), ``encoder_hidden_states`` (B, S, D), ``added_time_ids`` (B, 3)
    -> (B, T, C_out, H, W). The vector ``y`` is built as diffusers builds it from ``added_time_ids``.
    """
    b, t = sample.shape[:2]
    dim = unet.spec.adm_in_channels // 3
    y = torch.cat([timestep_embedding(added_time_ids[:, i], dim) for i in range(3)], dim=-1).to(added_time_ids.dtype)
    out = unet(
        sample.flatten(0, 1),
        timestep.repeat_interleave(t),
        encoder_hidden_states.repeat_interleave(t, dim=0),
        y.repeat_interleave(t, dim=0),
        num_video_frames=t,
        image_only_indicator=image_only_indicator,
    )
    return out.unflatten(0, (b, t))
