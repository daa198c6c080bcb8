"""The training strategies, one ``StrategySpec`` each, in one registry: ``strategy.name`` picks one.

| name | builds | who clips gradients | weights sharded | checkpoints |
|---|---|---|---|---|
| ``auto`` | Lightning's choice (single device) | the LightningModule | no | ``AtomicCheckpointIO`` files |
| ``ddp`` | ``DDPStrategy``: gloo on CPU, nccl on CUDA | the LightningModule | no | ``AtomicCheckpointIO`` files |
| ``deepspeed_zero2`` | ``AtomicDeepSpeedStrategy``, ZeRO stage 2 | DeepSpeed | no | DeepSpeed folders |
| ``deepspeed_zero3`` | ``AtomicDeepSpeedStrategy``, ZeRO stage 3 | DeepSpeed | yes | DeepSpeed folders |

The config's choices (``train/config.py`` validate), ``train/run.py`` (trainer, checkpoint plugins, clipping owner,
the callbacks that need full weights on rank 0) and ``build_strategy`` read the spec; nothing else branches on a
strategy name. A new strategy is one ``register_strategy(StrategySpec(...))`` plus ``conf/strategy/<name>.yaml``
(``name: <name>``). Lightning, DeepSpeed and the builders in ``train/strategies.py`` are imported only when a
strategy is built, so the config schema can read this registry without loading a training framework.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class StrategyOptions:
    """What a builder gets: the trainer's accelerator, precision and clip value, the collective timeout, and the
    ``strategy.*`` switches. ``deepspeed`` holds extra ``deepspeed_config`` keyword arguments (bucket sizes,
    ``micro_batch_size``); only strategies with ``StrategySpec.zero_options`` read it and the offload switches."""

    accelerator: str
    precision: str
    gradient_clip_val: float | None
    timeout_s: int = 1800
    offload_optimizer: bool = False
    offload_params: bool = False
    deepspeed: dict[str, Any] = field(default_factory=dict)

    def keywords(self) -> dict[str, Any]:
        """The fields as keyword arguments, ``deepspeed``'s entries flattened in (``build_deepspeed`` takes them)."""
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "deepspeed"}
        return plain | self.deepspeed


@dataclass(frozen=True)
class StrategySpec:
    """One training strategy.

    - ``build``: ``StrategyOptions`` -> the ``Trainer(strategy=...)`` argument (a ``Strategy`` or a name).
    - ``clips_gradients``: the strategy clips gradients itself (DeepSpeed's ``gradient_clipping``), so the training
      step must not call ``self.clip_gradients`` (Lightning's DeepSpeed precision plugin makes it a no-op anyway).
    - ``shards_weights``: rank 0 alone holds no full weights, so callbacks that generate with the model (samples,
      evaluation) are left out.
    - ``checkpoint_io``: a factory of the ``CheckpointIO`` plugin that writes checkpoint files, or None when the
      strategy writes its own checkpoints (DeepSpeed folders, atomic through ``AtomicDeepSpeedStrategy``).
    - ``consolidate``: a saved checkpoint -> the full fp32 state dict of the LightningModule, for a strategy whose
      checkpoints are not one loadable file (None: ``torch.load`` the file).
    - ``zero_options``: the builder reads ``offload_*`` and ``StrategyOptions.deepspeed``; others warn when set.
    - ``ddp_buckets_from``: the world size from which the strategy holds DDP's gradient buckets (a second full copy
      of the trainable gradients; the planner counts it), None for never.
    """

    name: str
    build: Callable[[StrategyOptions], Any]
    clips_gradients: bool = False
    shards_weights: bool = False
    checkpoint_io: Callable[[], Any] | None = None
    consolidate: Callable[[str | os.PathLike[str]], dict[str, Any]] | None = None
    zero_options: bool = False
    ddp_buckets_from: int | None = None


STRATEGY_SPECS: dict[str, StrategySpec] = {}


def register_strategy(spec: StrategySpec) -> StrategySpec:
    """Add ``spec`` under ``spec.name``; ValueError when the name is taken (unregister it first)."""
    if spec.name in STRATEGY_SPECS:
        raise ValueError(f"strategy {spec.name!r} is already registered; unregister_strategy it first")
    STRATEGY_SPECS[spec.name] = spec
    return spec


def unregister_strategy(name: str) -> StrategySpec:
    """Remove and return the spec of ``name`` (tests that register a toy strategy clean up with this)."""
    return STRATEGY_SPECS.pop(get_strategy(name).name)


def strategy_names() -> tuple[str, ...]:
    """The registered names, in registration order: the valid values of ``strategy.name``."""
    return tuple(STRATEGY_SPECS)


def get_strategy(name: str) -> StrategySpec:
    """The spec of ``name``; ValueError naming the registered ones otherwise."""
    spec = STRATEGY_SPECS.get(name)
    if spec is None:
        raise ValueError(f"Unknown strategy {name!r}; choose one of {list(STRATEGY_SPECS)}")
    return spec


def strategy_clips_gradients(name: str) -> bool:
    """True when the strategy clips gradients itself, so the training step must not call ``self.clip_gradients``."""
    return get_strategy(name).clips_gradients


def build_strategy(name: str, **options: Any) -> Any:
    """The ``Trainer(strategy=...)`` argument for ``name``; ``options`` are the fields of ``StrategyOptions``.

    ``gradient_clip_val`` is used only by strategies that clip (see ``strategy_clips_gradients``); the others leave
    clipping to the LightningModule. ``timeout_s`` bounds every collective (a hung rank fails).
    """
    spec = get_strategy(name)
    opts = StrategyOptions(**options)
    if opts.timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {opts.timeout_s}")
    if not spec.zero_options and (opts.offload_optimizer or opts.offload_params or opts.deepspeed):
        from pytorch_lightning.utilities import rank_zero_warn

        rank_zero_warn(
            f"offload_optimizer, offload_params and deepspeed options only apply to DeepSpeed; ignored for {name!r}"
        )
    return spec.build(opts)


# The built-in strategies. Their builders import Lightning (and DeepSpeed) when called, not when this module loads.


def _atomic_checkpoint_io() -> Any:
    from train.checkpointing import AtomicCheckpointIO

    return AtomicCheckpointIO()


def _build_auto(options: StrategyOptions) -> str:
    return "auto"


def _build_ddp(options: StrategyOptions) -> Any:
    from train.strategies import build_ddp

    return build_ddp(accelerator=options.accelerator, timeout_s=options.timeout_s)


def _deepspeed_spec(stage: int) -> StrategySpec:
    def build(options: StrategyOptions) -> Any:
        from train.strategies import build_deepspeed

        return build_deepspeed(stage, **options.keywords())

    def consolidate(checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any]:
        from train.strategies import consolidate_deepspeed_checkpoint

        return consolidate_deepspeed_checkpoint(checkpoint_dir)

    return StrategySpec(
        name=f"deepspeed_zero{stage}",
        build=build,
        clips_gradients=True,
        shards_weights=stage == 3,
        checkpoint_io=None,
        consolidate=consolidate,
        zero_options=True,
    )


# Lightning's auto is one device, or DDP on several.
register_strategy(StrategySpec("auto", _build_auto, checkpoint_io=_atomic_checkpoint_io, ddp_buckets_from=2))
register_strategy(StrategySpec("ddp", _build_ddp, checkpoint_io=_atomic_checkpoint_io, ddp_buckets_from=1))
register_strategy(_deepspeed_spec(2))
register_strategy(_deepspeed_spec(3))
