"""The builders of the built-in strategies (registered in ``train/strategy_registry.py``), DeepSpeed's config, and
DeepSpeed checkpoint I/O.

Lightning's DeepSpeed precision plugin turns ``LightningModule.clip_gradients`` into a no-op, and a manual-optimization
``Trainer`` refuses ``gradient_clip_val``; so clipping goes into the DeepSpeed config, and the training step asks
``strategy_clips_gradients(name)`` (the spec's ``clips_gradients``) whether to call ``self.clip_gradients`` itself.

DeepSpeed is an optional extra (``pip install '.[deepspeed]'``); it is imported only when a DeepSpeed strategy is built
or a DeepSpeed checkpoint is consolidated. A DeepSpeed checkpoint is a folder (``<name>.ckpt/latest`` plus
``<name>.ckpt/checkpoint/*.pt``); ``AtomicDeepSpeedStrategy`` writes it under a temporary name and renames it when
every rank is done, and ``consolidate_deepspeed_checkpoint`` turns it into one fp32 state dict for exports.
"""

from __future__ import annotations

import importlib
import logging
import os
import uuid
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy

from train.checkpointing import OLD_MARK, TMP_MARK, remove_path, replace_path

DEEPSPEED_PRECISIONS: tuple[str, ...] = ("bf16-mixed", "bf16-true", "16-mixed", "32-true")
CUDA_ACCELERATORS: tuple[str, ...] = ("gpu", "cuda")
log = logging.getLogger(__name__)
_INSTALL_HINT = "install it with pip install '.[deepspeed]' (or pip install deepspeed)"
# Lightning >= 2.1 hands the LightningModule itself to DeepSpeed; older checkpoints carry the wrapper's prefix.
_WRAPPER_PREFIX = "_forward_module."


def _import_deepspeed(purpose: str, module: str = "deepspeed") -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{purpose} needs deepspeed, which is not installed; {_INSTALL_HINT}") from err


def _uses_cuda(accelerator: str) -> bool:
    # "auto" is resolved the way Lightning resolves it for our hardware: CUDA when present, else CPU.
    if accelerator == "auto":
        return torch.cuda.is_available()
    return accelerator in CUDA_ACCELERATORS


def deepspeed_config(
    stage: int,
    *,
    precision: str,
    gradient_clip_val: float | None,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    reduce_bucket_size: int = 500_000_000,
    allgather_bucket_size: int = 500_000_000,
    stage3_prefetch_bucket_size: int = 50_000_000,
    stage3_param_persistence_threshold: int = 100_000,
    stage3_max_live_parameters: int = 1_000_000_000,
    micro_batch_size: int | None = None,
) -> dict[str, Any]:
    """The DeepSpeed JSON config for ZeRO ``stage`` 2 or 3 (https://www.deepspeed.ai/docs/config-json/).

    ``train_micro_batch_size_per_gpu`` (throughput logging only) is left to Lightning, which fills it from the train
    loader; ``gradient_accumulation_steps`` is the LightningModule's (``AtomicDeepSpeedStrategy``). Lightning reads
    the batch size from ``loader.batch_sampler.batch_size``, which fails for a loader built with ``batch_size=None``
    (WebDataset batches inside the dataset): pass ``micro_batch_size`` then.
    """
    if stage not in (2, 3):
        raise ValueError(f"ZeRO stage {stage} is not supported; use 2 (deepspeed_zero2) or 3 (deepspeed_zero3)")
    if precision not in DEEPSPEED_PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported with DeepSpeed; use one of {DEEPSPEED_PRECISIONS}")
    if gradient_clip_val is not None and gradient_clip_val < 0:
        raise ValueError(f"gradient_clip_val must be >= 0 or None (no clipping), got {gradient_clip_val}")
    if offload_params and stage != 3:
        raise ValueError("offload_params needs ZeRO stage 3: use deepspeed_zero3 or set offload_params=False")
    for key, value in (("reduce_bucket_size", reduce_bucket_size), ("allgather_bucket_size", allgather_bucket_size)):
        if value <= 0:
            raise ValueError(f"{key} must be a positive number of elements (DeepSpeed default 5e8), got {value}")
    if micro_batch_size is not None and micro_batch_size <= 0:
        raise ValueError(f"micro_batch_size must be positive or None (taken from the loader), got {micro_batch_size}")

    zero: dict[str, Any] = {
        "stage": stage,
        "contiguous_gradients": True,
        "overlap_comm": True,
        "reduce_scatter": True,
        "reduce_bucket_size": int(reduce_bucket_size),
    }
    if stage == 2:
        zero |= {"allgather_partitions": True, "allgather_bucket_size": int(allgather_bucket_size)}
    else:
        zero |= {
            "stage3_prefetch_bucket_size": int(stage3_prefetch_bucket_size),
            "stage3_param_persistence_threshold": int(stage3_param_persistence_threshold),
            "stage3_max_live_parameters": int(stage3_max_live_parameters),
            # Exports go through consolidate_deepspeed_checkpoint (fp32 master weights), not a gathered 16-bit copy.
            "stage3_gather_16bit_weights_on_model_save": False,
        }
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}

    config: dict[str, Any] = {
        # The optimizer comes from configure_optimizers (torch AdamW), which DeepSpeed calls "untested".
        "zero_allow_untested_optimizer": True,
        "zero_optimization": zero,
        # Explicit so Lightning does not add its own; fp16 ("16-mixed") is filled in by Lightning with loss scaling.
        "bf16": {"enabled": precision.startswith("bf16")},
        "gradient_clipping": float(gradient_clip_val or 0.0),
    }
    if offload_optimizer:
        # DeepSpeed refuses a torch optimizer with optimizer offload unless told otherwise; torch AdamW on the CPU
        # is slower than DeepSpeedCPUAdam but needs no compiled op.
        config["zero_force_ds_cpu_optimizer"] = False
    if micro_batch_size is not None:
        config["train_micro_batch_size_per_gpu"] = int(micro_batch_size)
    return config


def build_ddp(*, accelerator: str, timeout_s: int) -> DDPStrategy:
    """``ddp``: gloo on CPU, nccl on CUDA; ``timeout_s`` bounds every collective."""
    backend = "nccl" if _uses_cuda(accelerator) else "gloo"
    return DDPStrategy(
        process_group_backend=backend, find_unused_parameters=False, timeout=timedelta(seconds=timeout_s)
    )


def build_deepspeed(
    stage: int,
    *,
    accelerator: str,
    precision: str,
    gradient_clip_val: float | None,
    timeout_s: int,
    offload_optimizer: bool,
    offload_params: bool,
    strategy_class: type[AtomicDeepSpeedStrategy] | None = None,
    **config_options: Any,
) -> AtomicDeepSpeedStrategy:
    """``deepspeed_zero2`` / ``deepspeed_zero3``: ``AtomicDeepSpeedStrategy`` with ``deepspeed_config(stage, ...)``
    (``config_options``: its bucket sizes and ``micro_batch_size``). DeepSpeed clips the gradients
    (``gradient_clipping`` from ``gradient_clip_val``). ``strategy_class`` replaces ``AtomicDeepSpeedStrategy`` by a
    subclass (the tests' CPU one, ``tests/train/cpu_deepspeed.py``); its ``requires_cuda`` says whether CUDA is a
    must."""
    strategy_class = strategy_class or AtomicDeepSpeedStrategy
    if strategy_class.requires_cuda and not _uses_cuda(accelerator):
        raise ValueError(
            f"DeepSpeed needs CUDA but accelerator is {accelerator!r}; use strategy ddp on CPU, "
            f"or accelerator gpu on a CUDA machine"
        )
    config = deepspeed_config(
        stage,
        precision=precision,
        gradient_clip_val=gradient_clip_val,
        offload_optimizer=offload_optimizer,
        offload_params=offload_params,
        **config_options,
    )
    _import_deepspeed(f"strategy 'deepspeed_zero{stage}'")
    return strategy_class(config=config, timeout=timedelta(seconds=timeout_s))


def tmp_checkpoint_path(filepath: str | os.PathLike[str], token: str) -> Path:
    """Where a checkpoint for ``filepath`` is written before it is complete: ``<filepath>.tmp-<token>``."""
    path = Path(filepath)
    return path.with_name(f"{path.name}{TMP_MARK}{token}")


def remove_stale_tmp_checkpoints(filepath: str | os.PathLike[str]) -> list[Path]:
    """Delete what an interrupted save of ``filepath`` left behind; returns the deleted paths.

    ``<filepath>.tmp-*`` folders are incomplete by construction. ``<filepath>.old-*`` (a previous checkpoint moved
    aside) is deleted only when ``filepath`` exists: if the save died between the two renames it is the only copy.
    """
    path = Path(filepath)
    if not path.parent.is_dir():
        return []
    stale = sorted(path.parent.glob(f"{path.name}{TMP_MARK}*"))
    if path.exists():
        stale += sorted(path.parent.glob(f"{path.name}{OLD_MARK}*"))
    for item in stale:
        remove_path(item)
    return stale


def frozen_scalars_as_buffers(module: torch.nn.Module) -> list[str]:
    """Turn every frozen 0-dim parameter of ``module`` into a buffer of the same name, tensor and dtype; returns the
    state-dict names of those turned.

    DeepSpeed 0.19.8 broadcasts parameters as bytes (``p.data.view(torch.uint8)``: the engine's ``_broadcast_model``,
    ZeRO-3's partitioning), which raises on a 0-dim tensor, so no engine could be built for our models (the CLIP
    towers' frozen ``logit_scale``). A buffer is neither broadcast nor partitioned, and it is in the state dict under
    the same key with the same shape and values, so checkpoints and exports keep their keys, shapes and bytes; a
    frozen parameter was never in the optimizer. A trainable 0-dim parameter is a ValueError.
    """
    turned: list[str] = []
    for prefix, owner in module.named_modules():
        for name, param in list(owner._parameters.items()):
            if param is None or param.dim() != 0:
                continue
            full = f"{prefix}.{name}" if prefix else name
            if param.requires_grad:
                raise ValueError(
                    f"DeepSpeed cannot broadcast the trainable 0-dim parameter {full}; give it shape (1,), or freeze it"
                )
            del owner._parameters[name]
            owner.register_buffer(name, param.detach())
            turned.append(full)
    return turned


class AtomicDeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` whose checkpoint folder appears under its final name only once every rank wrote it.

    A kill during a save leaves the previous checkpoint of that name (and every other one) loadable. Assumes the
    checkpoint folder is on a filesystem shared by all ranks and DeepSpeed's default synchronous checkpoint engine.
    Before the engine is built, frozen 0-dim parameters become buffers (``frozen_scalars_as_buffers``); after a
    ZeRO-3 load the gathered parameters are released (a DeepSpeed resume bug, see ``load_checkpoint``).
    """

    requires_cuda = True  # only a test subclass on DeepSpeed's CPU accelerator says otherwise

    def _setup_model_and_optimizer(self, model: Any, optimizer: Any, lr_scheduler: Any = None) -> Any:
        turned = frozen_scalars_as_buffers(model)
        if turned:
            log.info("frozen 0-dim parameters kept as buffers for DeepSpeed (same state-dict keys): %s", turned)
        return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only)
        if self.zero_stage_3:
            # DeepSpeed 0.19.8: a ZeRO-3 load leaves parameters gathered, so the fetch trace recorded in the first step
            # after it does not match the next step ("tracing error ... expected the next N parameters in the
            # parameter fetch queue", deepspeedai/DeepSpeed#3599) and the resumed run dies at its second step.
            # Releasing them gives the first step the state every later step starts from.
            self.deepspeed_engine.empty_partition_cache()
        return checkpoint

    def _format_batch_size_and_grad_accum_config(self) -> None:
        # Lightning fills gradient_accumulation_steps from Trainer(accumulate_grad_batches), which must be 1 under
        # manual optimization; the LightningModule accumulates itself (train/accumulation.py) and calls the engine's
        # backward and step on every micro-batch, so the engine is told its count and finds the boundary itself.
        self.config.pop("gradient_accumulation_steps", None)
        super()._format_batch_size_and_grad_accum_config()
        self.config["gradient_accumulation_steps"] = int(getattr(self.lightning_module, "accumulate_grad_batches", 1))

    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any | None = None) -> None:
        final = Path(self.broadcast(str(filepath)))
        token = self.broadcast(uuid.uuid4().hex[:8])
        tmp = tmp_checkpoint_path(final, token)
        if self.is_global_zero:
            remove_stale_tmp_checkpoints(final)
        self.barrier("atomic_deepspeed_save_start")
        super().save_checkpoint(checkpoint, str(tmp), storage_options)
        # Every rank has written its shards (DeepSpeed also ends its save with a barrier; this one is ours to rely on).
        self.barrier("atomic_deepspeed_save_written")
        if self.is_global_zero:
            replace_path(tmp, final)
        # No rank may read, remove or overwrite the checkpoint before it has its final name.
        self.barrier("atomic_deepspeed_save_renamed")


def consolidate_deepspeed_checkpoint(
    checkpoint_dir: str | os.PathLike[str], *, tag: str | None = None
) -> dict[str, torch.Tensor]:
    """The full fp32 state dict of the LightningModule saved in a ZeRO-2 or ZeRO-3 checkpoint folder.

    ``checkpoint_dir`` is the folder Lightning saved (``<name>.ckpt/``, holding ``latest`` and the tag folder);
    ``tag`` defaults to the one named in ``latest``. Parameters are rebuilt from the fp32 master weights in the
    optimizer shards, so they are not rounded to bf16; keys match ``module.state_dict()``. Runs on CPU, on one
    process, whatever the world size of the run that saved it.
    """
    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise ValueError(
            f"{path} is not a folder; a DeepSpeed checkpoint is the folder Lightning saved (<name>.ckpt/ holding "
            f"'latest'). A single-file checkpoint needs no consolidation: torch.load it"
        )
    if tag is None and not (path / "latest").is_file():
        raise ValueError(
            f"{path} has no 'latest' file naming the checkpoint tag; pass tag= (Lightning uses 'checkpoint'), or "
            f"check that the save completed (a '{TMP_MARK}*' folder is an interrupted save)"
        )
    zero_to_fp32 = _import_deepspeed("consolidating a DeepSpeed checkpoint", "deepspeed.utils.zero_to_fp32")
    state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix(_WRAPPER_PREFIX)
        # Frozen parameters and buffers come from the module copy, which DeepSpeed keeps in bf16 under bf16.
        out[name] = value.float() if value.is_floating_point() else value
    return out
