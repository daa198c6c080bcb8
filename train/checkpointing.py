"""Training checkpoints that survive a kill: atomic writes, periodic saves, and finding where to resume.

A checkpoint is written to a temporary name in the same folder and renamed when complete (``os.replace`` is
atomic on POSIX), so a kill during a save leaves the previous checkpoint intact and no half-written file under a
real name. Files are ``step_<global step>.ckpt``; ``resume=auto`` takes the newest complete one. Loading uses
``weights_only=True``: a checkpoint holds tensors, numbers, strings and dicts, never pickled objects.

``replace_path`` is the same idea for folders (DeepSpeed checkpoints, stage exports, diffusers pipelines), which
cannot be renamed over an existing folder in one step: the old one is moved aside first and deleted last.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from models.checkpoints.safe_load import fsync_dir

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"^step_(\d+)\.ckpt$")
TMP_MARK = ".tmp-"
OLD_MARK = ".old-"


def remove_path(path: Path) -> None:
    """Delete a file, a link (not its target) or a folder tree; nothing when ``path`` does not exist."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def replace_path(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move the complete ``src`` (file or folder) to ``dst``, in the same folder, then fsync that folder.

    A new ``dst`` is one atomic rename. An existing ``dst`` (folder, file or link) cannot be swapped atomically with
    a folder, so it is renamed to ``<dst>.old-<token>`` first and deleted only after ``src`` has taken its name: at
    every instant a complete copy exists under ``dst`` or ``<dst>.old-*``.
    """
    src_path, dst_path = Path(src), Path(dst)
    if not src_path.exists():
        raise FileNotFoundError(
            f"{src_path} (to rename to {dst_path.name}) does not exist; was it written on this filesystem?"
        )
    if not (dst_path.exists() or dst_path.is_symlink()):
        os.replace(src_path, dst_path)
    else:
        aside = dst_path.with_name(f"{dst_path.name}{OLD_MARK}{uuid.uuid4().hex[:8]}")
        os.replace(dst_path, aside)
        os.replace(src_path, dst_path)
        remove_path(aside)
    fsync_dir(dst_path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to ``<name>.tmp-<pid>``, fsync, rename; torch.load with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def checkpoint_step(path: Path) -> int | None:
    match = CKPT_RE.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints (files, or DeepSpeed folders) of ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if checkpoint_step(p) is not None and TMP_MARK not in p.name]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def resolve_resume(resume: str, folder: Path) -> Path | None:
    """``auto``: the newest complete checkpoint in ``folder`` (None when there is none); ``never``; or a path."""
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(folder)
        return found[-1] if found else None
    path = Path(resume)
    if not path.exists():
        raise ValueError(f"resume={resume!r}: no such checkpoint; use resume=auto, resume=never or an existing path")
    return path


class PeriodicCheckpoint(pl.Callback):
    """Save every ``every_n_steps`` optimizer steps and at the end; keep the newest ``keep`` checkpoints."""

    def __init__(self, folder: Path, *, every_n_steps: int, keep: int = 2) -> None:
        if every_n_steps < 1 or keep < 1:
            raise ValueError(f"checkpoint_every_n_steps={every_n_steps} and keep_checkpoints={keep} must be >= 1")
        self.folder = Path(folder)
        self.every_n_steps = every_n_steps
        self.keep = keep
        self._last_saved: int | None = None

    def save(self, trainer: pl.Trainer) -> Path:
        step = trainer.global_step
        path = self.folder / f"step_{step:09d}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        self._last_saved = step
        if trainer.is_global_zero:
            for old in list_checkpoints(self.folder)[: -self.keep]:
                remove_path(old)
        return path

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_saved:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_saved and getattr(pl_module, "stop_reason", None) is None:
            self.save(trainer)
