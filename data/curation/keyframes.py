"""Read a few frames of a clip (its first, middle and last) for the per-clip annotators.

``read_frames`` decodes only the requested frames with decord (a reader per call: long-lived decord readers leak
memory; ``get_batch`` seeks to the keyframe before each frame instead of decoding the whole clip). decord applies
the track's display matrix, so frames come out as a player shows them. Where decord fails, to open or to decode,
the frames are read with PyAV instead, decoding from the start up to the last requested frame and applying the
display rotation ourselves: decord cannot handle some inputs FFmpeg decodes fine, e.g. H.264 only 48 px wide
("Check failed: from_size == to_size" in ``get_batch``). Both paths return the same frames for files both read.
When neither can read the clip, ``CurationSkip("undecodable")`` is raised.

Frame indices count presented frames from 0, as decord and the clip's ``num_frames`` do.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np

from data.curation.errors import CurationSkip
from data.video_decode import first_line, quiet_ffmpeg

Source = str | os.PathLike[str] | bytes


def first_middle_last(num_frames: int) -> tuple[int, int, int]:
    """Indices of the first, middle (``num_frames // 2``: the later one of two middles) and last frame."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1; got {num_frames}")
    return 0, num_frames // 2, num_frames - 1


def _with_decord(source: Source, indices: list[int]) -> np.ndarray:
    import decord

    quiet_ffmpeg()
    src = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
    reader = decord.VideoReader(src, ctx=decord.cpu(0), num_threads=1)
    try:
        if max(indices) >= len(reader):
            raise IndexError(f"frame {max(indices)} requested from a clip of {len(reader)} frames")
        return reader.get_batch(indices).asnumpy()
    finally:
        del reader


def _with_pyav(source: Source, indices: list[int]) -> np.ndarray:
    import av

    wanted = set(indices)
    got: dict[int, np.ndarray] = {}
    src = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
    with av.open(src) as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                # frame.rotation: counter-clockwise degrees of the display matrix (a phone's "rotate=90" is -90).
                turns = int(round(float(getattr(frame, "rotation", 0) or 0) / 90))
                got[i] = np.rot90(frame.to_ndarray(format="rgb24"), k=turns)
            if i >= max(indices):
                break
    missing = sorted(wanted - set(got))
    if missing:
        raise IndexError(f"frames {missing[:5]} requested but the clip decodes to fewer frames")
    return np.ascontiguousarray(np.stack([got[i] for i in indices]))


def read_frames(
    source: Source, indices: Sequence[int], *, backend: Literal["auto", "decord", "pyav"] = "auto"
) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB frames ``indices`` (repeats allowed) of a video file path or encoded bytes.

    ``backend="auto"`` tries decord then PyAV (see the module docstring); the others force one reader.
    """
    idx = [int(i) for i in indices]
    if not idx or min(idx) < 0:
        raise ValueError(f"indices must be a non-empty list of frame numbers >= 0; got {list(indices)}")
    if backend not in ("auto", "decord", "pyav"):
        raise ValueError(f'backend must be "auto", "decord" or "pyav"; got {backend!r}')
    errors = []
    for name, reader in (("decord", _with_decord), ("pyav", _with_pyav)):
        if backend not in ("auto", name):
            continue
        try:
            frames = reader(source, idx)
        except Exception as exc:  # noqa: BLE001 - decord raises DECORDError/RuntimeError, PyAV its own errors
            errors.append(f"{name}: {first_line(exc)}")
            continue
        if frames.ndim == 4 and frames.shape[0] == len(idx) and frames.shape[-1] == 3 and frames.dtype == np.uint8:
            return frames
        errors.append(f"{name}: returned {frames.dtype} {frames.shape} for {len(idx)} frames")
    raise CurationSkip("undecodable", "cannot read frames " + str(sorted(set(idx))[:5]) + ": " + "; ".join(errors))
