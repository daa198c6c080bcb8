"""Training checkpoints that survive a kill: atomic writes, periodic saves, and finding where to resume.

A checkpoint is written to a temporary name in the same folder and renamed when complete (``os.replace`` is
atomic on POSIX), so a kill during a save leaves the previous checkpoint intact and no half-written file under a
real name. Files are ``step_<global step>.ckpt``; ``resume=auto`` takes the newest complete one. Loading uses
``weights_only=True``: a checkpoint holds tensors, numbers, strings and dicts, never pickled objects.

``replace_path`` is the same idea for folders (DeepSpeed checkpoints, stage exports, diffusers pipelines), which
cannot be renamed over an existing folder in one step: the old one is moved aside first and deleted last.

What a killed or failed save leaves behind is dealt with at the next start of the stage: ``.tmp-``/``.old-``
leftovers are removed (``remove_stale_temporaries``), a newest checkpoint that does not load is renamed
``.corrupt`` and ``resume=auto`` falls back to the one before (``resolve_resume``), and a full disk is one line
naming the file and its size (``DiskFullError``) with the temporary file already gone.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
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
CORRUPT_SUFFIX = ".corrupt"
# What a killed save of a checkpoint (file or DeepSpeed folder, periodic or non-finite) leaves in checkpoints/.
STALE_RE = re.compile(r"^(?:nonfinite_)?step_\d+\.ckpt(?P<mark>\.tmp-|\.old-)[0-9A-Za-z]+$")
# torch's zip writer reports a failed write (a full disk, mostly) as a RuntimeError without an errno.
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed")
_DISK_FULL_TEXT = ("No space left on device", "StorageFull", "Disk quota exceeded")


class RunFolderError(ValueError):
    """The stage folder cannot be used as it is (not writable, no checkpoint loads); the message says the fix."""


class DiskFullError(OSError):
    """The disk filled up while a checkpoint or an export was written; the half-written copy is already gone."""

    def __str__(self) -> str:
        return str(self.strerror)  # the one line, without OSError's "[Errno 28]" prefix


def tensor_bytes(obj: object) -> int:
    """Bytes of the tensors in a (nested) checkpoint: about what its file needs on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a write that failed for lack of space (errno, torch's zip writer or safetensors' text)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return any(t in text for t in _DISK_FULL_TEXT) or (
        isinstance(err, RuntimeError) and any(t in text for t in _TORCH_WRITE_FAILED)
    )


def disk_full_error(path: Path, nbytes: int) -> DiskFullError:
    """The one-line message of a full disk: the file, what it needs and what is free there."""
    try:
        free = f", {shutil.disk_usage(path.parent).free / 1e9:.2f} GB free there"
    except OSError:
        free = ""
    return DiskFullError(
        errno.ENOSPC,
        f"No space left on device while writing {path} (needs about {nbytes / 1e9:.2f} GB{free}); free space or "
        "move paths.root, then rerun with resume=auto",
    )


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
        except (OSError, RuntimeError) as err:
            if is_disk_full(err):
                raise disk_full_error(path, tensor_bytes(checkpoint)) from None
            raise
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


def remove_stale_temporaries(folder: Path, *, pattern: re.Pattern[str] = STALE_RE) -> list[Path]:
    """Delete what killed saves left in ``folder`` (``step_N.ckpt.tmp-*`` files or folders); returns what went.

    Only names that ``pattern`` matches (its group ``mark`` is ``.tmp-`` or ``.old-``), never a complete checkpoint:
    ``step_N.ckpt.old-*`` (a checkpoint moved aside by ``replace_path``) is deleted when ``step_N.ckpt`` exists and
    renamed back to it when not, since then the save died between the two renames and it is the only copy.
    """
    if not Path(folder).is_dir():
        return []
    removed: list[Path] = []
    for item in sorted(Path(folder).iterdir()):
        match = pattern.match(item.name)
        if match is None:
            continue
        final = item.with_name(item.name.split(match.group("mark"))[0])
        if match.group("mark") == OLD_MARK and not (final.exists() or final.is_symlink()):
            os.replace(item, final)
            log.warning("%s was the only complete copy of an interrupted save; renamed back to %s", item, final.name)
            continue
        remove_path(item)
        removed.append(item)
    if removed:
        log.warning("removed %d leftovers of interrupted saves: %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint ``path`` cannot be resumed from (truncated, not a torch file, ...), or None when it can.

    A file is opened with ``mmap=True``: the zip directory and the pickle are read, the tensor data is not, so
    this costs little even for a large checkpoint. A DeepSpeed folder needs its ``latest`` file and that tag.
    """
    if path.is_dir():
        latest = path / "latest"
        if not latest.is_file():
            return "no 'latest' file"
        tag = latest.read_text().strip()
        return None if (path / tag).is_dir() else f"'latest' names {tag!r}, which is missing"
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        if "Weights only load failed" in str(err):
            raise  # a complete file with content we refuse: loading it fails the same way, with that message
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
    return None


def set_aside_corrupt(path: Path) -> Path:
    """Rename a checkpoint that does not load to ``<name>.corrupt`` (never deleted: it may be worth a look)."""
    aside = path.with_name(path.name + CORRUPT_SUFFIX)
    if aside.exists():
        aside = path.with_name(f"{path.name}{CORRUPT_SUFFIX}-{uuid.uuid4().hex[:8]}")
    os.replace(path, aside)
    return aside


def newest_loadable(folder: Path, *, set_aside: bool = True) -> Path | None:
    """The newest checkpoint of ``folder`` that loads; newer ones that do not are renamed ``.corrupt``
    (``set_aside``; other ranks only skip them) with a warning each."""
    bad: list[Path] = []
    for path in reversed(list_checkpoints(folder)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        where = set_aside_corrupt(path) if set_aside else path
        bad.append(where)
        log.warning("checkpoint %s does not load (%s); kept as %s, resuming from the one before", path, problem, where)
    if bad:  # starting over silently would lose the run
        raise RunFolderError(
            f"no checkpoint in {folder} loads (kept as {', '.join(p.name for p in bad)}); resume=<path> a good copy, "
            "or start over with resume=never (the stage folder is moved aside)"
        )
    return None


def resolve_resume(resume: str, folder: Path, *, set_aside: bool = True) -> Path | None:
    """``auto``: the newest loadable checkpoint in ``folder`` (None when there is none); ``never``; or a path."""
    if resume == "never":
        return None
    if resume == "auto":
        return newest_loadable(folder, set_aside=set_aside)
    path = Path(resume)
    if not path.exists():
        raise ValueError(f"resume={resume!r}: no such checkpoint; use resume=auto, resume=never or an existing path")
    return path


def prune_checkpoints(folder: Path, *, keep: int, newest: Path) -> list[Path]:
    """Delete all but ``keep`` checkpoints: ``newest`` (the one just saved) and the ``keep - 1`` highest steps of
    the others. ``newest`` stays even when older runs left higher step numbers in the folder."""
    others = [p for p in list_checkpoints(folder) if p != newest]
    removed = others[: max(len(others) - (keep - 1), 0)]
    for old in removed:
        remove_path(old)
    return removed


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
            prune_checkpoints(self.folder, keep=self.keep, newest=path)
        return path

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if getattr(pl_module, "mid_accumulation", False):  # between micro-batches: gradients are not saved
            return
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_saved:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_saved and getattr(pl_module, "stop_reason", None) is None:
            self.save(trainer)
