"""Built modules from the composed config: specs, the latent diffusion model, the stage objective, the data config.

The ``_target_``-free counterpart of Hydra instantiation: each builder takes the typed config node it needs
and returns our own objects, so a LightningModule receives built modules (STYLE: no config dicts in modules).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import OmegaConf

from data.captions import CaptionPicker
from data.loader import DatasetConfig
from data.micro_cond import MicroCondConfig, MotionBucketMapping
from data.sources import SourceSpec
from data.stream import MetadataFilter, StreamConfig
from data.video_decode import ClipSpec
from models.activation_checkpointing import apply_activation_checkpointing
from models.conditioners import GeneralConditioner, tiny_open_clip_config
from models.diffusion import Denoiser, EDMSampling, StandardDiffusionLoss, VScalingWithEDMcNoise, VWeighting
from models.latent_diffusion import FIRST_STAGE_PREFIX, LatentDiffusion
from models.unet import TemporalSpec, UNetSpec, VideoUNet
from models.vae import AutoencoderKL, AutoencoderSpec, TemporalAutoencoder, temporal_from_kl
from train.conditioning import CondAugConfig, latent_hw
from train.config import OBJECTIVES
from train.objectives.base import Objective
from train.tasks import ConditionerParts, get_task

TINY_CLIP = "tiny"


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


def clip_arch(cfg: Any) -> str | dict[str, Any]:
    return tiny_open_clip_config() if cfg.model.clip.arch == TINY_CLIP else cfg.model.clip.arch


def unet_spec(cfg: Any) -> UNetSpec:
    """The UNet spec of the stage: the model group's sizes, input channels and vector size from the task."""
    u = _plain(cfg.model.unet)
    task = get_task(cfg.conditioner.task)
    temporal = None
    if u.pop("video"):
        temporal = TemporalSpec(merge_strategy=u["merge_strategy"], merge_factor=u["merge_factor"])
    u.pop("merge_strategy"), u.pop("merge_factor")
    latent = cfg.model.autoencoder.embed_dim
    return UNetSpec(
        in_channels=task.in_channel_factor * latent + task.extra_in_channels,
        out_channels=latent,
        adm_in_channels=task.vector_dim,
        temporal=temporal,
        channel_mult=tuple(u.pop("channel_mult")),
        attention_resolutions=tuple(u.pop("attention_resolutions")),
        **u,
    )


def autoencoder_spec(cfg: Any) -> AutoencoderSpec:
    a = _plain(cfg.model.autoencoder)
    a.pop("temporal_decoder")
    return AutoencoderSpec(**a)


def uses_temporal_decoder(cfg: Any) -> bool:
    """A diffusion stage that decodes with a trained temporal decoder (``stage.init.temporal_decoder_path``, set or
    found by ``train.init_weights.resolve_temporal_decoder``); ``select``: exports from before the key lack it."""
    return (
        bool(OmegaConf.select(cfg, "stage.init.temporal_decoder_path")) and not cfg.model.autoencoder.temporal_decoder
    )


def build_first_stage(cfg: Any) -> AutoencoderKL | TemporalAutoencoder:
    """SVD's temporal autoencoder (``model.autoencoder.temporal_decoder``), the KL one, or, for a stage with a trained
    temporal decoder, the ``temporal_decoder`` stage's layout: the KL encoder and ``quant_conv`` (so latents are
    unchanged) with the video decoder (no ``post_quant_conv``, as diffusers' ``AutoencoderKLTemporalDecoder``)."""
    spec = autoencoder_spec(cfg)
    if cfg.model.autoencoder.temporal_decoder:
        return TemporalAutoencoder(spec)
    kl = AutoencoderKL(spec)
    if not uses_temporal_decoder(cfg):
        return kl
    # Built after the KL one and off the global generator, so every module built next draws the same random
    # weights as in a stage without a temporal decoder (its own weights come from the export).
    with torch.random.fork_rng(devices=[]):
        return TemporalAutoencoder(spec, quant_convs=True, post_quant_conv=False)


def conditioner_parts(cfg: Any) -> ConditionerParts:
    return ConditionerParts(
        clip_arch=clip_arch(cfg),
        clip_pretrained=cfg.model.clip.pretrained,
        ucg_rates=_plain(cfg.conditioner.ucg_rates),
        clip_resize=cfg.conditioner.clip_resize,
        autoencoder=autoencoder_spec(cfg),
        num_frames=cfg.stage.num_frames,
    )


def build_conditioner(cfg: Any) -> GeneralConditioner:
    """The task's conditioner (``TaskSpec.build_conditioner``)."""
    return get_task(cfg.conditioner.task).build_conditioner(conditioner_parts(cfg))


def check_resolution(cfg: Any) -> None:
    """Height and width must land on the latent grid and survive the UNet's downsampling."""
    down = 2 ** (len(cfg.model.autoencoder.ch_mult) - 1)
    if cfg.stage.objective == "diffusion":
        down *= 2 ** (len(cfg.model.unet.channel_mult) - 1)
    latent_hw(cfg.stage.height, cfg.stage.width, down)


def build_latent_diffusion(cfg: Any) -> LatentDiffusion:
    check_resolution(cfg)
    unet = VideoUNet(unet_spec(cfg))
    if cfg.model.activation_checkpointing != "none":
        apply_activation_checkpointing(unet, cfg.model.activation_checkpointing)
    return LatentDiffusion(unet=unet, first_stage=build_first_stage(cfg), conditioner=build_conditioner(cfg))


def build_objective(cfg: Any) -> Objective:
    """The stage's objective with freshly built (random or pretrained-tower) modules; weights come later."""
    kind = cfg.stage.objective
    if kind not in OBJECTIVES:
        raise ValueError(f"stage.objective={kind!r}; choose one of {', '.join(OBJECTIVES)}")
    if kind == "diffusion":
        model = build_latent_diffusion(cfg)
        from train.objectives.diffusion import DiffusionObjective

        return DiffusionObjective(
            model,
            task=cfg.conditioner.task,
            denoiser=Denoiser(VScalingWithEDMcNoise()),
            loss=StandardDiffusionLoss(
                EDMSampling(p_mean=cfg.stage.sigma.p_mean, p_std=cfg.stage.sigma.p_std), loss_weighting=VWeighting()
            ),
            num_frames=cfg.stage.num_frames,
            height=cfg.stage.height,
            width=cfg.stage.width,
            cond_aug=CondAugConfig(p_mean=cfg.stage.cond_aug.p_mean, p_std=cfg.stage.cond_aug.p_std),
        )
    check_resolution(cfg)
    from train.objectives.autoencoder import AutoencoderObjective, TemporalDecoderObjective

    loss = cfg.stage.autoencoder_loss
    common = {
        "loss_type": loss.recon,
        "perceptual_weight": loss.perceptual_weight,
        "vgg_weights": loss.perceptual_weights,
    }
    if kind == "autoencoder":
        return AutoencoderObjective(AutoencoderKL(autoencoder_spec(cfg)), kl_weight=loss.kl_weight, **common)
    # The temporal decoder starts as a copy of a KL autoencoder (init_temporal_decoder loads that one), its
    # post_quant_conv folded into decoder.conv_in so that diffusers' AutoencoderKLTemporalDecoder holds it exactly.
    temporal = temporal_from_kl(AutoencoderKL(autoencoder_spec(cfg)), fold_post_quant_conv=True)
    return TemporalDecoderObjective(temporal, train_decoder=loss.train_decoder, **common)


def init_temporal_decoder(objective: Objective, kl_state: dict[str, Any]) -> None:
    """Load a KL autoencoder's ``first_stage_model.*`` weights and rebuild the temporal decoder from them."""
    kl_weights = {k[len(FIRST_STAGE_PREFIX) :]: v for k, v in kl_state.items() if k.startswith(FIRST_STAGE_PREFIX)}
    if not kl_weights:
        raise ValueError("the temporal decoder stage needs a KL autoencoder (first_stage_model.* keys) to start from")
    source = objective.export_module().first_stage_model
    kl = AutoencoderKL(source.spec)
    kl.load_state_dict(kl_weights, strict=True)
    source.load_state_dict(temporal_from_kl(kl, fold_post_quant_conv=True).state_dict(), strict=True)


def dataset_config(cfg: Any, *, seed: int) -> DatasetConfig:
    """The data/ config of the stage: sources and decoding from the data group, frames and size from the stage."""
    d = cfg.data
    if not d.sources:
        raise ValueError("data.sources is empty: name the shards (see README, Data) or use experiment=demo")
    sources = [SourceSpec(urls=list(s.urls), weight=s.weight, name=s.name) for s in d.sources]
    filters = [
        # f["values"]: DictConfig.values is the mapping method
        MetadataFilter(field=f.field, min=f.min, max=f.max, require=f.require, values=f["values"])
        for f in d.filters
    ]
    clip = ClipSpec(
        num_frames=cfg.stage.num_frames,
        target_fps=d.target_fps,
        size=(cfg.stage.height, cfg.stage.width),
        start=d.start,
        crop=d.crop,
        on_short=d.on_short,
        max_stride=d.max_stride,
    )
    captions = CaptionPicker(
        probabilities=_plain(d.caption_probabilities), fallback_fields=tuple(d.caption_fallback_fields)
    )
    micro = MicroCondConfig(motion=MotionBucketMapping(kind=d.motion_kind, scale=d.motion_scale))
    stream = StreamConfig(seed=seed, shuffle_buffer=d.shuffle_buffer, filters=filters, key_list=d.key_list)
    return DatasetConfig(
        sources=sources, clip=clip, captions=captions, micro=micro, stream=stream, require_json=d.require_json
    )
