"""Keyframe reading: decord with the PyAV fallback, display orientation, index choice."""

from __future__ import annotations

import numpy as np
import pytest

from data.curation.errors import CurationSkip
from data.curation.keyframes import first_middle_last, read_frames
from tests.data.curation.annot_fixtures import indexed_mp4, set_rotation


def _levels(frames: np.ndarray) -> list[int]:
    """The grey level of each frame's bottom-right quadrant, which encodes its index."""
    h, w = frames.shape[1:3]
    return [int(round(float(f[h // 2 + 2 :, w // 2 + 2 :].mean()))) for f in frames]


def test_first_middle_last() -> None:
    assert first_middle_last(1) == (0, 0, 0)
    assert first_middle_last(2) == (0, 1, 1)
    assert first_middle_last(25) == (0, 12, 24)
    with pytest.raises(ValueError, match="num_frames"):
        first_middle_last(0)


def test_read_from_path_and_bytes_with_both_backends(tmp_path) -> None:
    data = indexed_mp4(30, size=(64, 48))
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    indices = [0, 15, 29, 15]
    expected = [10 + 6 * i for i in indices]
    results = [read_frames(src, indices, backend=b) for src in (str(path), data) for b in ("decord", "pyav")]
    for frames in results:
        assert frames.shape == (4, 48, 64, 3) and frames.dtype == np.uint8
        assert np.allclose(_levels(frames), expected, atol=2)
    assert np.abs(results[0].astype(int) - results[1]).mean() < 1.0  # decord and PyAV agree
    assert np.array_equal(read_frames(path, indices), results[0])  # auto = decord when it works


def test_pyav_fallback_where_decord_fails() -> None:
    data = indexed_mp4(6, size=(48, 32))  # decord's get_batch fails on 48-px-wide H.264
    with pytest.raises(CurationSkip, match="decord"):
        read_frames(data, [0, 5], backend="decord")
    frames = read_frames(data, [0, 3, 5])
    assert frames.shape == (3, 32, 48, 3)
    assert np.allclose(_levels(frames), [10, 28, 40], atol=2)


@pytest.mark.parametrize("degrees", [90, 270])
def test_frames_in_display_orientation(degrees: int) -> None:
    data = set_rotation(indexed_mp4(4, size=(96, 64)), degrees)
    for backend in ("decord", "pyav"):
        frame = read_frames(data, [1], backend=backend)[0]
        assert frame.shape == (96, 64, 3), backend  # portrait after rotation
        # The white top-left quadrant of the coded frame turns to the top-right (90 cw) or bottom-left (270 cw).
        corner = frame[:48, 32:] if degrees == 90 else frame[48:, :32]
        assert corner.mean() > 240, (backend, degrees)


def test_unreadable_input_and_bad_indices() -> None:
    with pytest.raises(CurationSkip, match="undecodable"):
        read_frames(b"not a video at all", [0])
    data = indexed_mp4(5, size=(64, 48))
    with pytest.raises(CurationSkip, match="requested"):
        read_frames(data, [0, 7])
    with pytest.raises(ValueError, match="indices"):
        read_frames(data, [])
