"""CLIP metrics of generated videos: text-video similarity (CLIPSIM) and frame-to-frame consistency.

* **CLIPSIM** (Wu et al., GODIVA; used by Make-A-Video and Video LDM on MSR-VTT): the mean over a video's frames of
  ``cos(text_embedding, frame_embedding)``, then the mean over videos. It is reported here as the raw cosine, the
  scale of RECIPE 7's numbers (Video LDM 0.2929, Make-A-Video 0.3049, with ViT-B/32). torchmetrics' ``CLIPScore``
  reports ``100 * max(cos, 0)`` instead; multiply by 100 to compare with papers that use it.
* **Frame consistency**: the mean cosine between the CLIP image embeddings of consecutive frames (1.0 for a still
  video). It measures temporal smoothness of content, not quality; a frozen video scores best.
* For i2v, ``image_similarity``: the mean cosine between the conditioning image's embedding and each frame's.

Frames go through CLIP's preprocessing in torch: the short side resized to the tower's input size (bicubic,
antialiased, like open_clip's ``Resize``), a centre crop, then the tower's mean/std. open_clip resizes PIL images,
so embeddings differ from its ``preprocess`` by resampling rounding only.

``ClipScorer.build`` makes a full open_clip ``CLIP`` (both towers) from a model name or config dict (``tiny`` for
tests). ``pretrained=None`` leaves it random, which is only good for tests; real scores need weights: an open_clip tag
(downloads, when the user asks) or a local file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.conditioners.open_clip_factory import build_open_clip, tiny_open_clip_config
from models.conditioners.open_clip_image import CLIP_MEAN, CLIP_STD


def check_video(video: torch.Tensor) -> torch.Tensor:
    if video.ndim != 4 or video.shape[1] != 3 or video.dtype != torch.uint8:
        raise ValueError(
            f"a video must be uint8 (T, 3, H, W); got {video.dtype} {tuple(video.shape)}. sample_video returns "
            "(T, H, W, 3): permute(0, 3, 1, 2) it first"
        )
    return video


class ClipScorer:
    """L2-normalised CLIP embeddings of uint8 frames and of texts (frozen, eval mode, no gradients)."""

    def __init__(self, model: nn.Module, *, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; use a positive number of frames per CLIP forward")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        self.mean = torch.tensor(cfg.get("mean", CLIP_MEAN), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", CLIP_STD), dtype=torch.float32).view(1, 3, 1, 1)
        self.embed_dim = int(model.text_projection.shape[1])

    @classmethod
    def build(
        cls,
        arch: str | Mapping[str, Any],
        *,
        pretrained: str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ) -> ClipScorer:
        """``arch`` is an open_clip model name or config dict; ``"tiny"`` is ``tiny_open_clip_config()``."""
        model = build_open_clip(
            tiny_open_clip_config() if arch == "tiny" else arch, pretrained=pretrained, drop_tower=None
        )
        return cls(model, device=device, batch_size=batch_size)

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def context_length(self) -> int:
        return int(self.model.positional_embedding.shape[0])

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float (B, 3, S, S): short side to S (bicubic, antialias), centre crop, mean/std."""
        x = frames.to(self.device, torch.float32) / 255.0
        out_h, out_w = self.image_size
        h, w = x.shape[-2:]
        scale = max(out_h / h, out_w / w)
        new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp(0.0, 1.0)
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
        x = x[:, :, top : top + out_h, left : left + out_w]
        return (x - self.mean.to(self.device)) / self.std.to(self.device)

    @torch.no_grad()
    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> (B, D) float32 unit vectors on CPU, ``batch_size`` frames per forward."""
        frames = check_video(frames)
        dtype = self.model.visual.conv1.weight.dtype
        out = [
            F.normalize(self.model.encode_image(self.preprocess(chunk).to(dtype)).float(), dim=-1)
            for chunk in frames.split(self.batch_size)
        ]
        return torch.cat(out).cpu()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (B, D) float32 unit vectors on CPU (``open_clip.tokenize``, the SD 2.1 / SVD tokenizer)."""
        import open_clip

        tokens = open_clip.tokenize(list(texts), context_length=self.context_length).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()


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
) -> ClipVideoScores:
    """CLIP scores of uint8 (T, 3, H, W) videos; ``prompts`` (CLIPSIM) or conditioning ``images`` (3, H, W) give
    the per-video reference, one per video in order; consistency is always computed."""
    return score_frame_embeddings(scorer, embed_videos(scorer, videos), prompts=prompts, images=images)


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
    image_embeddings = torch.cat([scorer.embed_frames(image[None]) for image in images]) if images else None
    n = 0
    for i, frames in enumerate(frame_embeddings):
        if text_embeddings is not None:
            if i >= len(text_embeddings):
                raise ValueError(f"more videos than prompts ({len(text_embeddings)}); give one prompt per video")
            scores.clipsim.append(clip_similarity(text_embeddings[i], frames))
        if image_embeddings is not None:
            scores.image_similarity.append(clip_similarity(image_embeddings[i], frames))
        scores.consistency.append(frame_consistency(frames))
        n += 1
    if text_embeddings is not None and n != len(text_embeddings):
        raise ValueError(f"{n} videos for {len(text_embeddings)} prompts; give exactly one prompt per video")
    return scores
