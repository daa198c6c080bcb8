"""Our SVD model <-> the components of a diffusers ``StableVideoDiffusionPipeline`` folder (configs, state dicts).

* ``unet``: ``UNetSpatioTemporalConditionModel`` <- ``model.diffusion_model.*`` (``diffusers_unet``).
* ``vae``: ``AutoencoderKLTemporalDecoder`` for a ``TemporalAutoencoder`` first stage, ``AutoencoderKL`` for an
  ``AutoencoderKL`` one (the frame-wise decoder) <- encoder + ``quant_conv`` of the concat-latent embedder's VAE,
  decoder of ``first_stage_model``.
* ``image_encoder``: transformers ``CLIPVisionModelWithProjection`` <- the image embedder's OpenCLIP ViT
  (``diffusers_clip``).
* ``feature_extractor`` (``CLIPImageProcessor``: 224, OpenAI CLIP mean/std) and ``scheduler``
  (``EulerDiscreteScheduler``, the released SVD ``scheduler_config.json``): configs only.

Why the pipeline then samples as we do: it encodes the conditioning frame with ``vae.encode(x).latent_dist.mode()``,
unscaled, which is our concat-latent embedder (scale 1.0, posterior mode), so the diffusers VAE's encoder is that
embedder's; it embeds the clean image with ``image_embeds`` (one token) after a kornia-style antialiased resize to
224 (our ``resize="kornia"``); it calls the UNet with ``added_time_ids = (fps - 1, motion_bucket_id,
noise_aug_strength)`` (our ``fps_id = fps - 1``, ``cond_aug``); the scheduler's continuous timestep is
``0.25 ln(sigma)`` (our c_noise), ``v_prediction`` is ``VScalingWithEDMcNoise``, Karras sigmas 0.002..700 with
rho 7 are ``EDMDiscretization`` and the initial noise is scaled by ``sqrt(1 + sigma_max^2)``; guidance zeroes the
image embedding and latent and rises ``linspace(min, max, T)`` over frames (``LinearPredictionGuider``). The
pipeline decodes with ``vae.decode(z, num_frames=...)`` only when the VAE's ``decode`` takes ``num_frames``, so an
``AutoencoderKL`` VAE decodes frame by frame (diffusers logs "Expected types for vae" and goes on).

Not carried by a diffusers folder (``ConversionNotes`` lists the keys):

* the text-tower leftovers of the OpenCLIP image embedder (token/positional embedding, ``ln_final``,
  ``text_projection``, ``logit_scale``), which the image embedding never uses;
* the concat-latent VAE's decoder and ``post_quant_conv`` (``encode`` never uses them); an ``AutoencoderKL`` VAE
  gives them back on import (its decoder), a temporal one does not;
* ``first_stage_model.encoder`` (and ``quant_conv``): diffusers has one VAE encoder and the pipeline uses it for
  the concat latent, so the concat-latent one is written. Our stages fill both from the same autoencoder; the
  notes say whether the dropped copy was identical. On import the first stage gets the diffusers encoder, with
  ``quant_conv`` folded into ``encoder.conv_out`` when the first stage has no quant convs (SVD's layout; a 1x1
  conv after the last conv folds exactly, bitwise when it is the identity this export writes).

Not expressible (ValueError): UNet specs per ``diffusers_unet``; a temporal first stage with ``post_quant_conv``
(diffusers' temporal VAE has none, and folding it into the zero-padded ``conv_in`` is wrong at the borders);
a temporal VAE with ``num_res_blocks > 2`` (diffusers' temporal mid block has ``layers_per_block`` ResBlocks,
sgm's always two; ``num_res_blocks=1`` is written with exact identity blocks, ``diffusers_vae``);
``embed_dim != z_channels``; a CLIP tower transformers cannot represent.

GroupNorm eps: diffusers builds some UNet ResBlock norms with eps 1e-6 (``CrossAttnDownBlockSpatioTemporal``
hard-codes it, ``get_up_block`` does not pass ``resnet_eps`` on); no config key changes that, and no weight can
absorb an eps. A folder loaded as is therefore computes a slightly different UNet: for the tiny test models the
largest difference is 3e-5 to 5e-5 on outputs up to 1.6 to 2.6 (about 2e-5 relative, below bf16 resolution; the
released diffusers SVD differs from sgm in the same way). ``match_sgm_group_norm_eps(pipe.unet)`` after loading
brings it to float rounding (2e-6). The VAE (encode 1e-6, decode 3e-6 to 8e-6) and the image encoder (5e-7,
including the pipeline's resize) have no such difference (tests/scripts/test_export_diffusers.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..conditioners import (
    SVD_INPUT_KEYS,
    ConcatLatentEmbedder,
    FrozenOpenCLIPImagePredictionEmbedder,
    tiny_open_clip_config,
)
from ..conditioners.open_clip_image import CLIP_MEAN, CLIP_STD
from ..latent_diffusion import FIRST_STAGE_PREFIX, UNET_PREFIX
from ..unet import TemporalSpec, UNetSpec, tiny_unet_spec
from ..vae import LATENT_SCALE_FACTOR, AutoencoderKL, TemporalAutoencoder, tiny_autoencoder_spec
from .diffusers_clip import clip_vision_config, from_clip_vision_state_dict, to_clip_vision_state_dict
from .diffusers_unet import from_diffusers_unet_state_dict, to_diffusers_unet_config, to_diffusers_unet_state_dict
from .diffusers_vae import (
    autoencoder_spec_from_config,
    fold_quant_conv,
    from_diffusers_vae_state_dict,
    to_diffusers_temporal_vae_state_dict,
    to_diffusers_vae_state_dict,
    vae_config,
)
from .keys import add_prefix, strip_prefix
from .official import CheckpointSizes

PIPELINE_CLASS = "StableVideoDiffusionPipeline"
CLIP_INPUT_SIZE = 224  # the pipeline resizes PIL images to 224 x 224, whatever the tower's size
# The official (svd.yaml) conditioner order, which import writes.
CLIP_EMBEDDER = f"conditioner.embedders.{SVD_INPUT_KEYS.index('cond_frames_without_noise')}."
CONCAT_EMBEDDER = f"conditioner.embedders.{SVD_INPUT_KEYS.index('cond_frames')}."
CLIP_VISUAL = "open_clip.model.visual."
TEMPORAL_VAE, IMAGE_VAE = "AutoencoderKLTemporalDecoder", "AutoencoderKL"

# stabilityai/stable-video-diffusion-img2vid(-xt) scheduler/scheduler_config.json; sigma range and Karras rho 7
# are RECIPE 3's EDMDiscretization.
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}


@dataclass
class Component:
    """One pipeline component: its library and class (``model_index.json``), config and weights (None: none)."""

    library: Literal["diffusers", "transformers"]
    class_name: str
    config: dict[str, Any]
    state_dict: dict[str, Tensor] | None = None


@dataclass
class ConversionNotes:
    """What a conversion left out (export) or could not provide (import): reason -> full keys, plus warnings."""

    dropped: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def drop(self, reason: str, keys: list[str]) -> None:
        if keys:
            self.dropped.setdefault(reason, []).extend(keys)

    def summary(self) -> str:
        lines = [f"  not carried, {reason}: {len(keys)} keys ({keys[0]}, ...)" for reason, keys in self.dropped.items()]
        return "\n".join(lines + [f"  warning: {w}" for w in self.warnings])


def tiny_diffusers_sizes() -> CheckpointSizes:
    """Test-size SVD layout the pipeline can run: a 224 px CLIP tower (the pipeline resizes PIL images to 224)
    and a VAE with two ResBlocks per level (diffusers' temporal VAE needs them)."""
    clip = tiny_open_clip_config()
    clip["vision_cfg"] = clip["vision_cfg"] | {"image_size": CLIP_INPUT_SIZE, "patch_size": 32}
    return CheckpointSizes(
        unet=dataclasses.replace(tiny_unet_spec(), context_dim=clip["embed_dim"]),
        autoencoder=dataclasses.replace(tiny_autoencoder_spec(), num_res_blocks=2),
        clip_arch=clip,
    )


def image_processor_config(size: int = CLIP_INPUT_SIZE) -> dict[str, Any]:
    """``CLIPImageProcessor`` settings of the released SVD (the pipeline itself only uses its normalisation)."""
    return {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": list(CLIP_MEAN),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(CLIP_STD),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": size},
    }


def unet_spec_from_config(config: Mapping[str, Any]) -> UNetSpec:
    """The ``UNetSpec`` of a diffusers ``UNetSpatioTemporalConditionModel`` config; inverse of
    ``to_diffusers_unet_config`` (ValueError when the config is not one it can produce)."""
    channels = list(config["block_out_channels"])
    levels = len(channels)
    heads = config["num_attention_heads"]
    heads = [heads] * levels if isinstance(heads, int) else list(heads)
    attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    head_level = attn.index(True) if any(attn) else 0
    depth = config.get("transformer_layers_per_block", 1)
    spec = UNetSpec(
        in_channels=config["in_channels"],
        out_channels=config["out_channels"],
        model_channels=channels[0],
        channel_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=config["layers_per_block"],
        attention_resolutions=tuple(2**level for level in range(levels) if attn[level]),
        num_head_channels=channels[head_level] // heads[head_level],
        transformer_depth=depth if isinstance(depth, int) else depth[0],
        context_dim=config["cross_attention_dim"],
        adm_in_channels=config["projection_class_embeddings_input_dim"],
        temporal=TemporalSpec(),
    )
    produced = to_diffusers_unet_config(spec)
    differing = [k for k, v in produced.items() if _plain(config.get(k)) != _plain(v)]
    if differing:
        raise ValueError(f"this diffusers UNet config has no UNetSpec counterpart; differing keys: {differing}")
    return spec


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def _embedder(conditioner: nn.Module, input_key: str) -> tuple[int, nn.Module]:
    keys = [spec.input_key for spec in conditioner.specs]
    if input_key not in keys:
        raise ValueError(
            f"the conditioner has no {input_key!r} embedder (it has {keys}): StableVideoDiffusionPipeline is SVD's "
            "image-to-video layout, export an i2v model"
        )
    index = keys.index(input_key)
    return index, conditioner.embedders[index]


def _check_embedders(clip: nn.Module, concat: nn.Module) -> None:
    """The pipeline embeds one conditioning frame, once, and concatenates the unscaled posterior mode."""
    if not isinstance(clip, FrozenOpenCLIPImagePredictionEmbedder) or (clip.n_cond_frames, clip.n_copies) != (1, 1):
        raise ValueError("the image embedder must be FrozenOpenCLIPImagePredictionEmbedder with one frame, one copy")
    if not isinstance(concat, ConcatLatentEmbedder) or (concat.n_cond_frames, concat.n_copies) != (1, 1):
        raise ValueError("the concat-latent embedder must be ConcatLatentEmbedder with one frame, one copy")
    if concat.scale_factor != 1.0:
        raise ValueError(f"concat latent scale {concat.scale_factor}: the pipeline concatenates unscaled latents")


def _identical(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def to_diffusers_pipeline(
    model: nn.Module, *, num_frames: int, sample_size: int | None = None
) -> tuple[dict[str, Component], ConversionNotes]:
    """The five components of a ``StableVideoDiffusionPipeline`` for ``model`` (``LatentDiffusion`` or
    ``OfficialCheckpointModel``: ``unet``, ``first_stage``, ``conditioner``, official state-dict keys).

    ``num_frames`` becomes the UNet config's default clip length, ``sample_size`` its (latent) default size.
    """
    sd = model.state_dict()
    notes = ConversionNotes()
    unet = model.unet
    unet_config = to_diffusers_unet_config(unet.spec) | {"num_frames": num_frames, "sample_size": sample_size}
    unet_sd = to_diffusers_unet_state_dict(strip_prefix(sd, UNET_PREFIX), spec=unet.spec)

    clip_index, clip = _embedder(model.conditioner, "cond_frames_without_noise")
    concat_index, concat = _embedder(model.conditioner, "cond_frames")
    _check_embedders(clip, concat)
    clip_prefix = f"conditioner.embedders.{clip_index}.open_clip.model."
    visual = clip.open_clip.model.visual
    clip_config = clip_vision_config(visual)
    clip_sd = to_clip_vision_state_dict(strip_prefix(sd, clip_prefix + "visual."))
    notes.drop("OpenCLIP text-tower leftovers", [k for k in sd if k.startswith(clip_prefix) and ".visual." not in k])
    if clip_config["image_size"] != CLIP_INPUT_SIZE:
        notes.warnings.append(
            f"the image encoder takes {clip_config['image_size']} px images but the pipeline resizes PIL images to "
            f"{CLIP_INPUT_SIZE}; call it with a (B, 3, {clip_config['image_size']}, {clip_config['image_size']}) "
            "tensor in [0, 1]"
        )
    if clip.open_clip.resize != "kornia":
        notes.warnings.append("the image embedder resizes with torch; the pipeline resizes as kornia does")

    vae_component = _vae_component(sd, model.first_stage, concat, f"conditioner.embedders.{concat_index}.", notes)
    components = {
        "unet": Component("diffusers", "UNetSpatioTemporalConditionModel", unet_config, unet_sd),
        "vae": vae_component,
        "image_encoder": Component("transformers", "CLIPVisionModelWithProjection", clip_config, clip_sd),
        "feature_extractor": Component("transformers", "CLIPImageProcessor", image_processor_config()),
        "scheduler": Component("diffusers", "EulerDiscreteScheduler", dict(SCHEDULER_CONFIG)),
    }
    return components, notes


def _vae_component(
    sd: Mapping[str, Tensor], first_stage: nn.Module, concat: nn.Module, concat_prefix: str, notes: ConversionNotes
) -> Component:
    concat_vae = strip_prefix(sd, concat_prefix + "encoder.")
    first = strip_prefix(sd, FIRST_STAGE_PREFIX)
    spec = first_stage.spec
    if not isinstance(concat.encoder, AutoencoderKL):
        raise ValueError(f"the concat-latent encoder is a {type(concat.encoder).__name__}; expected AutoencoderKL")
    if concat.encoder.spec != spec:
        raise ValueError(f"the concat-latent VAE ({concat.encoder.spec}) and the first stage ({spec}) differ")
    encoder = {k: v for k, v in concat_vae.items() if k.startswith(("encoder.", "quant_conv."))}
    unused = [concat_prefix + "encoder." + k for k in concat_vae if k not in encoder]
    if isinstance(first_stage, TemporalAutoencoder):
        if first_stage.post_quant_conv is not None:
            raise ValueError(
                "this temporal first stage has a post_quant_conv (quant_convs=True), which diffusers' "
                "AutoencoderKLTemporalDecoder lacks and which cannot be folded into its zero-padded conv_in exactly; "
                "the temporal_decoder stage trains without one (temporal_from_kl(kl, fold_post_quant_conv=True))"
            )
        time_conv = first["decoder.conv_out.time_mix_conv.weight"]
        if tuple(time_conv.shape[2:]) != (3, 1, 1):
            raise ValueError(f"video_kernel_size {tuple(time_conv.shape[2:])}: diffusers hard-codes (3, 1, 1)")
        decoder = {k: v for k, v in first.items() if k.startswith("decoder.")}
        ours = {k: v for k, v in encoder.items() if k.startswith("encoder.")} | decoder
        theirs = to_diffusers_temporal_vae_state_dict(ours)
        theirs |= {k: encoder[k] for k in ("quant_conv.weight", "quant_conv.bias")}
        if first_stage.quant_conv is not None:  # the temporal_decoder stage's layout: the KL encoder as is
            dropped_first = {k: v for k, v in first.items() if k.startswith(("encoder.", "quant_conv."))}
            same = _identical(dropped_first, encoder)
        else:
            dropped_first = {k: v for k, v in first.items() if k.startswith("encoder.")}
            same = _identical(
                fold_quant_conv(strip_prefix(encoder, "encoder."), *_quant(encoder)),
                strip_prefix(dropped_first, "encoder."),
            )
        class_name, temporal = TEMPORAL_VAE, True
    elif isinstance(first_stage, AutoencoderKL):
        decoder = {k: v for k, v in first.items() if k.startswith(("decoder.", "post_quant_conv."))}
        theirs = to_diffusers_vae_state_dict(encoder | decoder)
        dropped_first = {k: v for k, v in first.items() if k.startswith(("encoder.", "quant_conv."))}
        same = _identical(dropped_first, encoder)
        concat_decoder = {k: v for k, v in concat_vae.items() if k not in encoder}
        if _identical(concat_decoder, decoder):
            unused = []  # an AutoencoderKL VAE gives the concat VAE its decoder back on import
        class_name, temporal = IMAGE_VAE, False
    else:
        raise ValueError(f"first stage {type(first_stage).__name__}: expected TemporalAutoencoder or AutoencoderKL")
    notes.drop("concat-latent VAE decoder (encode never uses it)", unused)
    same_text = "identical to the concat-latent encoder written" if same else "DIFFERS from the concat encoder written"
    notes.drop(
        f"first-stage encoder (diffusers has one VAE encoder), {same_text}",
        [FIRST_STAGE_PREFIX + k for k in dropped_first],
    )
    config = vae_config(spec, temporal=temporal, scale_factor=first_stage.scale_factor)
    return Component("diffusers", class_name, config, theirs)


def _quant(encoder: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    return encoder["quant_conv.weight"], encoder["quant_conv.bias"]


def from_diffusers_pipeline(components: Mapping[str, Component]) -> tuple[dict[str, Tensor], ConversionNotes]:
    """Our (official svd / svd_image_decoder layout) state dict from a pipeline's ``unet``, ``vae`` and
    ``image_encoder`` components. The text-tower leftovers, and for a temporal VAE the concat-latent VAE's decoder,
    are absent (the official loaders and ``load_init_weights`` accept that)."""
    missing = [name for name in ("unet", "vae", "image_encoder") if name not in components]
    if missing:
        raise ValueError(f"the pipeline has no {missing}; a StableVideoDiffusionPipeline folder has all three")
    notes = ConversionNotes()
    unet = components["unet"]
    out = add_prefix(
        UNET_PREFIX, from_diffusers_unet_state_dict(unet.state_dict, spec=unet_spec_from_config(unet.config))
    )

    vae = components["vae"]
    if vae.class_name not in (TEMPORAL_VAE, IMAGE_VAE):
        raise ValueError(f"vae class {vae.class_name}: expected {TEMPORAL_VAE} or {IMAGE_VAE}")
    temporal = vae.class_name == TEMPORAL_VAE
    ours = from_diffusers_vae_state_dict(
        vae.state_dict, spec=autoencoder_spec_from_config(vae.config), temporal=temporal
    )
    scale = vae.config.get("scaling_factor", LATENT_SCALE_FACTOR)
    if scale != LATENT_SCALE_FACTOR:
        notes.warnings.append(f"vae scaling_factor {scale}; our models scale latents by {LATENT_SCALE_FACTOR}")
    if temporal:
        encoder = strip_prefix(ours, "encoder.")
        concat = add_prefix("encoder.", encoder) | {k: ours[k] for k in ("quant_conv.weight", "quant_conv.bias")}
        first = add_prefix("encoder.", fold_quant_conv(encoder, *_quant(ours))) | {
            k: v for k, v in ours.items() if k.startswith("decoder.")
        }
    else:
        concat = first = ours
    out |= add_prefix(FIRST_STAGE_PREFIX, first) | add_prefix(CONCAT_EMBEDDER + "encoder.", concat)
    clip = from_clip_vision_state_dict(components["image_encoder"].state_dict)
    return out | add_prefix(CLIP_EMBEDDER + CLIP_VISUAL, clip), notes
