"""Keyframe-aware clipping: where stream copies may start and end, the clip plan, and clips written by copy (pixel
exact) and by re-encoding (close to the source, upright, even sizes)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from data.curation.clipping import (
    ClippingConfig,
    ClipSpan,
    copy_points,
    copy_points_of,
    keyframe_times,
    plan_clips,
    write_clip,
)
from data.curation.cuts import CutCascade
from data.curation.probe import PacketIndex, VideoInfo, probe_video
from data.curation.scan import scan_video
from data.curation.transitions import CutResult, Transition
from tests.data.curation.video_fixtures import encode_frames, textured_frames


def _info(n: int, fps: float = 24.0) -> VideoInfo:
    return VideoInfo(128, 96, 128, 96, 0, fps, n, n / fps, "h264", False, False)


def _cuts(n: int, scenes: list[tuple[int, int]]) -> CutResult:
    """Transitions between consecutive scenes (a cut where they touch, a crossfade over the gap)."""
    pairs = zip(scenes[:-1], scenes[1:], strict=True)
    transitions = [Transition(b, b, a2, "cut" if a2 == b else "crossfade", ("test",)) for (_, b), (a2, _) in pairs]
    return CutResult(scenes, transitions, n)


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_copy_points_from_decode_order() -> None:
    # I0 P3 B1 B2 P6 B4 B5 I7 P9 B8: ends after each closed mini-GOP, starts at the keyframes
    index = PacketIndex(np.array([0, 3, 1, 2, 6, 4, 5, 7, 9, 8]), np.array([1, 0, 0, 0, 0, 0, 0, 1, 0, 0], bool),
                        Fraction(1, 24))  # fmt: skip
    points = copy_points_of(index)
    assert points.starts == (0, 7) and points.ends == (1, 4, 7, 8, 10)
    assert points.times_s == pytest.approx([i / 24 for i in range(10)])
    # open GOP: the B-frames after I5 show frames 3 and 4, before it, and refer back past it: not a clean start
    open_gop = PacketIndex(np.array([0, 2, 1, 5, 3, 4, 6]), np.array([1, 0, 0, 1, 0, 0, 0], bool), Fraction(1, 24))
    assert copy_points_of(open_gop).starts == (0,)


def test_keyframe_times_are_the_decoded_keyframes(demo_raw_video) -> None:
    raw = demo_raw_video(0, 1)
    times = keyframe_times(raw.path)
    with av.open(str(raw.path)) as container:
        decoded = [float(f.time) for f in container.decode(video=0) if f.key_frame]
    assert times[0] == 0.0 and times == pytest.approx(decoded)
    points = copy_points(raw.path)
    assert points.ends[-1] == raw.meta["num_frames"] and len(points.ends) > len(points.starts)


def test_plan_snaps_starts_forward_and_ends_back_to_keyframes() -> None:
    n, keys = 480, [0, 48, 100, 150, 200, 250, 312, 360, 420]
    cuts = _cuts(n, [(0, 100), (100, 300), (312, 480)])
    spans = plan_clips(cuts, _info(n), [k / 24 for k in keys], ClippingConfig())
    # the keyframe at the cut (100) and after the crossfade (312) are kept: encoders put one at a cut
    assert [(s.start_frame, s.end_frame, s.copy) for s in spans] == [(0, 100, True), (100, 250, True),
                                                                    (312, 480, True)]  # fmt: skip
    assert spans[1].start_s == pytest.approx(100 / 24) and spans[1].end_s == pytest.approx(250 / 24)
    assert [s.scene for s in spans] == [0, 1, 2]
    # with frame-accurate copy ends (no B-frames: every frame), the end only loses the trim
    every = plan_clips(cuts, _info(n), [k / 24 for k in keys], ClippingConfig(), copy_ends=range(1, n + 1))
    assert (every[1].start_frame, every[1].end_frame) == (100, 298)
    exact = plan_clips(cuts, _info(n), [k / 24 for k in keys], ClippingConfig(mode="reencode"))
    assert [(s.start_frame, s.end_frame, s.copy) for s in exact] == [(0, 100, False), (100, 298, False),
                                                                    (312, 480, False)]  # fmt: skip


def test_plan_falls_back_drops_and_splits() -> None:
    n = 200
    cuts = _cuts(n, [(0, 60), (60, 130), (130, 160), (160, 200)])
    keys, ends = [0.0], range(1, n + 1)  # one keyframe: nothing after frame 0 can start a copy
    auto = plan_clips(cuts, _info(n), keys, ClippingConfig(train_frames=1, min_seconds=1.0), copy_ends=ends)
    expected = [(0, 58, True), (62, 128, False), (132, 158, False), (162, 200, False)]
    assert [(s.start_frame, s.end_frame, s.copy) for s in auto] == expected
    copy = plan_clips(
        cuts, _info(n), keys, ClippingConfig(train_frames=1, min_seconds=1.0, mode="copy"), copy_ends=ends
    )
    assert [(s.start_frame, s.end_frame, s.copy) for s in copy] == [(0, 58, True)]
    # without copy ends only keyframes end a copy, and frame 0 is the only one: everything is re-encoded
    assert not any(s.copy for s in plan_clips(cuts, _info(n), keys, ClippingConfig(train_frames=1, min_seconds=1.0)))
    # a copy that would keep less than copy_min_fraction of the scene is re-encoded instead
    late = plan_clips(_cuts(n, [(0, 200)]), _info(n), [0.0, 150 / 24], ClippingConfig(train_frames=1, min_seconds=1.0))
    assert [(s.start_frame, s.end_frame, s.copy) for s in late] == [(0, 200, True)]
    late = plan_clips(
        _cuts(n, [(0, 20), (20, 200)]), _info(n), [0.0, 150 / 24], ClippingConfig(train_frames=1, min_seconds=1.0)
    )
    assert [(s.start_frame, s.end_frame, s.copy) for s in late] == [(22, 200, False)]
    # 150 s at 24 fps with keyframes every 2 s, max 60 s: pieces end at keyframes, none longer than 60 s
    n = 3600
    long = plan_clips(_cuts(n, [(0, n)]), _info(n), [k * 2.0 for k in range(75)], ClippingConfig())
    assert [(s.start_frame, s.end_frame) for s in long] == [(0, 1440), (1440, 2880), (2880, 3600)]
    assert all(s.copy for s in long)


def test_plan_uses_frame_times_for_variable_frame_rate() -> None:
    times = np.cumsum(np.r_[0.0, np.where(np.arange(99) % 2, 1 / 30, 1 / 15)])
    cfg = ClippingConfig(train_frames=1, min_seconds=1.0)
    spans = plan_clips(_cuts(100, [(0, 100)]), _info(100, fps=100 / times[-1]), [0.0], cfg,
                       frame_times=times)  # fmt: skip
    assert spans[0].start_s == 0.0 and spans[0].end_s == pytest.approx(times[-1] + times[-1] / 100)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 distinct frames, 24 fps, a keyframe every 12 frames, B-frames."""
    return encode_frames(tmp_path_factory.mktemp("clips") / "src.mp4", textured_frames(96), gop=12, bframes=2)


def test_copied_clip_is_pixel_exact(source: Path, tmp_path: Path) -> None:
    info, points = probe_video(source), copy_points(source)
    assert points.starts == (0, 12, 24, 36, 48, 60, 72, 84)
    cuts = _cuts(96, [(0, 30), (30, 96)])
    spans = plan_clips(
        cuts, info, keyframe_times(source), ClippingConfig(train_frames=1, min_seconds=1.0), copy_ends=points.ends
    )
    assert all(s.copy for s in spans) and spans[1].start_frame == 36
    reference = _decode(source)
    for i, span in enumerate(spans):
        out = tmp_path / f"clip{i}.mp4"
        result = write_clip(source, span, out, info=info, cfg=ClippingConfig())
        assert (result.method, result.num_frames, result.width, result.height) == ("copy", span.num_frames, 128, 96)
        frames = decord.VideoReader(str(out)).get_batch(list(range(span.num_frames))).asnumpy()
        assert len(decord.VideoReader(str(out))) == span.num_frames
        np.testing.assert_array_equal(frames, reference[span.start_frame : span.end_frame])
        assert probe_video(out).fps == pytest.approx(24.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip0.mp4", "clip1.mp4"]  # no temporary files left


def test_reencoded_clip_is_close_to_the_source(source: Path, tmp_path: Path) -> None:
    info = probe_video(source)
    span = ClipSpan(17, 70, 17 / 24, 70 / 24, copy=False)  # starts and ends inside GOPs
    result = write_clip(source, span, tmp_path / "re.mp4", info=info, cfg=ClippingConfig())
    assert (result.method, result.num_frames, result.fps) == ("reencode", 53, 24.0)
    assert (result.width, result.height) == (128, 96)
    frames = decord.VideoReader(str(tmp_path / "re.mp4")).get_batch(list(range(53))).asnumpy().astype(int)
    assert np.abs(frames - _decode(source)[17:70]).mean() < 4.0


def test_demo_raw_video_scenes_become_exact_copies(demo_raw_video, tmp_path: Path) -> None:
    raw = demo_raw_video(0, 1)
    info = probe_video(raw.path)
    cascade = CutCascade()
    stats = scan_video(raw.path, info, cascade.taps)
    cuts = cascade.result(info)
    spans = plan_clips(cuts, info, keyframe_times(raw.path), ClippingConfig(), frame_times=stats.frame_times_s,
                       copy_ends=copy_points(raw.path).ends)  # fmt: skip
    assert len(spans) >= 3 and all(s.copy for s in spans)
    reference = _decode(raw.path)
    for span in spans:
        out = tmp_path / f"{span.start_frame}.mp4"
        assert write_clip(raw.path, span, out, info=info, cfg=ClippingConfig()).num_frames == span.num_frames
        np.testing.assert_array_equal(_decode(out), reference[span.start_frame : span.end_frame])
        for t in cuts.transitions:  # a clip never holds a transition frame or crosses a cut
            assert span.end_frame <= t.start_frame or span.start_frame >= t.end_frame


def test_variable_frame_rate_copy_and_reencode_pick_frames_by_time(tmp_path: Path) -> None:
    times = np.cumsum(np.r_[0.0, np.where(np.arange(59) % 3, 1 / 30, 1 / 12)])
    path = encode_frames(tmp_path / "vfr.mp4", textured_frames(60), times_s=times, gop=10, bframes=2)
    info = probe_video(path)
    stats = scan_video(path, info, [])
    cuts = _cuts(60, [(0, 25), (25, 60)])
    cfg = ClippingConfig(train_frames=1, min_seconds=0.5)
    for mode in ("copy", "reencode"):
        spans = plan_clips(cuts, info, keyframe_times(path), ClippingConfig(train_frames=1, min_seconds=0.5, mode=mode),
                           frame_times=stats.frame_times_s, copy_ends=copy_points(path).ends)  # fmt: skip
        assert len(spans) == 2 and spans[1].start_s == pytest.approx(times[spans[1].start_frame], abs=1e-3)
        for i, span in enumerate(spans):
            out = tmp_path / f"{mode}{i}.mp4"
            assert write_clip(path, span, out, info=info, cfg=cfg).num_frames == span.num_frames
            error = np.abs(_decode(out).astype(int) - _decode(path)[span.start_frame : span.end_frame]).mean()
            assert error == 0 if mode == "copy" else error < 4.0


def test_odd_resolution_is_cropped_to_even_on_reencode(tmp_path: Path) -> None:
    frames = textured_frames(30, size=(65, 49))
    path = encode_frames(tmp_path / "odd.mp4", frames, pix_fmt="yuv444p")
    info = probe_video(path)
    spans = plan_clips(_cuts(30, [(0, 30)]), info, [], ClippingConfig(train_frames=1, min_seconds=1.0))
    assert [s.copy for s in spans] == [False]  # no keyframe time given: nothing to copy from
    result = write_clip(path, spans[0], tmp_path / "even.mp4", info=info, cfg=ClippingConfig())
    assert (result.method, result.width, result.height, result.num_frames) == ("reencode", 64, 48, 30)
    out = _decode(tmp_path / "even.mp4").astype(int)
    assert out.shape == (30, 48, 64, 3) and np.abs(out - _decode(path)[:, :48, :64]).mean() < 4.0


@pytest.mark.parametrize("rotation", [90, 270])
def test_rotation_is_kept_on_copy_and_applied_on_reencode(tmp_path: Path, rotation: int) -> None:
    path = encode_frames(tmp_path / "phone.mp4", textured_frames(36), rotation_cw=rotation, gop=12)
    info = probe_video(path)
    coded = _decode(path)
    copy = write_clip(
        path, ClipSpan(12, 36, 0.5, 1.5, copy=True), tmp_path / "copy.mp4", info=info, cfg=ClippingConfig()
    )
    copied = probe_video(tmp_path / "copy.mp4")
    assert (copy.width, copy.height, copied.rotation) == (96, 128, rotation)
    np.testing.assert_array_equal(_decode(tmp_path / "copy.mp4"), coded[12:36])  # same coded frames + the tag
    span = ClipSpan(5, 30, 5 / 24, 30 / 24, copy=False)
    re = write_clip(path, span, tmp_path / "re.mp4", info=info, cfg=ClippingConfig())
    upright = probe_video(tmp_path / "re.mp4")
    assert (re.width, re.height, upright.rotation, upright.width, upright.height) == (96, 128, 0, 96, 128)
    expected = np.rot90(coded[5:30], k=-rotation // 90, axes=(1, 2)).astype(int)
    assert np.abs(_decode(tmp_path / "re.mp4").astype(int) - expected).mean() < 4.0


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="min_seconds"):
        ClippingConfig(train_frames=1, min_seconds=5.0, max_seconds=2.0)
    with pytest.raises(ValueError, match="mode"):
        ClippingConfig(mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="train_frames"):
        ClippingConfig(train_frames=0)


@pytest.mark.parametrize(("fps", "frames"), [(25.0, 53), (24.0, 48), (30.0, 60), (50.0, 100), (12.0, 27)])
def test_minimum_clip_covers_a_training_clip(fps: float, frames: int) -> None:
    """The default covers Stage III's 14 frames at 7 fps: 53 frames of a 25 fps video (2.12 s, over the 2 s
    minimum), and 27 of a 12 fps one (stride 2); elsewhere the 2 s minimum is the longer."""
    cfg = ClippingConfig()
    assert cfg.min_frames(fps) == frames
    assert ClippingConfig(train_frames=25).min_frames(25.0) == 97  # SVD-XT: 25 frames at stride 4
    assert ClippingConfig(train_fps=None).min_frames(25.0) == 50  # native rate: 14 frames, the 2 s minimum wins


def test_no_clip_is_written_that_training_would_skip_as_too_short() -> None:
    """A 2.08 s scene of a 25 fps video (52 frames) passes the 2 s minimum but holds no 14-frame clip at 7 fps
    (53 frames), so it is not planned; a 53-frame scene is, and the training decoder takes a clip from it."""
    from data.video_decode import ClipSpec, clip_indices, stride_for

    n = 52 + 53
    spans = plan_clips(_cuts(n, [(0, 52), (52, n)]), _info(n, fps=25.0), [0.0, 52 / 25], ClippingConfig(trim_seconds=0))
    assert [(s.start_frame, s.end_frame) for s in spans] == [(52, n)]
    spec = ClipSpec(num_frames=14, target_fps=7.0, start="center")
    assert len(clip_indices(spans[0].num_frames, stride=stride_for(25.0, spec), spec=spec, rng=None)[0]) == 14
