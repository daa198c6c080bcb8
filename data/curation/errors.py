"""Why a raw video (or one of its clips) was skipped, and what was handled on the way; both are counted in the report.

Skips drop the input; notes mark inputs that were used after a correction (a rotated phone video, a variable frame
rate, an odd resolution, a clip that had to be re-encoded). Neither ever crashes a run. Skips and notes count
videos, except ``reencoded`` (clips) and ``annotator_error`` (clips whose annotation failed).
"""

from __future__ import annotations

from typing import Literal

SkipReason = Literal[
    "unreadable",  # the file cannot be opened as a container at all
    "no_video_stream",  # a container without a video stream (audio only, subtitles, ...)
    "undecodable",  # the video stream does not decode (corrupt or truncated data)
    "zero_length",  # an empty file or a stream with zero decodable frames
    "single_frame",  # one decodable frame: a still image in a video container
    "too_short",  # shorter than the minimum clip length, so no clip can come out of it
    "no_clips",  # decodable, but every scene was shorter than the minimum clip length
    "annotator_error",  # an annotator raised on this clip (logged with the traceback's last line)
]

NoteReason = Literal[
    "rotated",  # rotation metadata applied (frames delivered in display orientation)
    "variable_frame_rate",  # frame times taken from timestamps rather than index / fps
    "odd_resolution",  # odd width or height (kept; clips re-encoded to even sizes when needed)
    "reencoded",  # a clip that could not be cut by stream copy and was re-encoded
    "truncated",  # decoding stopped early (damaged or cut-off data): clips come from the frames that decoded
]

SKIP_REASONS: tuple[str, ...] = SkipReason.__args__  # type: ignore[attr-defined]
NOTE_REASONS: tuple[str, ...] = NoteReason.__args__  # type: ignore[attr-defined]


class CurationSkip(Exception):
    """An input (or a clip of it) that cannot be curated; the pipeline logs one line, counts ``reason``, goes on."""

    def __init__(self, reason: SkipReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
