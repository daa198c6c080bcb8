"""Writing sample videos (H.264 MP4 via PyAV, looping GIF via Pillow) and reading conditioning images (through the
data pipeline's image decoder, so a sampled image is framed as training frames it).

Both writers are atomic: they write a temporary file in the target folder and ``os.replace`` it onto the target,
so a crash (or a reader polling the folder, e.g. a wandb upload) never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

Frames = torch.Tensor | np.ndarray


def _as_uint8_thw3(frames: Frames) -> np.ndarray:
    array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] < 1:
        raise ValueError(f"frames have shape {array.shape}; pass uint8 frames shaped (T, H, W, 3) with T >= 1")
    if array.dtype != np.uint8:
        raise ValueError(f"frames have dtype {array.dtype}; convert to uint8 first (train.sampling.to_uint8_frames)")
    return np.ascontiguousarray(array)


def _check_fps(fps: float) -> None:
    if not fps > 0:
        raise ValueError(f"fps={fps}; use a positive frame rate, e.g. 7")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the written file gets an ordinary file's mode
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_mp4(frames: Frames, path: str | os.PathLike[str], fps: float) -> Path:
    """uint8 (T, H, W, 3) -> H.264 yuv420p MP4; odd sizes are padded by one edge row / column (yuv420p needs even)."""
    import av

    _check_fps(fps)
    array = _as_uint8_thw3(frames)
    pad_h, pad_w = array.shape[1] % 2, array.shape[2] % 2
    if pad_h or pad_w:
        array = np.pad(array, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = array.shape[2], array.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18"}
            for frame in array:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())  # flush the encoder
    return Path(path)


def write_gif(frames: Frames, path: str | os.PathLike[str], fps: float) -> Path:
    """uint8 (T, H, W, 3) -> GIF that loops forever, one frame every 1000 / fps ms (rounded to 10 ms by GIF)."""
    from PIL import Image

    _check_fps(fps)
    images = [Image.fromarray(frame) for frame in _as_uint8_thw3(frames)]
    with atomic_path(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=max(round(1000 / fps), 10),
            loop=0,
        )
    return Path(path)


def read_image(path: str | os.PathLike[str], *, size: tuple[int, int]) -> torch.Tensor:
    """A conditioning image file -> uint8 (3, H, W) RGB at ``size`` = (H, W), read exactly as training reads images:
    ``data.image_decode.decode_image`` (EXIF orientation applied, every PIL mode to RGB the same way) with the data
    pipeline's cover-resize and centre crop (``data.transforms.resize_and_crop``). The one reader of the sampler
    (``scripts/sample.py``), the sample and evaluation callbacks and ``scripts/evaluate.py``."""
    from data.errors import BadSample
    from data.image_decode import decode_image

    if not Path(path).is_file():
        raise ValueError(f"no image file at {path}; pass the path of a PNG / JPEG conditioning image")
    try:
        return decode_image(Path(path).read_bytes(), size=size, crop="center").frame
    except BadSample as exc:
        raise ValueError(f"cannot read the conditioning image {path}: {exc}") from exc
