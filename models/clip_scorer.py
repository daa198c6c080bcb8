"""L2-normalised CLIP embeddings of frames and texts from a frozen open_clip model: the one CLIP scorer of the
evaluation (``train/evaluation/clip_metrics.py``: CLIPSIM, frame consistency, CLIP features for FD) and of the
curation (``data/curation/clip_scores.py``: aesthetics and caption similarity of a clip).

Frames come in two forms, each with the preprocessing its users have always had:

- ``embed_frames``: uint8 (B, 3, H, W) tensors (generated videos), preprocessed in torch: the short side resized
  to the tower's input size (bicubic, antialiased, like open_clip's ``Resize``), a centre crop, then the tower's
  mean/std. open_clip resizes PIL images, so embeddings differ from its ``preprocess`` by resampling rounding only.
- ``embed_images``: (H, W, 3) uint8 RGB arrays (decoded keyframes), through open_clip's own eval transform of a PIL
  image (``open_clip_factory.eval_transform``), exactly what the LAION aesthetic predictors were trained on.

Texts go through ``tokenizer`` (default ``open_clip.tokenize`` at the model's context length), ``text_batch_size``
texts per forward (None: all in one). Embeddings come back as float32 on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.conditioners.open_clip_factory import build_open_clip, eval_transform, tiny_open_clip_config
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

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        text_batch_size: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; use a positive number of frames per CLIP forward")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        self.text_batch_size = text_batch_size
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        self.mean = torch.tensor(cfg.get("mean", CLIP_MEAN), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", CLIP_STD), dtype=torch.float32).view(1, 3, 1, 1)
        self._transform: Callable[[np.ndarray], torch.Tensor] | None = None

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
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

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
    def embed_images(self, frames: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """(N, D) float32 unit vectors on CPU of (H, W, 3) uint8 RGB frames, through open_clip's PIL transform."""
        if self._transform is None:
            self._transform = eval_transform(self.model)
        dtype = next(self.model.parameters()).dtype
        out = []
        for i in range(0, len(frames), self.batch_size):
            x = torch.stack([self._transform(f) for f in frames[i : i + self.batch_size]])
            emb = self.model.encode_image(x.to(self.device, dtype))
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (M, D) float32 unit vectors on CPU (default tokenizer: ``open_clip.tokenize``, the SD 2.1 / SVD
        one)."""
        step = self.text_batch_size or max(1, len(texts))
        out = []
        for i in range(0, len(texts), step):
            tokens = self._tokenize(list(texts[i : i + step])).to(self.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        if self.tokenizer is not None:
            return self.tokenizer(texts)
        import open_clip

        return open_clip.tokenize(texts, context_length=self.context_length)
