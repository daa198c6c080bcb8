"""The single decode pass: rate sampling by timestamp, sizes, display orientation, read-only sharing, errors."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from data.curation.probe import probe_video
from data.curation.scan import scan_video, target_size
from tests.data.curation.video_fixtures import encode_frames, textured_frames


class Recorder:
    """A tap that keeps what it is given."""

    def __init__(self, fps: float | None = None, short_side: int | None = None) -> None:
        self.fps, self.short_side = fps, short_side
        self.indices: list[int] = []
        self.times: list[float] = []
        self.frames: list[np.ndarray] = []

    def push(self, index: int, time_s: float, frame: np.ndarray) -> None:
        self.indices.append(index)
        self.times.append(time_s)
        self.frames.append(frame)


def _decoded_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _luma_error(small: np.ndarray, full: np.ndarray) -> float:
    """Mean absolute grey-level difference between a scan frame and an area-resized reference (the scan's small
    frames carry 4:2:0 chroma at their own size, so colours are compared through brightness)."""
    h, w = small.shape[:2]
    area = cv2.resize(np.ascontiguousarray(full), (w, h), interpolation=cv2.INTER_AREA)
    gray = [cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY).astype(int) for x in (small, area)]
    return float(np.abs(gray[0] - gray[1]).mean())


def _first_at_or_after(times: np.ndarray, rate: float) -> list[int]:
    """Reference for the sampling rule: for each k, the first frame with time >= k / rate."""
    picked = {int(np.argmax(times >= k / rate - 1e-9)) for k in range(int(times[-1] * rate) + 1)}
    return sorted(picked)


@pytest.fixture(scope="module")
def cfr_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode_frames(tmp_path_factory.mktemp("scan") / "cfr.mp4", textured_frames(48), fps=24, bframes=2)


@pytest.mark.parametrize("rate", [None, 24.0, 8.0, 2.5, 7.0])
def test_rate_sampling_picks_the_first_frame_at_or_after_each_tick(cfr_video: Path, rate: float | None) -> None:
    info = probe_video(cfr_video)
    tap = Recorder(fps=rate, short_side=32)
    stats = scan_video(cfr_video, info, [tap], threads=1)
    assert stats.frames_decoded == 48 and stats.decode_errors == 0 and stats.error == ""
    np.testing.assert_allclose(stats.frame_times_s, np.arange(48) / 24, atol=1e-6)
    assert stats.duration_s == pytest.approx(2.0)
    expected = list(range(48)) if rate is None else _first_at_or_after(stats.frame_times_s, rate)
    assert tap.indices == expected
    np.testing.assert_allclose(tap.times, stats.frame_times_s[expected])


def test_sizes_content_and_sharing(cfr_video: Path) -> None:
    info = probe_video(cfr_video)
    native, small, small2, eight = Recorder(), Recorder(short_side=32), Recorder(short_side=32), Recorder(8.0, 64)
    seen = []
    scan_video(cfr_video, info, [native, small, small2, eight], progress=seen.append)
    assert sum(seen) == 48
    assert target_size(info, 32) == (42, 32) and target_size(info, 500) == (128, 96)
    assert native.frames[0].shape == (96, 128, 3) and small.frames[0].shape == (32, 42, 3)
    assert eight.frames[0].shape == (64, 84, 3) and len(eight.frames) == 16
    assert all(a is b for a, b in zip(small.frames, small2.frames, strict=True))  # one conversion per size
    assert not small.frames[0].flags.writeable and not native.frames[0].flags.writeable
    reference = _decoded_rgb(cfr_video)
    for i in (0, 17, 47):
        np.testing.assert_array_equal(native.frames[i], reference[i])
        assert _luma_error(small.frames[i], reference[i]) < 2.0


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_frames_arrive_in_display_orientation(tmp_path: Path, rotation: int) -> None:
    path = encode_frames(tmp_path / "phone.mp4", textured_frames(6), rotation_cw=rotation)
    info = probe_video(path)
    native, small = Recorder(), Recorder(short_side=48)
    scan_video(path, info, [native, small])
    coded = _decoded_rgb(path)
    upright = np.rot90(coded[3], k=-rotation // 90)  # a player turns the frame clockwise by `rotation`
    np.testing.assert_array_equal(native.frames[3], upright)
    w, h = target_size(info, 48)
    assert small.frames[3].shape == (h, w, 3) and min(h, w) == 48
    assert _luma_error(small.frames[3], upright) < 2.0


def test_variable_frame_rate_is_sampled_in_time(tmp_path: Path) -> None:
    times = np.array([0.0, 0.05, 0.30, 0.35, 0.60, 0.95, 1.00, 1.05])
    path = encode_frames(tmp_path / "vfr.mp4", textured_frames(len(times), size=(64, 48)), times_s=times)
    info = probe_video(path)
    tap = Recorder(fps=4.0, short_side=32)
    stats = scan_video(path, info, [tap])
    np.testing.assert_allclose(stats.frame_times_s, times, atol=1e-3)
    assert tap.indices == [0, 2, 4, 5, 6]


def test_truncated_file_stops_cleanly(tmp_path: Path) -> None:
    data = encode_frames(tmp_path / "full.mp4", textured_frames(48), faststart=True).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    info = probe_video(cut)
    tap = Recorder(short_side=32)
    stats = scan_video(cut, info, [tap])
    assert 0 < stats.frames_decoded < 48 and stats.frames_decoded == len(tap.indices)
    assert stats.decode_errors == 1 and stats.error and not stats.complete
    reference = _decoded_rgb(tmp_path / "full.mp4")
    assert _luma_error(tap.frames[-1], reference[stats.frames_decoded - 1]) < 2.0  # the frames it gave are right


def test_threads_do_not_change_frames(cfr_video: Path) -> None:
    info = probe_video(cfr_video)
    one, auto = Recorder(3.0, 32), Recorder(3.0, 32)
    scan_video(cfr_video, info, [one], threads=1)
    scan_video(cfr_video, info, [auto], threads=0)
    assert one.indices == auto.indices
    for a, b in zip(one.frames, auto.frames, strict=True):
        np.testing.assert_array_equal(a, b)
