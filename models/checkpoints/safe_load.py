"""Load and save plain state dicts without ever running pickled code.

``load_state_dict`` reads ``.safetensors`` directly and the pickle formats (``.ckpt``, ``.pt``, ``.pth``,
``.bin``) only through ``torch.load(weights_only=True)``, whose unpickler allows tensors, containers and
primitives but no arbitrary globals. A pickle that needs anything else is refused with
``UnsafeCheckpointError`` before any of its code can run; a truncated or damaged file is refused with
``CorruptCheckpointError`` naming the file and the fix. ``save_state_dict`` writes safetensors atomically
(temp file in the same folder, fsync, ``os.replace``), so a crash mid-save never leaves a half-written file
under the final name.
"""

from __future__ import annotations

import os
import pickle
import re
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SUPPORTED_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)

# Keys under which trainers nest the weights: Lightning/ldm (.ckpt), DeepSpeed ("module"), many others ("model").
_WRAPPER_KEYS = ("state_dict", "module", "model")
_WEIGHTS_ONLY_MARKER = "Weights only load failed"
_LFS_POINTER = b"version https://git-lfs"


class UnsafeCheckpointError(ValueError):
    """A pickle checkpoint holds code or objects beyond tensors; it was refused, nothing in it was executed."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file is truncated or damaged (an interrupted download, copy or save; a Git LFS pointer)."""


def load_state_dict(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Return the tensors of a checkpoint file as a flat ``{name: tensor}`` dict on ``device``.

    Pickle formats are unwrapped from a top-level ``state_dict`` (Lightning/ldm), ``module`` or ``model`` key
    when that key holds a dict. Non-tensor entries of the state dict are dropped with one warning.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"Unsupported checkpoint suffix {path.suffix!r} for {path}; supported suffixes are "
            f"{', '.join(SUPPORTED_SUFFIXES)}. Rename the file if it is one of these formats."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")

    if suffix == SAFETENSORS_SUFFIX:
        try:
            return dict(safetensors.torch.load_file(path, device=str(device)))
        except safetensors.SafetensorError as err:
            # Header errors ("header too large", "incomplete metadata, file not fully covered", ...) mean the
            # bytes are not a complete safetensors file; anything else (a bad device) is not the file's fault.
            if "deserializ" not in str(err).lower():
                raise
            raise _corrupt_error(path, str(err).partition(": ")[2] or str(err)) from None

    obj = _torch_load_weights_only(path, device=device)
    return _tensors_only(_unwrap(obj, path=path), path=path)


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``state_dict`` to ``path`` as safetensors, atomically.

    Tensors are detached, moved to CPU and made contiguous; tensors that share storage (tied weights, views)
    are cloned because safetensors refuses shared storage. The file appears under its final name only once it
    is complete and fsynced; if anything fails midway the previous file at ``path`` is left untouched.
    """
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        raise ValueError(f"save_state_dict writes safetensors; give a path ending in '.safetensors', got {path}")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("metadata must map str to str; convert values with str() or json.dumps() first")
    tensors = _prepare_for_safetensors(state_dict)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        # safetensors replaces the file with its own 0600 one: give it the usual mode (0666 filtered by the umask).
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _torch_load_weights_only(path: Path, *, device: str | torch.device) -> object:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:  # same class as _pickle.UnpicklingError
        raise _unsafe_error(path, err) from None
    except EOFError:
        raise _corrupt_error(path, "the pickle ends early") from None
    except RuntimeError as err:
        if _WEIGHTS_ONLY_MARKER in str(err):
            raise _unsafe_error(path, err) from None
        if "PytorchStreamReader" in str(err):  # a torch.save zip archive cut short or overwritten
            raise _corrupt_error(path, str(err).split(". ")[0]) from None
        raise


def _culprit(err: BaseException) -> str:
    # torch's message is mostly advice to pass weights_only=False; keep only the part naming the culprit.
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines() if ln.strip()]
    for line in lines:
        detail = line.partition("WeightsUnpickler error:")[2].split(" Please use")[0].strip()
        if detail:
            return detail
    for line in lines:
        if "unsupported" in line.lower():
            return line
    return " ".join(lines)[:300] or type(err).__name__


def _contents(reason: str) -> str:
    """What the refused pickle holds, in words, from torch's unpickler message."""
    found = re.search(r"GLOBAL\s+([\w.]+)", reason)
    if found:
        return f"the Python global {found.group(1)}, which unpickling would import and may call"
    if "operand" in reason.lower():
        return f"a pickle instruction that torch.save files do not use ({reason}): a plain pickle or not a checkpoint"
    return f"something weights-only loading rejects ({reason})"


def _unsafe_error(path: Path, err: BaseException) -> UnsafeCheckpointError:
    # No ready-to-paste command here on purpose: one line that unpickles the refused file would run its code.
    return UnsafeCheckpointError(
        f"Refusing to load {path}: it is a pickle that needs {_contents(_culprit(err))}; weights-only loading "
        f"allows tensors, containers and primitives only. Nothing in the file was executed. Do not load a file of "
        f"unknown origin any other way. If you TRUST where it came from (you or a colleague saved it), convert it "
        f"once on a trusted machine: load it there with full unpickling, take the model's state dict from it (the "
        f"'state_dict' entry of a Lightning checkpoint), keep only its tensors, write them with "
        f"models.checkpoints.save_state_dict to {path.with_suffix(SAFETENSORS_SUFFIX)}, and use that file instead."
    )


def _corrupt_error(path: Path, reason: str) -> CorruptCheckpointError:
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(len(_LFS_POINTER)) == _LFS_POINTER:
            return CorruptCheckpointError(
                f"{path} is a Git LFS pointer ({size} bytes), not the weights; fetch the file itself with "
                f"`git lfs pull` or download it again"
            )
    return CorruptCheckpointError(
        f"{path} ({_human_size(size)}) is truncated or corrupt, not a complete checkpoint ({reason}); download or "
        f"copy it again, or export it again from the run that made it (an interrupted download, copy or save "
        f"leaves such a file)"
    )


def _human_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    size = n / 1024
    for unit in ("KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def _unwrap(obj: object, *, path: Path) -> Mapping[object, object]:
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{path} holds a {type(obj).__name__}, not a dict of tensors; save model.state_dict(), not the model "
            f"or a bare tensor"
        )
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return inner
    return obj


def _tensors_only(entries: Mapping[object, object], *, path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in entries.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            tensors[key] = value
        else:
            dropped.append(repr(key))
    if not tensors:
        shown = ", ".join(repr(k) for k in list(entries)[:10])
        raise ValueError(
            f"{path} contains no tensors under string keys (top-level keys: {shown}); expected a state dict, "
            f"optionally nested under one of {', '.join(_WRAPPER_KEYS)}"
        )
    if dropped:
        more = f" and {len(dropped) - 10} more" if len(dropped) > 10 else ""
        warnings.warn(
            f"{path}: ignoring {len(dropped)} non-tensor state-dict entries: {', '.join(dropped[:10])}{more}",
            stacklevel=3,
        )
    return tensors


def _prepare_for_safetensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a mapping of str to Tensor, got {type(state_dict).__name__}")
    bad = [repr(k) for k, v in state_dict.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise ValueError(
            f"state_dict must map str to Tensor; offending keys: {', '.join(bad[:10])}. "
            f"Store non-tensor values in metadata (str to str) instead"
        )
    meta = [k for k, v in state_dict.items() if v.is_meta]
    if meta:
        raise ValueError(f"Cannot save meta tensors (no data): {', '.join(meta[:10])}; materialize the module first")

    seen_storages: set[tuple[str, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        t = value.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        storage_key = (str(t.device), t.untyped_storage().data_ptr())
        # Empty tensors all report pointer 0; they never share real data.
        shared = t.numel() > 0 and storage_key in seen_storages
        if t.numel() > 0:
            seen_storages.add(storage_key)
        t = t.to("cpu")
        if shared or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        out[key] = t
    return out


def fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened this way on Windows.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
