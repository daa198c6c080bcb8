"""Activation checkpointing, applied to a built network from outside (torchtitan's ``parallelize`` style).

The UNet's blocks (``input_blocks.N``, ``middle_block``, ``output_blocks.N``) each carry a ``checkpointing``
switch; this module decides which ones recompute their activations in the backward pass. Training code calls
it from the config (all blocks, or a selection to trade memory for speed); the state dict is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from torch import nn

from .unet.unet import TimestepEmbedSequential

# The named selections; the one list of ``model.activation_checkpointing`` choices (train/config.py reads it).
CheckpointingMode = Literal["none", "all", "input", "middle", "output"]
CHECKPOINTING_MODES: tuple[str, ...] = get_args(CheckpointingMode)
BlockSelection = CheckpointingMode | Callable[[str], bool]


def apply_activation_checkpointing(model: nn.Module, blocks: BlockSelection = "all") -> list[str]:
    """Switch checkpointing on for the selected UNet blocks (and off for the others); returns their names.

    ``blocks`` is ``"all"``, ``"none"``, ``"input"``, ``"middle"``, ``"output"`` or a predicate on the block's
    qualified name (e.g. ``lambda name: name.startswith("input_blocks.") and int(name.split(".")[1]) < 4``).
    """
    if isinstance(blocks, str):
        if blocks not in CHECKPOINTING_MODES:
            raise ValueError(f"blocks={blocks!r}; use {', '.join(CHECKPOINTING_MODES)} or a predicate on the name")
        prefix = {"input": "input_blocks", "middle": "middle_block", "output": "output_blocks"}.get(blocks, "")

        def select(name: str) -> bool:
            return blocks == "all" or (blocks != "none" and prefix in name.split("."))
    else:
        select = blocks
    chosen = []
    for name, module in model.named_modules():
        if isinstance(module, TimestepEmbedSequential):
            module.checkpointing = bool(select(name))
            if module.checkpointing:
                chosen.append(name)
    if not chosen and blocks != "none":
        raise ValueError("no UNet block matched; is this model a VideoUNet (or does it contain one)?")
    return chosen
