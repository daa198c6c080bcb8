"""Built modules from the composed config: specs, the latent diffusion model, the stage objective, the data config.

The ``_target_``-free counterpart of Hydra instantiation: each builder takes the typed config node it needs
and returns our own objects, so a LightningModule receives built modules (STYLE: no config dicts in modules).
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from data.captions import CaptionPicker
from data.loader import DatasetConfig
from data.micro_cond import MicroCondConfig, MotionBucketMapping
from data.sources import SourceSpec
from data.stream import MetadataFilter, StreamConfig
from data.video_decode import ClipSpec
from models.activation_checkpointing import apply_activation_checkpointing
from models.conditioners import (
    GeneralConditioner,
    build_sd21_text_conditioner,
    build_svd_conditioner,
    build_text_video_conditioner,
    tiny_open_clip_config,
)
from models.diffusion import Denoiser, EDMSampling, StandardDiffusionLoss, VScalingWithEDMcNoise, VWeighting
from models.latent_diffusion import FIRST_STAGE_PREFIX, LatentDiffusion
from models.unet import TemporalSpec, UNetSpec, VideoUNet
from models.vae import AutoencoderKL, AutoencoderSpec, TemporalAutoencoder, temporal_from_kl
from train.conditioning import CondAugConfig, check_task, latent_hw, vector_dim
from train.objective import Objective

TINY_CLIP = "tiny"


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


def clip_arch(cfg: Any) -> str | dict[str, Any]:
    return tiny_open_clip_config() if cfg.model.clip.arch == TINY_CLIP else cfg.model.clip.arch


def unet_spec(cfg: Any) -> UNetSpec:
    """The UNet spec of the stage: the model group's sizes, input channels and vector size from the task."""
    u = _plain(cfg.model.unet)
    task = check_task(cfg.conditioner.task)
    temporal = None
    if u.pop("video"):
        temporal = TemporalSpec(merge_strategy=u["merge_strategy"], merge_factor=u["merge_factor"])
    u.pop("merge_strategy"), u.pop("merge_factor")
    latent = cfg.model.autoencoder.embed_dim
    return UNetSpec(
        in_channels=2 * latent if task == "i2v" else latent,
        out_channels=latent,
        adm_in_channels=vector_dim(task),
        temporal=temporal,
        channel_mult=tuple(u.pop("channel_mult")),
        attention_resolutions=tuple(u.pop("attention_resolutions")),
        **u,
    )


def autoencoder_spec(cfg: Any) -> AutoencoderSpec:
    a = _plain(cfg.model.autoencoder)
    a.pop("temporal_decoder")
    return AutoencoderSpec(**a)


def build_first_stage(cfg: Any) -> AutoencoderKL | TemporalAutoencoder:
    spec = autoencoder_spec(cfg)
    return TemporalAutoencoder(spec) if cfg.model.autoencoder.temporal_decoder else AutoencoderKL(spec)


def build_conditioner(cfg: Any) -> GeneralConditioner:
    task = check_task(cfg.conditioner.task)
    arch, pretrained = clip_arch(cfg), cfg.model.clip.pretrained
    rates = _plain(cfg.conditioner.ucg_rates)
    if task == "t2i":
        unknown = set(rates) - {"txt"}
        if unknown:
            raise ValueError(f"conditioner.ucg_rates has keys {sorted(unknown)}; the t2i conditioner has only 'txt'")
        return build_sd21_text_conditioner(arch=arch, pretrained=pretrained, ucg_rate=rates.get("txt", 0.0))
    if task == "t2v":
        return build_text_video_conditioner(arch=arch, pretrained=pretrained, ucg_rates=rates)
    return build_svd_conditioner(
        encoder=AutoencoderKL(autoencoder_spec(cfg)),
        clip_arch=arch,
        clip_pretrained=pretrained,
        clip_resize=cfg.conditioner.clip_resize,
        ucg_rates=rates,
    )


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
    if kind not in ("diffusion", "autoencoder", "temporal_decoder"):
        raise ValueError(f"stage.objective={kind!r}; choose diffusion, autoencoder or temporal_decoder")
    if kind == "diffusion":
        model = build_latent_diffusion(cfg)
        from train.objectives.diffusion import DiffusionObjective

        return DiffusionObjective(
            model,
            task=check_task(cfg.conditioner.task),
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
    # The temporal decoder starts as an exact copy of a KL autoencoder (init_temporal_decoder loads that one).
    temporal = temporal_from_kl(AutoencoderKL(autoencoder_spec(cfg)))
    return TemporalDecoderObjective(temporal, train_decoder=loss.train_decoder, **common)


def init_temporal_decoder(objective: Objective, kl_state: dict[str, Any]) -> None:
    """Load a KL autoencoder's ``first_stage_model.*`` weights and rebuild the temporal decoder from them."""
    kl_weights = {k[len(FIRST_STAGE_PREFIX) :]: v for k, v in kl_state.items() if k.startswith(FIRST_STAGE_PREFIX)}
    if not kl_weights:
        raise ValueError("the temporal decoder stage needs a KL autoencoder (first_stage_model.* keys) to start from")
    source = objective.export_module().first_stage_model
    kl = AutoencoderKL(source.spec)
    kl.load_state_dict(kl_weights, strict=True)
    source.load_state_dict(temporal_from_kl(kl).state_dict(), strict=True)


def dataset_config(cfg: Any, *, seed: int) -> DatasetConfig:
    """The data/ config of the stage: sources and decoding from the data group, frames and size from the stage."""
    d = cfg.data
    if not d.sources:
        raise ValueError("data.sources is empty: name the shards (see README, Data) or use experiment=demo")
    sources = [SourceSpec(urls=list(s.urls), weight=s.weight, name=s.name) for s in d.sources]
    filters = [MetadataFilter(field=f.field, min=f.min, max=f.max, require=f.require) for f in d.filters]
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
