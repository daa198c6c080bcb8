"""Decode one Stage I image with PIL into a (3, H, W) uint8 frame, converting every readable mode to RGB.

Valid images are never dropped for their pixel format. Conversions (reported in ``DecodedImage.converted_from`` so
the stream can count them):

- ``1``, ``L``, ``YCbCr``, ``LAB``, ``HSV``, ``CMYK``, ``P`` without transparency: PIL's ``convert("RGB")``
  (CMYK JPEGs with Adobe inversion are un-inverted by PIL's decoder; embedded ICC profiles are not applied);
- anything with alpha (``RGBA``, ``LA``, ``La``, ``RGBa``, ``PA``, ``P`` with a transparent index): composited over
  white, since a transparent background in a web image is meant to be seen on a white page;
- 16-bit and 32-bit integer greys (``I;16``, ``I;16B``, ``I;16L``, ``I``): scaled from 0..65535 to 0..255 by
  ``round(v / 257)`` (truncating to the low byte, which PIL's ``convert`` does for ``I;16``, wraps bright pixels
  to dark). ``I`` is what PIL gives 16-bit PNG/TIFF greys, so it is read in the 16-bit range, values clipped;
- ``F`` (float TIFF): taken as [0, 1] when its maximum is at most 1, else as [0, 255].

EXIF orientation is applied. Large JPEGs are decoded at a reduced DCT scale when that still covers the target.
An image PIL cannot identify or fully decode (truncated) is ``unreadable_image``;
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone because it is process-global.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from data.errors import BadSample
from data.transforms import CropMode, check_size, resize_and_crop

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class DecodedImage:
    frame: torch.Tensor  # (3, H, W) uint8 in [0, 255], like a video frame
    source_mode: str  # PIL mode as decoded, e.g. "RGB", "L", "I;16", "CMYK"
    converted_from: str | None  # None when the file was already RGB; else the mode converted from


def _composite_over_white(image: PILImage) -> PILImage:
    from PIL import Image

    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _wide_grey_to_rgb(image: PILImage) -> np.ndarray:
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        values = values * 255.0 if values.size and np.nanmax(values) <= 1.0 else values
        grey = np.clip(np.nan_to_num(values), 0.0, 255.0)
    else:
        grey = np.clip(values, 0.0, 65535.0) / 257.0
    grey_u8 = np.rint(grey).astype(np.uint8)
    return np.repeat(grey_u8[:, :, None], 3, axis=2)


def to_rgb_array(image: PILImage) -> tuple[np.ndarray, str | None]:
    """(H, W, 3) uint8 RGB pixels of a loaded PIL image and the mode it was converted from (None if RGB)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return np.asarray(image), None
    if mode in _WIDE_GREY_MODES or mode == "F":
        return _wide_grey_to_rgb(image), mode
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        return np.asarray(_composite_over_white(image)), mode if mode != "RGB" else "RGB+transparency"
    return np.asarray(image.convert("RGB")), mode


def _decode_reduced_if_large(image: PILImage, size: tuple[int, int]) -> None:
    """Let libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale when that still covers ``size`` after the resize.

    DCT-domain scaling is far cheaper than decoding a 12-megapixel photo in full and it is itself a fair
    low-pass filter; the antialiased resize still makes the final size. Other formats decode in full.
    """
    if image.format != "JPEG":
        return
    stored_w, stored_h = image.size
    rotated = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientations shown turned by 90 degrees
    shown_h, shown_w = (stored_w, stored_h) if rotated else (stored_h, stored_w)
    scale = max(size[0] / shown_h, size[1] / shown_w)
    if scale <= 0.5:
        image.draft(image.mode, (math.ceil(stored_w * scale), math.ceil(stored_h * scale)))


def decode_image(
    data: bytes,
    *,
    size: tuple[int, int],
    crop: CropMode = "center",
    rng: np.random.Generator | None = None,
) -> DecodedImage:
    """Decode encoded image bytes (jpg, png, webp, ...) to a (3, H, W) uint8 frame at ``size`` (H, W).

    Raises ``BadSample("unreadable_image")`` for bytes PIL cannot identify or decode completely.
    """
    from PIL import Image, ImageOps

    size = check_size(size)
    if not data:
        raise BadSample("unreadable_image", "zero-length image bytes")
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning is PIL being careful with a big but valid image; keep it quiet here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                _decode_reduced_if_large(image, size)
                image.load()  # Image.open is lazy; truncation only surfaces on load
                source_mode = image.mode
                image = ImageOps.exif_transpose(image) or image
                pixels, converted_from = to_rgb_array(image)
    except BadSample:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadSample("unreadable_image", f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise BadSample("unreadable_image", f"decoded to an unusable array of shape {pixels.shape}")
    if not pixels.flags.writeable:  # np.asarray of a PIL image is read-only; torch warns on those
        pixels = pixels.copy()
    frame = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]  # (H, W, 3) -> (1, 3, H, W)
    frame = resize_and_crop(frame, size=size, crop=crop, rng=rng)[0]
    return DecodedImage(frame=frame, source_mode=source_mode, converted_from=converted_from)
