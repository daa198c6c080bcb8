"""Structured-config schemas of ``python -m train`` (registered in Hydra's ConfigStore).

``TrainConfig`` is the whole run; each field is one config group of ``conf/`` (``stage/ model/ conditioner/
data/ trainer/ strategy/ logger/ paths/ debug/``; ``experiment/`` holds deltas over all of them). Hydra merges
the yaml files onto these dataclasses in struct mode, so a misspelled key fails at composition with the valid
keys, and a default lives in exactly one place: here. Choices that OmegaConf cannot type (``Literal``) are
checked by ``validate`` with the valid options in the message. ``+key=value`` lifts struct mode for that key, so
the entry point checks such arguments against these dataclasses before composing (``check_added_keys``) and
``validate`` walks the composed config against them (``check_known_keys``).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from data.micro_cond import MotionBucketMapping
from models.activation_checkpointing import CHECKPOINTING_MODES
from models.unet import TemporalSpec, UNetSpec
from models.vae import AutoencoderSpec
from train.config_keys import check_known_keys
from train.config_logger import (  # noqa: F401  (re-exported: the schema of the logger group)
    EvaluationConfig,
    GenerationSettings,
    LoggerConfig,
    SamplesConfig,
    generation_settings,
)
from train.lora import LoraSchema
from train.sample_inputs import check_sample_inputs
from train.strategy_registry import strategy_names
from train.tasks import TASKS, get_task

OBJECTIVES = ("diffusion", "autoencoder", "temporal_decoder")
MEDIA = ("images", "clips")
WANDB_MODES = ("offline", "online", "disabled")
# stage.trainable_layers: "temporal" = the layers the video UNet adds over the SD 2.1 image UNet (train/module.py).
TRAINABLE_LAYERS = ("all", "temporal")


@dataclass
class PathsConfig:
    """Run layout: ``<root>/<run_name>/<stage.name>/`` holds checkpoints/, export/, samples/, logs/."""

    root: str = "outputs/runs"
    run_name: str = "default"
    data_root: str = "outputs/demo_data"


def spec_config(name: str, spec: type, names: typing.Sequence[str], extra: list[tuple], doc: str) -> type:
    """A schema dataclass with the fields ``names`` of the model spec dataclass ``spec``, their defaults taken from
    it (tuples as lists, which OmegaConf can hold), then the ``extra`` (name, type, field) entries."""
    hints, fields = typing.get_type_hints(spec), {f.name: f for f in dataclasses.fields(spec)}
    entries: list[tuple] = []
    for n in names:
        f, tp = fields[n], hints[n]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if typing.get_origin(tp) is tuple:
            entries.append((n, list[typing.get_args(tp)[0]], field(default_factory=functools.partial(list, default))))
        else:
            entries.append((n, tp, field(default=default)))
    cls = dataclasses.make_dataclass(name, entries + extra)
    cls.__module__, cls.__doc__ = __name__, doc
    return cls


# in_channels, out_channels and adm_in_channels follow the task (train/tasks.py); temporal is the three keys below.
UNetConfig = spec_config(
    "UNetConfig",
    UNetSpec,
    [
        f.name
        for f in dataclasses.fields(UNetSpec)
        if f.name not in ("in_channels", "out_channels", "adm_in_channels", "temporal")
    ],
    [
        # Temporal layers (Stage II on): model.unet.video adds TemporalSpec's layers with these two fields.
        ("video", bool, field(default=False)),
        ("merge_strategy", str, field(default=TemporalSpec.merge_strategy)),
        ("merge_factor", float, field(default=TemporalSpec.merge_factor)),
    ],
    "``models.unet.UNetSpec`` fields (official names) and defaults. in_channels and adm_in_channels follow the task.",
)
# The sizes a config may change, in the order the configs have always listed them; the other fields (double_z,
# resolution, in_channels, out_ch, dropout) keep the spec's values.
AutoencoderConfig = spec_config(
    "AutoencoderConfig",
    AutoencoderSpec,
    ["ch", "ch_mult", "num_res_blocks", "embed_dim", "z_channels", "attn_resolutions"],
    [("temporal_decoder", bool, field(default=False))],
    "``models.vae.AutoencoderSpec`` fields and defaults; ``temporal_decoder`` selects SVD's video decoder.",
)


@dataclass
class ClipModelConfig:
    """OpenCLIP tower: ``arch`` is an open_clip model name (ViT-H-14) or ``tiny`` (random, for tests and the demo)."""

    arch: str = "ViT-H-14"
    pretrained: str | None = None  # an open_clip tag or a local weights file; None leaves the tower random


@dataclass
class ModelConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    clip: ClipModelConfig = field(default_factory=ClipModelConfig)
    activation_checkpointing: str = "none"  # UNet blocks: models.activation_checkpointing.CHECKPOINTING_MODES
    compile: bool = False  # torch.compile the UNet


@dataclass
class ConditionerConfig:
    """The task fixes the conditioner (a ``train.tasks.TaskSpec``): t2i text, t2v text + fps + motion, i2v SVD.
    Each conf/conditioner/ file names its task."""

    task: str = MISSING
    ucg_rates: dict[str, float] = field(default_factory=dict)  # input key -> CFG dropout probability
    clip_resize: str = "kornia"


@dataclass
class SigmaConfig:
    """Training noise levels: log sigma ~ N(p_mean, p_std^2) (RECIPE 5 per stage)."""

    p_mean: float = -1.2
    p_std: float = 1.2


@dataclass
class CondAugConfig:
    """I2V conditioning-frame noise in training: log sigma_aug ~ N(p_mean, p_std^2) (SVD App D.4: -3.0, 0.5);
    drawn by ``train.conditioning.sample_cond_aug``."""

    p_mean: float = -3.0
    p_std: float = 0.5


@dataclass
class OptimConfig:
    """AdamW (RECIPE 5; weight decay, betas and warm-up are unreported, these are our defaults)."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 0


@dataclass
class EMASchema:
    enabled: bool = True
    decay: float = 0.9999
    warmup: bool = True  # decay_n = min(decay, (1 + n) / (10 + n))


@dataclass
class InitConfig:
    """Where the stage's weights come from; see train/init_weights.py for what a mismatch may be."""

    from_stage: str | None = None  # the export of a previous stage of this run
    path: str | None = None  # any checkpoint: a stage export, an official SD 2.1 / SVD file
    first_stage_from_stage: str | None = None  # the VAE from another stage's export (e.g. autoencoder)
    first_stage_path: str | None = None
    # Video diffusion stages decode with this run's temporal decoder export when it exists (null: never), or with
    # temporal_decoder_path (a temporal_decoder stage export; filled from the former when found). init_weights.py.
    temporal_decoder_from_stage: str | None = "temporal_decoder"
    temporal_decoder_path: str | None = None
    keep: list[str] = field(default_factory=list)  # components that keep their built weights: unet, first_stage, ...


@dataclass
class AutoencoderLossSchema:
    recon: str = "l1"
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.0
    perceptual_weights: str | None = None  # a local torchvision vgg16 state dict
    train_decoder: str = "all"  # temporal decoder stage: "temporal" layers only or "all" of the decoder


@dataclass
class StageConfig:
    name: str = MISSING
    objective: str = "diffusion"
    media: str = "images"  # what the stage trains on: "images" or "clips" (video); names the demo shard folder
    num_frames: int = 1
    height: int = 256
    width: int = 256
    max_steps: int = 1000
    sigma: SigmaConfig = field(default_factory=SigmaConfig)
    cond_aug: CondAugConfig = field(default_factory=CondAugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMASchema = field(default_factory=EMASchema)
    init: InitConfig = field(default_factory=InitConfig)
    # fnmatch patterns over the parameter names of the stage's export module; Stage I' step 1 trains
    # only the time embedding: ["model.diffusion_model.time_embed.*"].
    trainable: list[str] = field(default_factory=lambda: ["*"])
    # all | temporal (only the UNet's time_stack / time_mixer / time_pos_embed layers); applied on top of
    # ``trainable``. Frozen parameters get no gradient, no optimizer state and no EMA copy.
    trainable_layers: str = "all"
    autoencoder_loss: AutoencoderLossSchema = field(default_factory=AutoencoderLossSchema)
    lora: LoraSchema = field(default_factory=LoraSchema)  # a peft LoRA on the UNet (train/lora.py)


@dataclass
class SourceSchema:
    urls: list[str] = MISSING
    weight: float = 1.0
    name: str = ""


@dataclass
class FilterSchema:
    field: str = MISSING
    min: float | None = None
    max: float | None = None
    require: bool = False
    values: list[str] | None = None  # categorical: keep samples whose field is one of these (data/stream.py)


@dataclass
class DataConfig:
    """Shards and decoding (data/); frames and size come from the stage."""

    sources: list[SourceSchema] = field(default_factory=list)
    batch_size: int = 1
    num_workers: int = 4
    target_fps: float | None = None
    max_stride: int | None = None
    start: str = "random"
    crop: str = "center"
    on_short: str = "skip"
    shuffle_buffer: int = 100
    filters: list[FilterSchema] = field(default_factory=list)
    global_batch_size: int | None = None  # samples per optimizer step, all ranks: sets trainer.accumulate_grad_batches
    key_list: str | None = None  # keep only the keys listed in this file (a curation subset's keys.txt)
    caption_probabilities: dict[str, float] = field(default_factory=lambda: {"coca": 0.5, "vblip": 0.25, "llm": 0.25})
    caption_fallback_fields: list[str] = field(default_factory=lambda: ["caption"])
    motion_scale: float = MotionBucketMapping.scale  # data/micro_cond.py: the motion_bucket_id mapping
    motion_kind: str = MotionBucketMapping.kind  # "log" or "linear"
    require_json: str = "video"
    pin_memory: bool = False


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    gradient_clip_val: float | None = 1.0
    accumulate_grad_batches: int = 1  # micro-batches per optimizer step (or derived from data.global_batch_size)
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 1000
    keep_checkpoints: int = 2
    max_consecutive_nonfinite: int = 5  # non-finite losses in a row before the run stops (with a checkpoint)
    progress_bar: bool = True


@dataclass
class StrategyConfig:
    name: str = "auto"
    offload_optimizer: bool = False
    offload_params: bool = False
    timeout_s: int = 1800


@dataclass
class DebugConfig:
    """Fault injection for the tests, by batch index: ``nonfinite_loss_at`` replaces the loss by NaN;
    ``nonfinite_grad_at`` keeps the loss finite and makes one trainable parameter's gradient NaN in backward."""

    nonfinite_loss_at: list[int] = field(default_factory=list)
    nonfinite_grad_at: list[int] = field(default_factory=list)


@dataclass
class TrainConfig:
    stage: StageConfig = field(default_factory=StageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    seed: int = 0
    resume: str = "auto"  # auto: newest complete checkpoint of the stage; never; or a checkpoint path


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (called by the entry point and the config tests)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    # ``key: ${required:'what to set'}`` in a yaml: a value the user must give (a yaml cannot merge ``???`` over a
    # schema default); resolving it before it is set fails with the hint (validate resolves the whole config).
    OmegaConf.register_new_resolver("required", _required, replace=True)


def _required(hint: str) -> Any:
    raise ValueError(f"a required value is not set; pass {hint}")


def _choice(value: str, valid: tuple[str, ...], key: str) -> None:
    if value not in valid:
        raise ValueError(f"{key}={value!r} is not valid; choose one of {', '.join(valid)}")


def validate(cfg: Any) -> None:
    """The checks OmegaConf cannot express: unknown keys added with ``+``, unset required values, string choices
    and cross-group consistency."""
    check_known_keys(cfg, TrainConfig)
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (InterpolationResolutionError, MissingMandatoryValue) as err:
        raise ValueError(f"the config is incomplete: {err}") from None
    _choice(cfg.stage.objective, OBJECTIVES, "stage.objective")
    _choice(cfg.stage.media, MEDIA, "stage.media")
    _choice(cfg.conditioner.task, tuple(TASKS), "conditioner.task")
    _choice(cfg.strategy.name, strategy_names(), "strategy.name")  # train/strategy_registry.py
    _choice(cfg.model.activation_checkpointing, CHECKPOINTING_MODES, "model.activation_checkpointing")
    _choice(cfg.logger.wandb_mode, WANDB_MODES, "logger.wandb_mode")
    _choice(cfg.stage.trainable_layers, TRAINABLE_LAYERS, "stage.trainable_layers")
    if cfg.stage.objective == "diffusion":
        video = get_task(cfg.conditioner.task).video
        if video != bool(cfg.model.unet.video):
            raise ValueError(
                f"conditioner.task={cfg.conditioner.task} needs model.unet.video={video}; the stage config sets "
                "both (Stage I: t2i and an image UNet; Stages II/III: t2v or i2v and a video UNet)"
            )
        if not video and cfg.stage.num_frames != 1:
            raise ValueError(f"an image stage trains 1-frame samples; got stage.num_frames={cfg.stage.num_frames}")
    if cfg.stage.max_steps < 1:
        raise ValueError(f"stage.max_steps={cfg.stage.max_steps} must be >= 1")
    if cfg.stage.init.from_stage and cfg.stage.init.path:
        raise ValueError("set only one of stage.init.from_stage and stage.init.path")
    if not cfg.data.sources:
        raise ValueError(
            "data.sources is empty: give the shards, e.g. data.sources='[{urls: [shards/{000000..000099}.tar]}]' "
            "or use experiment=demo"
        )
    check_sample_inputs(cfg)  # logger.samples / logger.evaluation against the task (train/sample_inputs.py)
