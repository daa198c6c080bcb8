"""decode_image: every readable PIL mode becomes RGB with the right colours; unreadable bytes are a clean skip."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from data.errors import BadSample
from data.image_decode import decode_image, to_rgb_array
from data.transforms import resize_and_crop, to_model_range

SIZE = (24, 32)


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _rgb(frame: torch.Tensor) -> np.ndarray:
    """Mean colour of a (3, H, W) uint8 frame, in 0..255."""
    assert frame.dtype == torch.uint8
    return frame.float().mean(dim=(1, 2)).numpy()


def _flat(mode: str, colour, size=(40, 30)) -> Image.Image:
    return Image.new(mode, size, colour)


@pytest.mark.parametrize(
    ("image", "fmt", "converted_from", "expected", "tol"),
    [
        (_flat("RGB", (200, 30, 90)), "PNG", None, (200, 30, 90), 0.6),
        (_flat("RGB", (200, 30, 90)), "JPEG", None, (200, 30, 90), 4),
        (_flat("RGB", (200, 30, 90)), "WEBP", None, (200, 30, 90), 6),
        (_flat("L", 77), "PNG", "L", (77, 77, 77), 0.6),
        (_flat("1", 1), "PNG", "1", (255, 255, 255), 0.6),
        (_flat("CMYK", (0, 255, 255, 0)), "JPEG", "CMYK", (255, 0, 0), 8),  # naive CMYK: pure red
        (_flat("RGBA", (255, 0, 0, 128)), "PNG", "RGBA", (255, 127, 127), 1.0),  # half-transparent red on white
        (_flat("LA", (0, 128)), "PNG", "LA", (127, 127, 127), 1.0),
        (_flat("RGBA", (10, 20, 30, 0)), "WEBP", "RGBA", (255, 255, 255), 1.0),  # fully transparent -> white
    ],
    ids=["rgb-png", "rgb-jpeg", "rgb-webp", "L", "1bit", "cmyk-jpeg", "rgba", "la", "rgba-webp"],
)
def test_modes_decode_to_rgb(image, fmt, converted_from, expected, tol):
    decoded = decode_image(_encode(image, fmt), size=SIZE)
    assert decoded.frame.shape == (3, *SIZE) and decoded.frame.dtype == torch.uint8
    model_input = to_model_range(decoded.frame)
    assert model_input.min() >= -1.0 and model_input.max() <= 1.0
    assert decoded.converted_from == converted_from
    np.testing.assert_allclose(_rgb(decoded.frame), expected, atol=tol)


@pytest.mark.parametrize(("value", "expected"), [(65535, 255), (128 * 257, 128), (0x80FF, 128), (255, 1)])
def test_16bit_grey_is_scaled_not_truncated(value, expected):
    # Keeping the low byte (what a plain convert does) would turn 0x80FF into 255 and 65535 into 255 by luck.
    image = Image.fromarray(np.full((30, 40), value, dtype=np.uint16))
    assert image.mode == "I;16"
    decoded = decode_image(_encode(image), size=SIZE)
    assert decoded.converted_from == "I;16" and decoded.source_mode == "I;16"
    np.testing.assert_allclose(_rgb(decoded.frame), (expected,) * 3, atol=0.6)


def test_32bit_int_and_float_greys():
    pixels, converted = to_rgb_array(Image.fromarray(np.full((4, 4), 257 * 200, dtype=np.int32)))
    assert converted == "I" and pixels.dtype == np.uint8 and (pixels == 200).all()
    pixels, converted = to_rgb_array(Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)))
    assert converted == "F" and (pixels == 128).all()


def test_palette_with_and_without_transparency():
    palette = [0, 0, 0, 255, 0, 0] + [0] * 762
    image = Image.new("P", (40, 30), 1)
    image.putpalette(palette)
    image.paste(0, (0, 0, 20, 30))  # left half index 0
    opaque = decode_image(_encode(image), size=(30, 40))
    assert opaque.converted_from == "P"
    np.testing.assert_allclose(_rgb(opaque.frame[:, :, 25:]), (255, 0, 0), atol=0.6)
    np.testing.assert_allclose(_rgb(opaque.frame[:, :, :15]), (0, 0, 0), atol=0.6)
    transparent = decode_image(_encode(image, transparency=0), size=(30, 40))
    assert transparent.converted_from == "P"
    np.testing.assert_allclose(_rgb(transparent.frame[:, :, :15]), (255, 255, 255), atol=0.6)  # index 0 -> white
    np.testing.assert_allclose(_rgb(transparent.frame[:, :, 25:]), (255, 0, 0), atol=0.6)


def test_rgb_colour_key_transparency_is_composited():
    image = Image.new("RGB", (40, 30), (0, 255, 0))
    image.paste((255, 0, 0), (0, 0, 20, 30))
    decoded = decode_image(_encode(image, transparency=(255, 0, 0)), size=(30, 40))
    assert decoded.converted_from == "RGB+transparency"
    np.testing.assert_allclose(_rgb(decoded.frame[:, :, :15]), (255, 255, 255), atol=0.6)  # keyed red -> white
    np.testing.assert_allclose(_rgb(decoded.frame[:, :, 25:]), (0, 255, 0), atol=0.6)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: red on top, blue at the bottom
    decoded = decode_image(_encode(image, "JPEG", exif=exif.tobytes(), quality=95), size=(40, 20))
    np.testing.assert_allclose(_rgb(decoded.frame[:, :8]), (255, 0, 0), atol=12)
    np.testing.assert_allclose(_rgb(decoded.frame[:, -8:]), (0, 0, 255), atol=12)


def _truncated(fmt: str) -> bytes:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = _encode(noisy, fmt)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", np.random.default_rng(1).bytes(4000), _truncated("PNG"), _truncated("JPEG")],
    ids=["empty", "text", "random", "truncated-png", "truncated-jpeg"],
)
def test_unreadable_images(data):
    with pytest.raises(BadSample) as info:
        decode_image(data, size=SIZE)
    assert info.value.reason == "unreadable_image"


def test_random_crop_uses_the_rng():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (30, 90, 3), dtype=np.uint8))
    data = _encode(image)
    a = decode_image(data, size=(30, 30), crop="random", rng=np.random.default_rng(5)).frame
    b = decode_image(data, size=(30, 30), crop="random", rng=np.random.default_rng(5)).frame
    crops = {
        decode_image(data, size=(30, 30), crop="random", rng=np.random.default_rng(s)).frame.sum().item()
        for s in range(6)
    }
    assert torch.equal(a, b) and len(crops) > 1
    with pytest.raises(ValueError, match="rng"):
        decode_image(data, size=(30, 30), crop="random")


@pytest.mark.parametrize("orientation", [1, 6], ids=["upright", "rotated"])
def test_large_jpeg_is_decoded_at_reduced_scale_with_the_same_result(monkeypatch, orientation):
    from PIL import JpegImagePlugin

    yy, xx = np.mgrid[0:600, 0:800]
    smooth = np.stack([xx * 255 // 800, yy * 255 // 600, (xx + yy) * 255 // 1400], axis=2).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(smooth), "JPEG", quality=95, exif=exif.tobytes())
    full = Image.open(io.BytesIO(data))
    full = ImageOps.exif_transpose(full)
    expected = resize_and_crop(torch.from_numpy(np.asarray(full).copy()).permute(2, 0, 1)[None], size=(60, 80))[0]

    sizes: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    decoded = decode_image(data, size=(60, 80))
    assert sizes and max(sizes[0]) <= 200  # 800x600 decoded at 1/4 or 1/8 scale
    assert decoded.frame.shape == (3, 60, 80)
    assert (decoded.frame.float() - expected.float()).abs().mean().item() < 2.0  # in 8-bit levels
