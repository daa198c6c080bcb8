"""The members of one WebDataset record (``{"__key__", "__url__", ext: bytes}``): which one holds the media, and
the text and json members as Python values. Shared by the sample decoder and the latent cache (a leaf module)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from data.errors import BadSample

VIDEO_EXTENSIONS = ("mp4", "m4v", "mov", "webm", "mkv", "avi")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")


def _member(sample: Mapping[str, Any], extensions: tuple[str, ...]) -> tuple[str, Any] | None:
    for ext in extensions:
        for key in (ext, ext.upper()):
            if key in sample and sample[key] is not None:
                return ext, sample[key]
    return None


def media_members(
    sample: Mapping[str, Any],
) -> tuple[tuple[str, Any] | None, tuple[str, Any] | None]:
    """``(video, image)`` members of a record, one of them None; BadSample("missing_media") if it has neither."""
    video = _member(sample, VIDEO_EXTENSIONS)
    image = None if video is not None else _member(sample, IMAGE_EXTENSIONS)
    if video is None and image is None:
        members = sorted(k for k in sample if not k.startswith("__"))
        raise BadSample("missing_media", f"no video ({'/'.join(VIDEO_EXTENSIONS)}) or image member; has {members}")
    return video, image


def as_text(value: Any) -> str:
    """A text member (``txt``, ``__key__``, ``__url__``) as ``str``, whether it came as bytes or text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        # Undecodable bytes in a caption should not cost the sample; replace them visibly.
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def parse_json(value: Any) -> dict[str, Any]:
    """The sample's json member as a dict; ``BadSample("invalid_json")`` when it does not parse to an object."""
    if isinstance(value, Mapping):  # already decoded upstream (e.g. a webdataset .decode() stage)
        return dict(value)
    try:
        parsed = json.loads(as_text(value))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadSample("invalid_json", f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(parsed, dict):
        raise BadSample("invalid_json", f"expected a json object, got {type(parsed).__name__}")
    return parsed
