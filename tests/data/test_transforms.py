"""resize_and_crop: cover the target, crop it, map to [-1, 1]; one code path for videos and images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from data.image_decode import decode_image
from data.transforms import crop_offsets, resize_and_crop


@pytest.mark.parametrize(
    ("in_hw", "out_hw"), [((48, 64), (32, 48)), ((48, 64), (16, 64)), ((100, 30), (40, 40)), ((20, 20), (64, 96))]
)
def test_output_shape_and_range(in_hw, out_hw):
    frames = torch.randint(0, 256, (3, 3, *in_hw), dtype=torch.uint8)
    out = resize_and_crop(frames, size=out_hw)
    assert out.shape == (3, 3, *out_hw) and out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_exact_size_is_only_rescaled():
    frames = torch.tensor([0, 255], dtype=torch.uint8).repeat(1, 3, 4, 2)  # (1, 3, 4, 4)
    out = resize_and_crop(frames, size=(4, 4))
    assert torch.equal(out, frames.float() / 127.5 - 1.0)


def test_float_input_is_not_modified_in_place():
    frames = torch.full((1, 3, 8, 8), 255.0)
    resize_and_crop(frames, size=(8, 8))
    assert (frames == 255.0).all()


def test_centre_and_random_crop_offsets():
    assert crop_offsets((40, 60), (40, 40), crop="center", rng=None) == (0, 10)
    offsets = {crop_offsets((40, 60), (40, 40), crop="random", rng=np.random.default_rng(s)) for s in range(30)}
    assert all(top == 0 and 0 <= left <= 20 for top, left in offsets) and len(offsets) > 5
    with pytest.raises(ValueError, match="rng"):
        crop_offsets((40, 60), (40, 40), crop="random", rng=None)
    with pytest.raises(ValueError, match="cover"):
        crop_offsets((10, 10), (20, 20), crop="center", rng=None)


def test_all_frames_share_one_crop_window():
    # Frame t is a horizontal ramp shifted by t; one shared window keeps the shift visible after cropping.
    ramp = torch.arange(60, dtype=torch.uint8).repeat(40, 1)
    frames = torch.stack([ramp + t for t in range(3)])[:, None].repeat(1, 3, 1, 1)
    out = resize_and_crop(frames, size=(40, 40), crop="random", rng=np.random.default_rng(3))
    diffs = (out[1:] - out[:-1]) * 127.5
    torch.testing.assert_close(diffs, torch.ones_like(diffs), atol=1e-4, rtol=0)


def test_image_and_video_paths_agree():
    pixels = np.random.default_rng(4).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    from_image = decode_image(buf.getvalue(), size=(16, 20)).frame
    from_frames = resize_and_crop(torch.from_numpy(pixels).permute(2, 0, 1)[None], size=(16, 20))[0]
    assert torch.equal(from_image, from_frames)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(T, 3, h, w\)"):
        resize_and_crop(torch.zeros(3, 8, 8, dtype=torch.uint8), size=(4, 4))
    with pytest.raises(ValueError, match="size"):
        resize_and_crop(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), size=(4, -4))
    with pytest.raises(ValueError, match="crop"):
        resize_and_crop(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), size=(4, 4), crop="left")
