"""CLIP metrics of generated videos: text-video similarity (CLIPSIM) and frame-to-frame consistency.

* **CLIPSIM** (Wu et al., GODIVA; used by Make-A-Video and Video LDM on MSR-VTT): the mean over a video's frames of
  ``cos(text_embedding, frame_embedding)``, then the mean over videos. It is reported here as the raw cosine, the
  scale of RECIPE 7's numbers (Video LDM 0.2929, Make-A-Video 0.3049, with ViT-B/32). torchmetrics' ``CLIPScore``
  reports ``100 * max(cos, 0)`` instead; multiply by 100 to compare with papers that use it.
* **Frame consistency**: the mean cosine between the CLIP image embeddings of consecutive frames (1.0 for a still
  video). It measures temporal smoothness of content, not quality; a frozen video scores best.
* For i2v, ``image_similarity``: the mean cosine between the conditioning image's embedding and each frame's.

The embeddings come from ``models.clip_scorer.ClipScorer`` (shared with the curation's CLIP scores): frames go
through CLIP's preprocessing in torch (``ClipScorer.embed_frames``: the short side resized to the tower's input
size, bicubic and antialiased like open_clip's ``Resize``, a centre crop, then the tower's mean/std).

``ClipScorer.build`` makes a full open_clip ``CLIP`` (both towers) from a model name or config dict (``tiny`` for
tests). ``pretrained=None`` leaves it random, which is only good for tests; real scores need weights: an open_clip tag
(downloads, when the user asks) or a local file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from models.clip_scorer import ClipScorer, check_video
from train.media import read_image


def clip_similarity(text_embedding: torch.Tensor, frame_embeddings: torch.Tensor) -> float:
    """Mean over frames of cos(text, frame): (D,) and (T, D) unit vectors -> a float (x100 for CLIPScore scale)."""
    return float((frame_embeddings.double() @ text_embedding.double()).mean())


def frame_consistency(frame_embeddings: torch.Tensor) -> float:
    """Mean cosine between consecutive frames' unit embeddings (T, D); NaN for a single frame."""
    if frame_embeddings.shape[0] < 2:
        return math.nan
    e = frame_embeddings.double()
    return float((e[1:] * e[:-1]).sum(dim=-1).mean())


@dataclass
class ClipVideoScores:
    """Per-video CLIP scores; ``summary`` gives the means under the metric names logged and printed."""

    clipsim: list[float] = field(default_factory=list)
    image_similarity: list[float] = field(default_factory=list)
    consistency: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, values in (
            ("clipsim", self.clipsim),
            ("clip_image_similarity", self.image_similarity),
            ("clip_consistency", [v for v in self.consistency if not math.isnan(v)]),
        ):
            if values:
                out[name] = sum(values) / len(values)
        return out


def embed_videos(scorer: ClipScorer, videos: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """uint8 (T, 3, H, W) videos -> their (T, D) unit frame embeddings, one video at a time."""
    for video in videos:
        yield scorer.embed_frames(check_video(video))


def score_videos(
    scorer: ClipScorer,
    videos: Iterable[torch.Tensor],
    *,
    prompts: Sequence[str] | None = None,
    images: Sequence[torch.Tensor] | None = None,
    image_paths: Sequence[str | os.PathLike[str]] | None = None,
) -> ClipVideoScores:
    """CLIP scores of uint8 (T, 3, H, W) videos; ``prompts`` (CLIPSIM) or conditioning ``images`` (3, H, W) give
    the per-video reference, one per video in order; consistency is always computed. ``image_paths`` instead of
    ``images``: each conditioning image file read as the sampler read it (``train.media.read_image``: the data
    pipeline's decode, resize and centre crop) at its video's frame size."""
    if image_paths is not None:
        if images is not None:
            raise ValueError("pass images or image_paths, not both")
        images = []
        videos = _reading_images(videos, image_paths, into=images)
    return score_frame_embeddings(scorer, embed_videos(scorer, videos), prompts=prompts, images=images)


def _reading_images(
    videos: Iterable[torch.Tensor], paths: Sequence[str | os.PathLike[str]], *, into: list[torch.Tensor]
) -> Iterator[torch.Tensor]:
    """The videos, in order; before each is yielded its conditioning image is appended to ``into``."""
    for i, video in enumerate(videos):
        if i >= len(paths):
            raise ValueError(f"more videos than conditioning images ({len(paths)}); give one image per video")
        into.append(read_image(paths[i], size=(int(video.shape[-2]), int(video.shape[-1]))))
        yield video


def score_frame_embeddings(
    scorer: ClipScorer,
    frame_embeddings: Iterable[torch.Tensor],
    *,
    prompts: Sequence[str] | None = None,
    images: Sequence[torch.Tensor] | None = None,
) -> ClipVideoScores:
    """``score_videos`` of videos already embedded (``embed_videos``): (T, D) unit frame embeddings per video."""
    scores = ClipVideoScores()
    text_embeddings = scorer.embed_texts(prompts) if prompts else None
    n = 0
    for i, frames in enumerate(frame_embeddings):
        if text_embeddings is not None:
            if i >= len(text_embeddings):
                raise ValueError(f"more videos than prompts ({len(text_embeddings)}); give one prompt per video")
            scores.clipsim.append(clip_similarity(text_embeddings[i], frames))
        if images is not None:  # embedded as the videos arrive (score_videos may read them alongside)
            if i >= len(images):
                raise ValueError(f"more videos than conditioning images ({len(images)}); give one image per video")
            scores.image_similarity.append(clip_similarity(scorer.embed_frames(images[i][None])[0], frames))
        scores.consistency.append(frame_consistency(frames))
        n += 1
    if text_embeddings is not None and n != len(text_embeddings):
        raise ValueError(f"{n} videos for {len(text_embeddings)} prompts; give exactly one prompt per video")
    return scores


__all__ = [
    "ClipScorer",
    "ClipVideoScores",
    "check_video",
    "clip_similarity",
    "embed_videos",
    "frame_consistency",
    "score_frame_embeddings",
    "score_videos",
]
