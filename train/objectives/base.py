"""What a stage trains, as one interface for the single training loop (``train/module.py``).

An ``Objective`` is an ``nn.Module`` that owns everything a stage needs on the device (networks, frozen parts)
and turns a ``data.batch.Batch`` into a scalar loss. ``export_module()`` is the tree whose ``state_dict()``
becomes the stage export (official key prefixes); ``trainable_parameters()`` is what the optimizer and the EMA
see. All randomness comes from the ``generator`` the loop passes in (a pure function of seed, rank and step, so
a resumed run draws exactly what the uninterrupted run drew).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from data.batch import Batch

Metrics = dict[str, torch.Tensor]


class Objective(nn.Module):
    """Base class: subclasses implement ``forward`` and name what is trained and exported."""

    # Which batch fields the stage consumes ("frames" or "latent_moments"), for clear errors on a wrong data config.
    task: str = "generic"

    def forward(self, batch: Batch, *, generator: torch.Generator) -> tuple[torch.Tensor, Metrics]:
        """-> (scalar loss, detached per-step metrics to log)."""
        raise NotImplementedError

    def export_module(self) -> nn.Module:
        """The module whose ``state_dict()`` (with EMA weights swapped in) is the stage export."""
        raise NotImplementedError

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs the optimizer updates; names are relative to ``export_module()``."""
        for name, param in self.export_module().named_parameters():
            if param.requires_grad:
                yield name, param

    def sampling_inputs(self) -> dict[str, Any]:
        """Static facts the sample-video callback needs (task, frames, size); empty when the stage cannot sample."""
        return {}
