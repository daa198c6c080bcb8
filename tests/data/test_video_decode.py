"""decode_clip: which frames, at which stride, in which window, and how bad videos are reported."""

from __future__ import annotations

import gc
import io
import os
import tempfile
import weakref

import numpy as np
import pytest
import torch

from data.errors import BadSample
from data.transforms import to_model_range
from data.video_decode import ClipSpec, bmff_truncation, clip_indices, container_kind, decode_clip, stride_for
from tests.data.curation.annot_fixtures import set_rotation

SIZE = (32, 48)


def _indices_seen(clip, frame_index) -> list[int]:
    return [frame_index(f) for f in clip.frames]


def test_native_fps_centred_clip_decodes_the_middle_frames(make_mp4, frame_index):
    clip = decode_clip(make_mp4(), ClipSpec(num_frames=14, size=SIZE, start="center"))
    assert clip.stride == 1 and clip.native_fps == pytest.approx(24.0) and clip.effective_fps == pytest.approx(24.0)
    assert clip.frame_indices == tuple(range(13, 27))
    assert _indices_seen(clip, frame_index) == list(range(13, 27))
    assert clip.frames.shape == (14, 3, *SIZE) and clip.frames.dtype == torch.uint8 and clip.frames.is_contiguous()
    model_input = to_model_range(clip.frames)
    assert model_input.min() >= -1.0 and model_input.max() <= 1.0


def test_target_fps_sets_the_stride(make_mp4, frame_index):
    clip = decode_clip(make_mp4(), ClipSpec(num_frames=14, target_fps=8, size=SIZE, start="center"))
    assert clip.stride == 3 and clip.effective_fps == pytest.approx(8.0)
    assert clip.frame_indices == tuple(range(0, 40, 3))
    assert _indices_seen(clip, frame_index) == list(range(0, 40, 3))


def test_stride_rounding_and_max_stride():
    assert stride_for(30.0, ClipSpec(target_fps=7)) == 4  # 30 / 7 = 4.29
    assert stride_for(24.0, ClipSpec(target_fps=30)) == 1  # a faster target never goes below stride 1
    assert stride_for(60.0, ClipSpec(target_fps=6)) == 10
    assert stride_for(60.0, ClipSpec(target_fps=6, max_stride=4)) == 4
    assert stride_for(60.0, ClipSpec(target_fps=None)) == 1


def test_random_start_is_reproducible_and_varies(make_mp4, frame_index):
    spec = ClipSpec(num_frames=4, target_fps=12, size=SIZE, start="random")
    a = decode_clip(make_mp4(), spec, rng=np.random.default_rng(7))
    b = decode_clip(make_mp4(), spec, rng=np.random.default_rng(7))
    assert a.frame_indices == b.frame_indices and torch.equal(a.frames, b.frames)
    assert _indices_seen(a, frame_index) == list(a.frame_indices)
    starts = {clip_indices(40, stride=2, spec=spec, rng=np.random.default_rng(s))[0][0] for s in range(20)}
    assert len(starts) > 5 and min(starts) >= 0 and max(starts) <= 40 - 7


def test_random_start_without_rng_is_a_clear_error(make_mp4):
    with pytest.raises(ValueError, match="rng"):
        decode_clip(make_mp4(), ClipSpec(num_frames=4, size=SIZE, start="random"))


def test_only_the_clip_frames_are_decoded(make_mp4, monkeypatch):
    import decord

    calls: list[list[int]] = []
    original = decord.VideoReader.get_batch

    def spy(self, indices):
        calls.append(list(indices))
        return original(self, indices)

    def no_single_frames(self, idx):
        raise AssertionError("decode_clip must not read frames one by one")

    monkeypatch.setattr(decord.VideoReader, "get_batch", spy)
    monkeypatch.setattr(decord.VideoReader, "__getitem__", no_single_frames)
    clip = decode_clip(make_mp4(), ClipSpec(num_frames=5, target_fps=6, size=SIZE, start="center"))
    assert calls == [list(clip.frame_indices)] and len(calls[0]) == 5


def test_resize_and_crop_to_a_wider_target(make_mp4, frame_index):
    # 64x48 source, 16x64 target: the width drives the scale (48x64 after resize), then a centred 16-row band.
    spec = ClipSpec(num_frames=2, size=(16, 64), start="center", crop="random")
    clip = decode_clip(make_mp4(), spec, rng=np.random.default_rng(0))
    assert clip.frames.shape == (2, 3, 16, 64)
    assert _indices_seen(clip, frame_index) == [19, 20]


@pytest.mark.parametrize("faststart", [True, False], ids=["moov-first", "moov-last"])
@pytest.mark.parametrize("keep", [0.9, 0.5, 0.3, 0.05])
def test_truncated_mp4_is_corrupt_and_never_reaches_decord(make_mp4, monkeypatch, faststart, keep):
    # decord opens a moov-first file cut mid-mdat, over-reports len() and can segfault in get_batch, so the
    # truncation must be caught from the box structure before decord is called at all.
    import decord

    data = make_mp4(num_frames=40, faststart=faststart)
    cut = data[: int(len(data) * keep)]
    assert bmff_truncation(cut) is not None

    def must_not_open(*args, **kwargs):
        raise AssertionError("a truncated mp4 reached decord")

    monkeypatch.setattr(decord, "VideoReader", must_not_open)
    with pytest.raises(BadSample) as info:
        decode_clip(cut, ClipSpec(num_frames=4, size=SIZE, start="center"))
    assert info.value.reason == "corrupt_video"


def test_complete_mp4_passes_the_structure_check(make_mp4):
    assert bmff_truncation(make_mp4(faststart=True)) is None
    assert bmff_truncation(make_mp4(faststart=False)) is None
    assert bmff_truncation(b"\x1aE\xdf\xa3 not an mp4 (webm magic)") is None  # left to decord


@pytest.mark.parametrize("tail", [b"\x00\x01\x02", b"trailing junk from a downloader"], ids=["short", "long"])
@pytest.mark.parametrize("faststart", [True, False], ids=["moov-first", "moov-last"])
def test_trailing_junk_after_a_complete_mp4_is_tolerated(make_mp4, frame_index, tail, faststart):
    data = make_mp4(faststart=faststart) + tail
    assert bmff_truncation(data) is None
    clip = decode_clip(data, ClipSpec(num_frames=3, size=SIZE, start="center"))
    assert _indices_seen(clip, frame_index) == [18, 19, 20]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty_video"),
        (np.random.default_rng(0).bytes(5000), "corrupt_video"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", "corrupt_video"),  # header only, no moov
    ],
    ids=["empty", "random-bytes", "ftyp-only"],
)
def test_unusable_bytes(data, reason):
    with pytest.raises(BadSample) as info:
        decode_clip(data, ClipSpec(num_frames=4, size=SIZE, start="center"))
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x00\x00\x00\x20ftypisom", "mp4"),
        (b"\x00\x00\x00\x08wide\x00\x00", "mp4"),
        (b"\x1a\x45\xdf\xa3\x01\x00", "matroska"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "avi"),
        (b"FLV\x01\x05", "flv"),
        (b"OggS\x00\x02", "ogg"),
        (b"\x00\x00\x01\xba\x44", "mpeg"),
        (b"\x47" + b"\x00" * 187 + b"\x47\x00", "mpegts"),
        (b"<html><body>404 Not Found</body></html>", None),
        (b"\x89PNG\r\n\x1a\n\x00\x00", None),
    ],
)
def test_container_kind(head, kind):
    assert container_kind(head) == kind


def test_unrecognised_bytes_never_reach_decord(monkeypatch):
    # decord leaks ~50 KB per failed open and dumps the bytes to stderr, so garbage is stopped before it.
    import decord

    def must_not_open(*args, **kwargs):
        raise AssertionError("garbage reached decord")

    monkeypatch.setattr(decord, "VideoReader", must_not_open)
    for data in (b"<html>404</html>", np.random.default_rng(3).bytes(4000), b"\x89PNG\r\n\x1a\n" + b"\x00" * 64):
        with pytest.raises(BadSample, match="unrecognised container"):
            decode_clip(data, ClipSpec(num_frames=4, size=SIZE, start="center"))


def test_mp4_without_video_stream_is_corrupt():
    import av

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "audio.mp4")
        with av.open(path, mode="w", format="mp4") as container:
            stream = container.add_stream("aac", rate=16000)
            stream.layout = "mono"
            for i in range(10):
                samples = np.zeros((1, 1024), dtype=np.float32)
                frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, i * 1024
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        data = open(path, "rb").read()
    with pytest.raises(BadSample) as info:
        decode_clip(data, ClipSpec(num_frames=4, size=SIZE, start="center"))
    assert info.value.reason == "corrupt_video"


def test_read_failure_after_open_is_corrupt(make_mp4, monkeypatch):
    # A reader whose len() over-reports fails in get_batch; that must be a skip, not a crash.
    import decord

    def failing(self, indices):
        raise decord.DECORDError("av_read_frame failed with 1094995529")

    monkeypatch.setattr(decord.VideoReader, "get_batch", failing)
    with pytest.raises(BadSample) as info:
        decode_clip(make_mp4(), ClipSpec(num_frames=4, size=SIZE, start="center"))
    assert info.value.reason == "corrupt_video" and "DECORDError" in info.value.detail


def test_too_few_frames_skip(make_mp4):
    with pytest.raises(BadSample) as info:
        decode_clip(make_mp4(num_frames=10), ClipSpec(num_frames=14, size=SIZE, start="center"))
    assert info.value.reason == "too_few_frames"
    with pytest.raises(BadSample, match="too_few_frames"):  # 40 frames but 14 at stride 4 span 53
        decode_clip(make_mp4(), ClipSpec(num_frames=14, target_fps=6, size=SIZE, start="center"))


def test_too_few_frames_pad_repeats_the_last_frame(make_mp4, frame_index):
    spec = ClipSpec(num_frames=8, target_fps=12, size=SIZE, start="center", on_short="pad")
    clip = decode_clip(make_mp4(num_frames=10), spec)
    assert clip.stride == 2 and clip.num_padded == 3
    assert clip.frame_indices == (0, 2, 4, 6, 8, 8, 8, 8)
    assert _indices_seen(clip, frame_index) == [0, 2, 4, 6, 8, 8, 8, 8]
    assert torch.equal(clip.frames[4], clip.frames[7])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_frames": 0},
        {"target_fps": 0.0},
        {"size": (0, 32)},
        {"size": (32,)},
        {"start": "middle"},
        {"crop": "left"},
        {"on_short": "loop"},
        {"max_stride": 0},
    ],
)
def test_clip_spec_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        ClipSpec(**kwargs)


def test_a_fresh_reader_per_sample_is_released(make_mp4, monkeypatch):
    # decord leaks when readers live long: each decode opens its own reader from the bytes and drops it.
    import decord

    refs: list[weakref.ref] = []
    original = decord.VideoReader

    def tracking(*args, **kwargs):
        assert isinstance(args[0], io.BytesIO)
        reader = original(*args, **kwargs)
        refs.append(weakref.ref(reader))
        return reader

    monkeypatch.setattr(decord, "VideoReader", tracking)
    for _ in range(3):
        decode_clip(make_mp4(), ClipSpec(num_frames=2, size=SIZE, start="center"))
    gc.collect()
    assert len(refs) == 3 and all(ref() is None for ref in refs)


def test_keep_decode_buffers_runs_once_per_process():
    # Process-wide heap tuning: run it in a child so this test process keeps the default allocator behaviour.
    import subprocess
    import sys

    code = (
        "import platform; from data.video_decode import keep_decode_buffers as k; "
        "r = k(); assert k() is r; assert r or platform.libc_ver()[0] != 'glibc'; print(r)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() in ("True", "False")


def _mp4_of(frame: np.ndarray, *, num_frames: int = 4, with_audio: bool = False) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast"}
        if with_audio:
            container.add_stream("aac", rate=44100)
        for _ in range(num_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
def test_rotation_metadata_gives_display_orientation(degrees):
    """Phone videos: decord applies the track's display matrix, so frames arrive as players show them."""
    frame = np.zeros((64, 96, 3), dtype=np.uint8)  # (H, W): white top-left quadrant on black
    frame[:32, :48] = 255
    data = set_rotation(_mp4_of(frame, with_audio=True), degrees)
    size = (64, 96) if degrees in (0, 180) else (96, 64)
    clip = decode_clip(data, ClipSpec(num_frames=2, size=size, start="center"))
    got = clip.frames[0].float().mean(0)  # (H, W) in display orientation
    expected = torch.from_numpy(np.rot90(frame[..., 0], k=-degrees // 90).copy()).float()
    assert got.shape == expected.shape
    assert (got - expected).abs().mean() < 8, f"rotation {degrees}: decoded frame not in display orientation"
