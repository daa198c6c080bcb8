"""OpenCLIP image embedding of the conditioning frame (SVD embedder 0, ``cond_frames_without_noise``).

Mirrors sgm's ``FrozenOpenCLIPImageEmbedder`` (default settings: no tokens, no crops) and
``FrozenOpenCLIPImagePredictionEmbedder`` so that the state dict is ``open_clip.model.*`` exactly as in the
released checkpoints (RECIPE 2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.conditioners.image_resize import ResizeMode, resize_bicubic
from models.conditioners.open_clip_factory import build_open_clip, freeze_

# open_clip.constants.OPENAI_DATASET_MEAN / _STD (the values the ViT-H-14 laion2b weights were trained with);
# repeated here so that building the module does not import open_clip's constants before it is needed.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class FrozenOpenCLIPImageEmbedder(nn.Module):
    """Projected OpenCLIP image embedding: ``(B, 3, H, W)`` in [-1, 1] -> ``(B, embed_dim)`` (1024 for ViT-H-14).

    Preprocessing: antialiased bicubic resize to the tower's input size (224 for ViT-H-14), [-1, 1] -> [0, 1],
    then CLIP mean/std normalisation. ``resize="kornia"`` reproduces the official kornia resize bit for bit
    (see ``image_resize``); ``"torch"`` uses ``F.interpolate(antialias=True)``.
    """

    def __init__(
        self,
        arch: str | Mapping[str, Any] = "ViT-H-14",
        *,
        pretrained: str | None = None,
        freeze: bool = True,
        resize: ResizeMode = "kornia",
    ) -> None:
        super().__init__()
        if resize not in ("torch", "kornia"):
            raise ValueError(f"resize={resize!r}; choose 'torch' or 'kornia'")
        self.model = build_open_clip(arch, pretrained=pretrained, drop_tower="text")
        self.resize = resize
        self.frozen = freeze
        self.register_buffer("mean", torch.tensor(CLIP_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD), persistent=False)
        self._fingerprint: str | None = None
        # New weights make a new embedder: forget the fingerprint (the hook runs for this module whichever ancestor
        # load_state_dict is called on).
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_fingerprint", None))
        if freeze:
            freeze_(self)

    def train(self, mode: bool = True) -> FrozenOpenCLIPImageEmbedder:
        # A frozen embedder stays in eval mode when a parent module is put in training mode.
        return super().train(mode and not self.frozen)

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, 3, S, S)`` CLIP-normalised input."""
        x = resize_bicubic(x, self.image_size, mode=self.resize)
        x = (x + 1.0) / 2.0
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)

    def fingerprint(self) -> str:
        """sha256 (hex) of everything that decides the embedding: the preprocessing (input size, resize flavour,
        mean, std) and every tensor of the visual tower rounded to bfloat16, so the same weights held in float32 or
        bfloat16 (a cache made in bf16, a bf16-true trainer) have one fingerprint. Computed once and kept until new
        weights are loaded (``load_state_dict``)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(repr((self.image_size, self.resize, CLIP_MEAN, CLIP_STD)).encode())
            for name, tensor in sorted(self.model.visual.state_dict().items()):
                value = tensor.detach().to("cpu", torch.bfloat16).contiguous()
                digest.update(f"{name}:{tuple(value.shape)}".encode())
                digest.update(value.view(torch.int16).numpy().tobytes())  # numpy has no bfloat16
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    @property
    def has_fingerprint(self) -> bool:
        """Whether ``fingerprint()`` is known already (no weights read: nothing to gather under ZeRO-3)."""
        return self._fingerprint is not None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W) in [-1, 1], got shape {tuple(image.shape)}")
        x = self.preprocess(image).to(self.model.visual.conv1.weight.dtype)
        return self.model.visual(x).to(image.dtype)  # (B, embed_dim)


class FrozenOpenCLIPImagePredictionEmbedder(nn.Module):
    """Wraps the image embedder into the crossattn token(s): ``(B * n_cond_frames, 3, H, W) -> (B * n_copies,
    n_cond_frames, D)``. SVD uses ``n_cond_frames=1, n_copies=1``, i.e. one context token ``(B, 1, 1024)``.

    ``n_copies > 1`` repeats each sample's tokens (``(b s)`` order, as sgm), e.g. once per video frame.
    """

    def __init__(self, open_clip: FrozenOpenCLIPImageEmbedder, *, n_cond_frames: int = 1, n_copies: int = 1) -> None:
        super().__init__()
        if n_cond_frames < 1 or n_copies < 1:
            raise ValueError(f"n_cond_frames={n_cond_frames} and n_copies={n_copies} must both be >= 1")
        self.open_clip = open_clip
        self.n_cond_frames = n_cond_frames
        self.n_copies = n_copies

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.shape[0] % self.n_cond_frames:
            raise ValueError(
                f"batch of {frames.shape[0]} images is not a multiple of n_cond_frames={self.n_cond_frames}; "
                "stack the conditioning frames as (B * n_cond_frames, 3, H, W)"
            )
        return self._tokens(self.open_clip(frames))  # (B * t, D) -> (B * n_copies, t, D)

    def _tokens(self, z: torch.Tensor) -> torch.Tensor:
        z = z.reshape(-1, self.n_cond_frames, z.shape[-1])  # (B * t, D) -> (B, t, D)
        return z.repeat_interleave(self.n_copies, dim=0)  # (B * n_copies, t, D)

    def fingerprint(self) -> str:
        """The image tower's fingerprint (what a latent cache records next to its embeddings)."""
        return self.open_clip.fingerprint()

    @property
    def has_fingerprint(self) -> bool:
        return self.open_clip.has_fingerprint

    def embed_cached(self, embedding: torch.Tensor) -> torch.Tensor:
        """The tokens ``forward`` would give, from precomputed tower outputs: ``(B, n_cond_frames, D)`` (a latent
        cache's ``clip_image_embedding``) or ``(B * n_cond_frames, D)``; the tower does not run."""
        d = self.open_clip.embed_dim
        if embedding.ndim not in (2, 3) or embedding.shape[-1] != d or embedding.numel() % (self.n_cond_frames * d):
            raise ValueError(
                f"cached CLIP image embeddings of shape {tuple(embedding.shape)} do not fit this tower "
                f"(n_cond_frames={self.n_cond_frames}, embed_dim={d}); cache them with the conditioner's CLIP model"
            )
        if embedding.ndim == 3 and embedding.shape[1] != self.n_cond_frames:
            raise ValueError(f"cached embeddings carry {embedding.shape[1]} frames; expected {self.n_cond_frames}")
        return self._tokens(embedding.reshape(-1, d))
