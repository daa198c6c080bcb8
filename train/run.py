"""One stage from a composed config: build, initialise (or resume), fit, export."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.environments import SLURMEnvironment

from train.accumulation import accumulation_steps
from train.builders import build_objective, dataset_config
from train.checkpointing import DiskFullError, PeriodicCheckpoint, RunFolderError
from train.config import validate
from train.datamodule import StreamDataModule
from train.export import check_export_run_id, decoder_meta, export_dir, resolve_weights_file, stage_dir, write_export
from train.init_weights import resolve_temporal_decoder, temporal_first_stage_source
from train.lora import attach_lora
from train.module import LoopSettings, OptimSettings, StageModule
from train.preemption import PreemptionCheckpoint
from train.run_folder import METRICS_FILE, USER_ERROR_EXIT, prepare_stage_folder
from train.strategy_registry import build_strategy, get_strategy, strategy_clips_gradients

log = logging.getLogger(__name__)


def init_source(cfg: Any, *, from_stage: str | None, path: str | None, what: str) -> Path | None:
    """The weights file an init names; a missing one is an error naming the stage that should have written it."""
    if from_stage:
        folder = stage_dir(cfg.paths, from_stage) / "export"
        weights = resolve_weights_file(folder)
        if not weights.exists():
            raise ValueError(
                f"{what}: {weights} does not exist. Stage '{from_stage}' writes it when it finishes; run "
                f"`python -m train stage={from_stage} paths.run_name={cfg.paths.run_name} ...` first, or point "
                f"{what.replace('from_stage', 'path')} at a checkpoint file"
            )
        check_export_run_id(folder)
        return weights
    if path:
        from models.checkpoints.diffusers_folder import is_diffusers_folder

        if is_diffusers_folder(path):  # init_weights reads and converts the whole pipeline folder
            return Path(path)
        weights = resolve_weights_file(path)
        if not weights.exists():
            raise ValueError(f"{what.replace('from_stage', 'path')}={path}: no such checkpoint file or export folder")
        if Path(path).is_dir():
            check_export_run_id(path)
        return weights
    return None


def initialise(cfg: Any, objective: Any) -> None:
    init = cfg.stage.init
    source = init_source(cfg, from_stage=init.from_stage, path=init.path, what="stage.init.from_stage")
    first_stage = init_source(
        cfg,
        from_stage=init.first_stage_from_stage,
        path=init.first_stage_path,
        what="stage.init.first_stage_from_stage",
    )
    # A video stage with a temporal decoder export takes its first stage (KL encoder + video decoder) from there.
    first_stage = temporal_first_stage_source(cfg, source=source, first_stage=first_stage)
    if source is None and first_stage is None:
        if init.keep:
            log.info("no init weights: the model starts as built (stage.init.keep=%s)", list(init.keep))
            return
        raise ValueError(
            "the stage has no init weights: set stage.init.from_stage, stage.init.path, or stage.init.keep=[unet, "
            "first_stage, conditioner] to train from the built (random or pretrained-tower) weights"
        )
    if cfg.stage.objective == "temporal_decoder":
        from models.checkpoints import load_state_dict
        from train.builders import init_temporal_decoder

        init_temporal_decoder(objective, load_state_dict(first_stage or source))
        print(f"[init] temporal decoder from the KL autoencoder in {first_stage or source}", flush=True)
        return
    from train.init_weights import load_init_weights
    from train.tasks import get_task

    load_init_weights(
        objective.export_module(),
        source if source is not None else {},
        keep=list(init.keep),
        first_stage_source=str(first_stage) if first_stage is not None else None,
        adapt_source=get_task(cfg.conditioner.task).adapt_init,
    )


def build_loggers(cfg: Any, folder: Path) -> list[Any]:
    loggers: list[Any] = []
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if cfg.logger.csv:
        loggers.append(pl.loggers.CSVLogger(save_dir=str(logs), name="csv", version=""))
    if cfg.logger.wandb and cfg.logger.wandb_mode != "disabled":
        loggers.append(
            pl.loggers.WandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                name=f"{cfg.paths.run_name}/{cfg.stage.name}",
                save_dir=str(logs),
                offline=cfg.logger.wandb_mode == "offline",
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    return loggers


def build_callbacks(cfg: Any, folder: Path) -> list[pl.Callback]:
    checkpoints = PeriodicCheckpoint(
        folder / "checkpoints", every_n_steps=cfg.trainer.checkpoint_every_n_steps, keep=cfg.trainer.keep_checkpoints
    )
    callbacks: list[pl.Callback] = [checkpoints, PreemptionCheckpoint(checkpoints)]
    s = cfg.logger.samples
    sharded = get_strategy(cfg.strategy.name).shards_weights
    if s.every_n_steps > 0 and sharded:
        log.warning("logger.samples is ignored under %s (rank 0 alone holds no full weights)", cfg.strategy.name)
    elif s.every_n_steps > 0 and cfg.stage.objective == "diffusion":
        from train.callbacks.sample_videos import SampleVideos

        callbacks.append(SampleVideos.from_config(s))
    e = cfg.logger.evaluation
    if e.every_n_steps > 0 and sharded:
        log.warning("logger.evaluation is ignored under %s (rank 0 alone holds no full weights)", cfg.strategy.name)
    elif e.every_n_steps > 0 and cfg.stage.objective == "diffusion":
        from train.callbacks.evaluate_videos import EvaluateVideos

        callbacks.append(EvaluateVideos.from_config(e))
    return callbacks


def build_trainer(cfg: Any, folder: Path) -> pl.Trainer:
    t = cfg.trainer
    strategy = build_strategy(
        cfg.strategy.name,
        accelerator=t.accelerator,
        gradient_clip_val=t.gradient_clip_val,
        precision=t.precision,
        offload_optimizer=cfg.strategy.offload_optimizer,
        offload_params=cfg.strategy.offload_params,
        timeout_s=cfg.strategy.timeout_s,
    )
    checkpoint_io = get_strategy(cfg.strategy.name).checkpoint_io
    plugins: list[Any] = [checkpoint_io()] if checkpoint_io is not None else []
    if SLURMEnvironment.detect():
        # One requeue mechanism (train/preemption.py), not Lightning's hpc_ckpt files beside ours.
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        precision=t.precision,
        strategy=strategy,
        plugins=plugins,
        max_steps=cfg.stage.max_steps,
        max_epochs=-1,
        logger=build_loggers(cfg, folder) or False,
        callbacks=build_callbacks(cfg, folder),
        enable_checkpointing=False,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=str(folder),
        num_sanity_val_steps=0,
    )


def run(cfg: DictConfig) -> int:
    """Train one stage; returns the process exit code (2: a folder or disk problem, said in one line)."""
    # The frozen VAE and text/image towers are in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    validate(cfg)
    folder = stage_dir(cfg.paths, cfg.stage.name)
    try:
        resume = prepare_stage_folder(folder, resume=cfg.resume, root=str(cfg.paths.root))
        # before config.yaml is written, so that it names the decoder used; a resumed stage keeps its decoder
        resolve_temporal_decoder(cfg, resumed=folder if resume is not None else None)
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        return fit_stage(cfg, folder, resume)
    except (RunFolderError, DiskFullError) as err:
        print(f"[error] {err}", file=sys.stderr, flush=True)
        return USER_ERROR_EXIT


def fit_stage(cfg: DictConfig, folder: Path, resume: Path | None) -> int:
    """Build, initialise or resume, fit and export into the prepared stage ``folder``."""
    torch.manual_seed(cfg.seed)  # built weights (random towers in tiny configs) are a function of the seed
    objective = build_objective(cfg)
    if resume is None or cfg.stage.lora.rank:  # a LoRA checkpoint holds no base weights: the base loads first
        initialise(cfg, objective)
    if resume is not None:
        print(f"[resume] {resume}", flush=True)
    lora = attach_lora(cfg, objective)  # None without stage.lora.rank (train/lora.py)
    trainer = build_trainer(cfg, folder)
    if lora is not None:
        trainer.callbacks.append(lora.checkpoints())
    accumulation = accumulation_steps(
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        global_batch_size=cfg.data.global_batch_size,
        batch_size=cfg.data.batch_size,
        world_size=trainer.num_nodes * trainer.num_devices,
    )
    module = StageModule(
        objective,
        optim=OptimSettings(
            lr=cfg.stage.optim.lr,
            betas=tuple(cfg.stage.optim.betas),
            weight_decay=cfg.stage.optim.weight_decay,
            eps=cfg.stage.optim.eps,
            warmup_steps=cfg.stage.optim.warmup_steps,
        ),
        loop=LoopSettings(
            seed=cfg.seed,
            gradient_clip_val=cfg.trainer.gradient_clip_val,
            accumulate_grad_batches=accumulation,
            clip_in_strategy=strategy_clips_gradients(cfg.strategy.name),
            max_consecutive_nonfinite=cfg.trainer.max_consecutive_nonfinite,
            ema_decay=cfg.stage.ema.decay if cfg.stage.ema.enabled else None,
            ema_warmup=cfg.stage.ema.warmup,
            trainable=tuple(cfg.stage.trainable),
            trainable_layers=cfg.stage.trainable_layers,
            nonfinite_loss_at=tuple(cfg.debug.nonfinite_loss_at),
            nonfinite_grad_at=tuple(cfg.debug.nonfinite_grad_at),
            metrics_file=str(folder / METRICS_FILE),
        ),
        stage_dir=folder,
    )
    if cfg.model.compile and cfg.stage.objective == "diffusion":
        objective.model.unet.compile()  # in place: parameter names (checkpoints, exports) stay the same
    datamodule = StreamDataModule(
        dataset_config(cfg, seed=cfg.seed),
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        pin_memory=cfg.data.pin_memory,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    if module.stop_reason:
        print(f"[stopped] {module.stop_reason}", file=sys.stderr, flush=True)
        return 1
    if getattr(module, "preempted", None):
        return 0  # checkpointed and requeued: the next job resumes and exports
    if trainer.global_step < cfg.stage.max_steps:
        print(f"[interrupted] at step {trainer.global_step} of {cfg.stage.max_steps}; resume=auto continues",
              file=sys.stderr, flush=True)  # fmt: skip
        return 1
    if lora is None:
        state, extra = module.export_state_dict(), {}  # every rank: a collective under ZeRO-3
    else:
        from train.lora_export import export_lora

        state, extra = export_lora(module, lora)  # lora.safetensors, and the merged model with export_merged
    if trainer.is_global_zero:
        meta = {
            "stage": cfg.stage.name,
            "objective": cfg.stage.objective,
            "task": cfg.conditioner.task,
            "step": trainer.global_step,
            "num_frames": cfg.stage.num_frames,
            "height": cfg.stage.height,
            "width": cfg.stage.width,
            "ema": cfg.stage.ema.enabled,
            "run_id": module.run_id,
            **decoder_meta(cfg),
            **({"lora": lora.meta()} if lora is not None else {}),
        }
        out = write_export(export_dir(cfg.paths, cfg.stage.name), state, config=cfg, meta=meta, extra=extra)
        print(f"[export] {out}", flush=True)
    return 0
