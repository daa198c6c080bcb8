"""Probing raw videos: sizes, rotation, frame rate, frame count, and the skip reasons for inputs that cannot be used."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from data.curation.errors import CurationSkip
from data.curation.probe import notes_for, packet_index, probe_video
from tests.data.curation.video_fixtures import encode_frames, textured_frames, write_audio_only


def test_demo_raw_video_matches_its_metadata(demo_raw_video) -> None:
    raw = demo_raw_video(0, 0)
    info = probe_video(raw.path)
    assert (info.width, info.height) == (raw.meta["width"], raw.meta["height"]) == (128, 96)
    assert (info.coded_width, info.coded_height, info.rotation) == (128, 96, 0)
    assert info.num_frames == raw.meta["num_frames"]
    assert info.fps == pytest.approx(24.0)
    assert info.duration_s == pytest.approx(raw.meta["num_frames"] / 24.0)
    assert info.codec == "h264" and not info.vfr and not info.has_audio
    assert notes_for(info) == []


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_from_the_display_matrix(tmp_path: Path, rotation: int) -> None:
    path = encode_frames(tmp_path / "phone.mp4", textured_frames(6, size=(64, 48)), rotation_cw=rotation)
    info = probe_video(path)
    assert info.rotation == rotation
    assert (info.coded_width, info.coded_height) == (64, 48)
    assert (info.width, info.height) == ((48, 64) if rotation in (90, 270) else (64, 48))
    assert notes_for(info) == ["rotated"]


def test_variable_frame_rate(tmp_path: Path) -> None:
    # 20 frames: intervals alternate 1/30 s and 1/15 s, as a phone that drops frames in the dark writes them
    times = np.cumsum([0.0] + [1 / 30 if i % 2 else 1 / 15 for i in range(19)])
    path = encode_frames(tmp_path / "vfr.mp4", textured_frames(20, size=(64, 48)), times_s=times)
    info = probe_video(path)
    assert info.vfr and info.num_frames == 20
    assert info.fps == pytest.approx(19 / times[-1], rel=1e-3)  # the mean interval
    assert notes_for(info) == ["variable_frame_rate"]
    cfr = probe_video(encode_frames(tmp_path / "cfr.mp4", textured_frames(20, size=(64, 48)), fps=30))
    assert not cfr.vfr and cfr.fps == pytest.approx(30.0)


def test_odd_resolution(tmp_path: Path) -> None:
    path = encode_frames(tmp_path / "odd.mp4", textured_frames(5, size=(65, 49)), pix_fmt="yuv444p")
    info = probe_video(path)
    assert (info.width, info.height) == (65, 49)
    assert notes_for(info) == ["odd_resolution"]


def test_packet_index_is_in_decode_order(demo_raw_video) -> None:
    raw = demo_raw_video(0, 0)
    index = packet_index(raw.path)
    assert len(index.pts) == raw.meta["num_frames"] and index.keyframe[0]
    assert not np.all(np.diff(index.pts) > 0)  # the demo encoder uses B-frames: decode order != display order
    assert np.all(np.diff(index.frame_pts) > 0)


def _mp4_bytes(tmp_path: Path, *, faststart: bool) -> bytes:
    path = encode_frames(tmp_path / f"src{faststart}.mp4", textured_frames(24, size=(64, 48)), faststart=faststart)
    return path.read_bytes()


def _skip_reason(path: Path) -> str:
    with pytest.raises(CurationSkip) as info:
        probe_video(path)
    return info.value.reason


def test_empty_file_is_zero_length(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert _skip_reason(tmp_path / "empty.mp4") == "zero_length"


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    assert _skip_reason(tmp_path / "nothing.mp4") == "unreadable"


def test_garbage_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    assert _skip_reason(tmp_path / "garbage.mp4") == "unreadable"


def test_mp4_cut_before_its_index_is_unreadable(tmp_path: Path) -> None:
    data = _mp4_bytes(tmp_path, faststart=False)  # moov at the end: a cut loses the index
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    assert _skip_reason(tmp_path / "cut.mp4") == "unreadable"


def test_audio_only_has_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "audio.m4a"
    write_audio_only(path)
    assert _skip_reason(path) == "no_video_stream"


def test_video_stream_without_frames_is_zero_length(tmp_path: Path) -> None:
    path = tmp_path / "noframes.avi"  # mp4 drops a track without samples; avi keeps its header
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()  # header and index with an empty track
    assert path.stat().st_size > 0
    assert _skip_reason(path) == "zero_length"


def test_corrupt_payload_is_undecodable(tmp_path: Path) -> None:
    data = bytearray(_mp4_bytes(tmp_path, faststart=True))
    payload = data.index(b"mdat") + 4
    data[payload:] = np.random.default_rng(1).integers(0, 256, len(data) - payload, np.uint8).tobytes()
    (tmp_path / "corrupt.mp4").write_bytes(bytes(data))
    assert _skip_reason(tmp_path / "corrupt.mp4") == "undecodable"


def test_mp4_cut_right_after_its_index_is_undecodable(tmp_path: Path) -> None:
    data = _mp4_bytes(tmp_path, faststart=True)  # moov first: the index survives, the frames do not
    (tmp_path / "cut.mp4").write_bytes(data[: data.index(b"mdat") + 64])
    assert _skip_reason(tmp_path / "cut.mp4") == "undecodable"


def test_one_frame_is_single_frame(tmp_path: Path) -> None:
    path = encode_frames(tmp_path / "still.mp4", textured_frames(1, size=(64, 48)))
    assert _skip_reason(path) == "single_frame"


def test_truncated_data_keeps_the_frames_before_the_cut(tmp_path: Path) -> None:
    data = _mp4_bytes(tmp_path, faststart=True)
    (tmp_path / "half.mp4").write_bytes(data[: len(data) * 2 // 3])
    info = probe_video(tmp_path / "half.mp4")
    assert 1 < info.num_frames < 24
