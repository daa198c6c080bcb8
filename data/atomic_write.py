"""Atomic file writes: a temporary name in the same folder, synced, then renamed into place (a leaf module).

``os.replace`` is atomic on POSIX, so a reader sees the old file or the whole new one, never a partial write.
Used by the shard writer, key lists, the demo data and curation reports.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def temp_path(path: Path) -> Path:
    """A unique temporary name next to ``path`` (``.NAME.UUID.tmp``: hidden, and matched by ``.NAME.*.tmp``)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` under a temporary name in the same folder (created if missing), synced, then
    renamed into place: a reader sees the old file or the whole new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
