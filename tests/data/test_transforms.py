"""resize_and_crop: cover the target and crop it in uint8, one code path for videos and images; to_model_range."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from data.image_decode import decode_image
from data.transforms import crop_offsets, resize_and_crop, to_model_range


@pytest.mark.parametrize(
    ("in_hw", "out_hw"), [((48, 64), (32, 48)), ((48, 64), (16, 64)), ((100, 30), (40, 40)), ((20, 20), (64, 96))]
)
def test_output_shape_and_range(in_hw, out_hw):
    frames = torch.randint(0, 256, (3, 3, *in_hw), dtype=torch.uint8)
    out = resize_and_crop(frames, size=out_hw)
    assert out.shape == (3, 3, *out_hw) and out.dtype == torch.uint8 and out.is_contiguous()
    model_input = to_model_range(out)
    assert model_input.min() >= -1.0 and model_input.max() <= 1.0


def test_exact_size_is_copied_unchanged():
    frames = torch.tensor([0, 255], dtype=torch.uint8).repeat(1, 3, 4, 2)  # (1, 3, 4, 4)
    out = resize_and_crop(frames, size=(4, 4))
    assert torch.equal(out, frames) and out.data_ptr() != frames.data_ptr()
    assert torch.equal(to_model_range(out), frames.float() / 127.5 - 1.0)


def test_channels_last_view_gives_a_fresh_contiguous_crop():
    # decord's (T, h, w, 3) buffer permuted to (T, 3, h, w) is a channels-last view; the result must not alias it.
    hwc = torch.randint(0, 256, (2, 24, 40, 3), dtype=torch.uint8)
    view = hwc.permute(0, 3, 1, 2)
    for size in ((24, 40), (24, 24), (12, 20)):  # no resize and no crop, crop only, resize and crop
        out = resize_and_crop(view, size=size)
        assert out.shape == (2, 3, *size) and out.is_contiguous() and out.dtype == torch.uint8
        assert torch.equal(out, resize_and_crop(view.contiguous(), size=size))
        before = out.clone()
        hwc.add_(1)
        assert torch.equal(out, before)


def test_float_input_is_rounded_clamped_and_not_modified_in_place():
    frames = torch.full((1, 3, 8, 8), 255.0)
    out = resize_and_crop(frames, size=(8, 8))
    assert (frames == 255.0).all() and out.dtype == torch.uint8 and (out == 255).all()
    levels = torch.tensor([-3.0, 0.4, 0.6, 127.5, 254.6, 300.0]).repeat(1, 3, 1, 1)  # (1, 3, 1, 6)
    out = resize_and_crop(levels, size=(1, 6))
    assert out[0, 0, 0].tolist() == [0, 0, 1, 128, 255, 255]  # round half to even: 127.5 -> 128


def test_to_model_range_ends_are_exact_and_matches_the_formula():
    levels = torch.arange(256, dtype=torch.uint8)
    out = to_model_range(levels)
    assert out.dtype == torch.float32 and out[0].item() == -1.0 and out[255].item() == 1.0
    torch.testing.assert_close(out, levels.double().div(127.5).sub(1.0).float(), rtol=0, atol=1e-7)
    assert not torch.equal(out[1:], out[:-1])  # strictly increasing: 256 distinct values
    assert (out[1:] > out[:-1]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_to_model_range_dtype(dtype):
    frames = torch.tensor([[0, 255], [128, 64]], dtype=torch.uint8).repeat(2, 3, 1, 1)  # any shape
    out = to_model_range(frames, dtype=dtype)
    assert out.dtype == dtype and out.shape == frames.shape and out.device == frames.device
    assert out[..., 0, 0].eq(-1).all() and out[..., 0, 1].eq(1).all()
    expected = frames.double() / 127.5 - 1.0
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=torch.finfo(dtype).eps)


@pytest.mark.parametrize("frames", [torch.zeros(2, 3, 4, 4), torch.zeros(3, 4, dtype=torch.int64)])
def test_to_model_range_rejects_non_uint8(frames):
    with pytest.raises(ValueError, match="uint8"):
        to_model_range(frames)
    with pytest.raises(ValueError, match="floating-point"):
        to_model_range(torch.zeros(1, dtype=torch.uint8), dtype=torch.int32)


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
    diffs = out[1:].int() - out[:-1].int()
    assert torch.equal(diffs, torch.ones_like(diffs))


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
