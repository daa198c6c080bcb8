"""MP4 / GIF writers decode back to the frames written; writes are atomic."""

from __future__ import annotations

import os
import stat

import av
import numpy as np
import pytest
import torch
from PIL import Image

from train.media import read_image, write_gif, write_mp4


def _frames(t: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _decode_mp4(path) -> tuple[list[np.ndarray], str, str, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        return frames, stream.codec_context.name, stream.codec_context.pix_fmt, float(stream.average_rate)


def test_mp4_is_h264_yuv420p_with_every_frame(tmp_path):
    flat = np.zeros((4, 16, 24, 3), dtype=np.uint8)
    flat[..., 0] = np.arange(4)[:, None, None] * 60  # frames of distinct uniform colours survive compression
    path = write_mp4(torch.from_numpy(flat), tmp_path / "out" / "a.mp4", fps=7)
    frames, codec, pix_fmt, fps = _decode_mp4(path)
    assert (codec, pix_fmt, fps) == ("h264", "yuv420p", 7.0)
    assert len(frames) == 4 and frames[0].shape == (16, 24, 3)
    np.testing.assert_allclose(np.stack(frames).astype(float), flat.astype(float), atol=6)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.mp4"]  # no temporary left behind


def test_mp4_pads_odd_sizes_to_even(tmp_path):
    frames, *_ = _decode_mp4(write_mp4(_frames(3, 15, 21), tmp_path / "odd.mp4", fps=6))
    assert len(frames) == 3 and frames[0].shape == (16, 22, 3)


def test_gif_loops_forever_at_the_frame_rate(tmp_path):
    frames = _frames(5, 9, 13)
    path = write_gif(frames, tmp_path / "a.gif", fps=5)
    with Image.open(path) as gif:
        assert (gif.n_frames, gif.size, gif.info["loop"], gif.info["duration"]) == (5, (13, 9), 0, 200)
    single = write_gif(frames[:1], tmp_path / "one.gif", fps=5)
    with Image.open(single) as gif:
        assert gif.n_frames == 1


def test_written_files_get_an_ordinary_file_mode(tmp_path):
    """The temporary is made 0600 (mkstemp); the renamed video has the mode an open() would give (0666 & ~umask)."""
    old = os.umask(0o022)
    try:
        mp4 = write_mp4(_frames(2, 8, 8), tmp_path / "a.mp4", fps=7)
        gif = write_gif(_frames(2, 8, 8), tmp_path / "a.gif", fps=7)
    finally:
        os.umask(old)
    assert stat.S_IMODE(mp4.stat().st_mode) == stat.S_IMODE(gif.stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.mp4"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="positive frame rate"):
        write_mp4(_frames(2, 8, 8), path, fps=0)
    with pytest.raises(ValueError, match="uint8"):
        write_gif(_frames(2, 8, 8).astype(np.float32), tmp_path / "a.gif", fps=7)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        write_mp4(_frames(2, 8, 8)[..., :2], path, fps=7)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


def test_read_image_gives_uint8_chw(tmp_path):
    array = _frames(1, 6, 10)[0]
    Image.fromarray(array).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png", size=(6, 10))
    assert image.dtype == torch.uint8 and image.shape == (3, 6, 10)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), array)
    with pytest.raises(ValueError, match="no image file"):
        read_image(tmp_path / "missing.png", size=(6, 10))
