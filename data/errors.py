"""Why a sample was skipped, or used only after padding. Every skip and every padded sample is counted per reason
(``data/stream_state.py``); skips are reported once each, naming shard and key."""

from __future__ import annotations

from typing import Literal

SkipReason = Literal[
    "corrupt_video",  # decord cannot open or read it (corrupt or truncated mp4, no video stream)
    "empty_video",  # zero frames or zero-length file
    "too_few_frames",  # fewer frames than the clip needs and on_short="skip"
    "missing_media",  # no .mp4 / image member for the key
    "missing_json",  # no .json member (when metadata is required)
    "invalid_json",  # .json that does not parse or is not an object
    "unreadable_image",  # PIL cannot decode it
    "truncated_shard",  # the tar ends mid-member
    "missing_shard",  # the shard file or pipe cannot be opened
    "corrupt_latents",  # a cached KEY.latents.safetensors (data/latent_cache.py) that does not load or is malformed
    "filtered",  # dropped by a metadata filter (not an error; counted separately)
]


# Samples trained on, but not as they came: counted like skips so that a run that learns from padded clips says so.
PadReason = Literal[
    "padded_short",  # a video shorter than the clip, its last frame repeated to fill it (on_short="pad")
]


class BadSample(Exception):
    """A sample that cannot be used; the stream skips it and counts ``reason``."""

    def __init__(self, reason: SkipReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
