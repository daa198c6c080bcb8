"""decode_sample: WebDataset dicts -> the Sample contract, for videos and images, and the bad-sample reasons."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from data.captions import CaptionPicker
from data.errors import BadSample
from data.micro_cond import MicroCondConfig
from data.sample_decode import decode_sample
from data.video_decode import ClipSpec

CLIP = ClipSpec(num_frames=4, target_fps=12, size=(32, 48), start="random", crop="random")
META = {"motion_score": 2.0, "captions": {"coca": "grey frames", "vblip": "grey frames fade", "llm": "fading"}}


def _png(mode: str = "RGB", colour=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (50, 40), colour).save(buf, format="PNG")
    return buf.getvalue()


def _decode(sample, seed: int = 0, **kwargs):
    kwargs.setdefault("clip", CLIP)
    return decode_sample(
        sample, captions=CaptionPicker(), micro=MicroCondConfig(), rng=np.random.default_rng(seed), **kwargs
    )


def test_video_sample(make_mp4):
    counters: Counter[str] = Counter()
    sample = {"__key__": "000001", "__url__": "shards/000.tar", "mp4": make_mp4(), "json": json.dumps(META).encode()}
    out = _decode(sample, counters=counters)
    assert out["frames"].shape == (4, 3, 32, 48) and out["frames"].dtype == torch.uint8
    assert torch.equal(out["image_only_indicator"], torch.zeros(4))
    assert out["fps_id"] == 11  # 24 fps at stride 2 -> 12 fps -> fps_id 11
    assert out["motion_bucket_id"] == 99  # round(90 * log1p(2)): the default log mapping
    assert out["caption"] in META["captions"].values()
    assert (out["key"], out["shard"]) == ("000001", "shards/000.tar")
    assert not counters
    again = _decode(sample)
    assert torch.equal(out["frames"], again["frames"]) and out["caption"] == again["caption"]


def test_video_without_motion_score_gets_the_default_and_is_counted(make_mp4):
    counters: Counter[str] = Counter()
    sample = {"__key__": "k", "mp4": make_mp4(), "json": b'{"caption": "c"}', "txt": b"t"}
    out = _decode(sample, counters=counters)
    assert out["motion_bucket_id"] == 127 and out["caption"] == "c"
    assert counters == Counter({"motion_default": 1})


def test_padded_clip_is_counted(make_mp4):
    counters: Counter[str] = Counter()
    clip = ClipSpec(num_frames=8, target_fps=12, size=(32, 48), start="center", on_short="pad")
    _decode({"__key__": "k", "mp4": make_mp4(num_frames=10), "json": b"{}"}, clip=clip, counters=counters)
    assert counters == Counter({"motion_default": 1, "padded_short": 1, "no_caption": 1})


@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_image_sample_is_a_one_frame_clip(ext):
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (10, 200, 30)).save(buf, format={"jpg": "JPEG"}.get(ext, ext.upper()))
    out = _decode({"__key__": "img1", "__url__": "img/000.tar", ext: buf.getvalue(), "txt": b"a green square"})
    assert out["frames"].shape == (1, 3, 32, 48) and out["frames"].dtype == torch.uint8
    assert torch.equal(out["image_only_indicator"], torch.ones(1))
    assert (out["fps_id"], out["motion_bucket_id"]) == (6, 127)
    assert out["caption"] == "a green square"


def test_image_conversion_is_counted():
    counters: Counter[str] = Counter()
    out = _decode({"__key__": "g", "png": _png("L", 90), "json": b'{"caption": "grey"}'}, counters=counters)
    assert out["caption"] == "grey"
    assert counters == Counter({"image_converted_from_L": 1})
    np.testing.assert_allclose(out["frames"].float().mean().item(), 90, atol=0.5)


def test_json_that_is_already_decoded_is_accepted():
    out = _decode({"__key__": "d", "png": _png(), "json": {"captions": {"coca": "pre-decoded"}}})
    assert out["caption"] == "pre-decoded"


@pytest.mark.parametrize(
    ("sample", "require_json", "reason"),
    [
        ({"__key__": "a", "json": b"{}", "txt": b"x"}, "video", "missing_media"),
        ({"__key__": "a", "mp4": b"\x00" * 10}, "video", "missing_json"),
        ({"__key__": "a", "png": b"x", "txt": b"x"}, "always", "missing_json"),
        ({"__key__": "a", "png": b"x", "json": b"{not json"}, "video", "invalid_json"),
        ({"__key__": "a", "png": b"x", "json": b"[1, 2]"}, "video", "invalid_json"),
        ({"__key__": "a", "png": b"x", "json": b"\xff\xfe"}, "video", "invalid_json"),
        ({"__key__": "a", "png": b"not a png", "txt": b"x"}, "video", "unreadable_image"),
        ({"__key__": "a", "mp4": b"", "json": b"{}"}, "video", "empty_video"),
        ({"__key__": "a", "mp4": b"garbage" * 100, "json": b"{}"}, "never", "corrupt_video"),
    ],
    ids=[
        "no-media",
        "video-no-json",
        "image-no-json-always",
        "bad-json",
        "json-array",
        "json-bytes",
        "bad-image",
        "empty-video",
        "garbage-video",
    ],
)
def test_bad_samples(sample, require_json, reason):
    with pytest.raises(BadSample) as info:
        _decode(sample, require_json=require_json)
    assert info.value.reason == reason


def test_bad_json_is_reported_before_the_video_is_decoded(monkeypatch, make_mp4):
    import data.sample_decode as sample_decode

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded a video whose json is invalid")

    monkeypatch.setattr(sample_decode, "decode_clip", must_not_decode)
    with pytest.raises(BadSample, match="invalid_json"):
        _decode({"__key__": "a", "mp4": make_mp4(), "json": b"{"})


def test_bad_require_json_value():
    with pytest.raises(ValueError, match="require_json"):
        _decode({"__key__": "a", "png": _png()}, require_json="sometimes")
