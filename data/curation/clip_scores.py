"""CLIP scores of a clip from its first, middle and last frames: aesthetics and caption-frame similarity.

RECIPE section 6, "CLIP": embeddings of the first/centre/last frames give the aesthetic score (the LAION predictor)
and the text-image similarity to the captions.

- Embeddings: open_clip ``encode_image`` / ``encode_text``, L2-normalised; frames go through the model's own eval
  transform (resize the short side, centre crop, normalise), exactly as for a PIL image.
- ``aesthetic``: an ``AestheticHead`` on each frame's normalised embedding, averaged over the frames. The head takes
  the two public LAION forms, recognised from the file's keys: the linear predictor (``weight``, ``bias``:
  LAION-AI/aesthetic-predictor, e.g. ``sa_0_4_vit_l_14_linear.pth``) and the improved-aesthetic-predictor MLP
  (``layers.{0,2,4,6,7}.{weight,bias}``: Linear(d,1024)-Dropout-Linear(1024,128)-Dropout-Linear(128,64)-Dropout-
  Linear(64,16)-Linear(16,1), no activations, e.g. ``sac+logos+ava1-l14-linearMSE.pth``). Both were trained on
  normalised ViT-L/14 (OpenAI) embeddings, hence the default model. Scores are on the AVA 1-10 scale. None without
  a head.
- ``clip_similarity``: for each caption, the cosine between its text embedding and each frame embedding, averaged
  over the frames (``caption_similarities``); the clip value averages those over the captions
  (``caption_reduce="mean"``, default) or takes the best one (``"max"``). Mean is the default because training
  draws one of the clip's captions at random, and with ``max`` a caption generated from the frame itself (CoCa)
  would hide a badly aligned source caption. Raw cosines (no logit scale), about 0.15-0.35 for ViT-L/14.

``model="tiny"`` builds a tiny random ViT CLIP (seeded by ``seed``) for tests and offline runs; ``pretrained=None``
gives seeded random weights for any architecture; a hub tag (``"openai"``) or a local file path loads weights
through open_clip, which downloads only when a user names a hub tag. The model is built by
``models.conditioners.open_clip_factory.build_open_clip`` (seeded) and embeds through ``models.clip_scorer.ClipScorer``
(``embed_images``: open_clip's PIL eval transform), the builder and scorer the conditioners and the evaluation use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from data.curation.annotators import Annotator, ClipContext, Option, round_score
from models.clip_scorer import ClipScorer
from models.conditioners.open_clip_factory import Precision, build_open_clip, tiny_open_clip_config


class AestheticHead(nn.Module):
    """The LAION aesthetic predictor on a normalised CLIP image embedding: ``form="linear"`` or ``"mlp"``."""

    MLP_WIDTHS = (1024, 128, 64, 16)

    def __init__(self, dim: int, form: Literal["linear", "mlp"] = "mlp") -> None:
        super().__init__()
        if form == "linear":
            layers: list[nn.Module] = [nn.Linear(dim, 1)]
        elif form == "mlp":
            w = (dim, *self.MLP_WIDTHS)
            layers = [nn.Linear(w[0], w[1]), nn.Dropout(0.2), nn.Linear(w[1], w[2]), nn.Dropout(0.2)]
            layers += [nn.Linear(w[2], w[3]), nn.Dropout(0.1), nn.Linear(w[3], w[4]), nn.Linear(w[4], 1)]
        else:
            raise ValueError(f'form must be "linear" or "mlp"; got {form!r}')
        self.dim, self.form = dim, form
        self.layers = nn.Sequential(*layers)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """(N, dim) normalised embeddings -> (N,) scores."""
        return self.layers(embedding).squeeze(-1)


def _mlp_keys() -> set[str]:
    return {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}


def load_aesthetic_head(path: str | os.PathLike[str]) -> AestheticHead:
    """An ``AestheticHead`` from a ``.safetensors`` file or a ``.pth``/``.pt`` state dict (``weights_only``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"aesthetic head file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    elif path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and set(state) == {"state_dict"}:
            state = state["state_dict"]
    else:
        raise ValueError(f"aesthetic head {path!r}: use a .safetensors or .pth file")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"aesthetic head {path!r} is not a state dict of tensors")
    keys = set(state)
    if keys in ({"weight", "bias"}, {"layers.0.weight", "layers.0.bias"}):
        form: Literal["linear", "mlp"] = "linear"
        state = {f"layers.0.{k.rsplit('.', 1)[-1]}": v for k, v in state.items()}
    elif keys == _mlp_keys():
        form = "mlp"
    else:
        raise ValueError(
            f"aesthetic head {path!r} has keys {sorted(keys)[:12]}; expected the LAION linear predictor "
            f"(weight, bias) or the improved-aesthetic-predictor MLP ({', '.join(sorted(_mlp_keys()))})"
        )
    weight = state["layers.0.weight"]
    if weight.ndim != 2:
        raise ValueError(f"aesthetic head {path!r}: layers.0.weight has shape {tuple(weight.shape)}, expected 2-D")
    head = AestheticHead(int(weight.shape[1]), form)
    try:
        head.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise ValueError(f"aesthetic head {path!r} ({form}) has wrong shapes: {str(e).splitlines()[-1].strip()}") from e
    return head.eval().requires_grad_(False)


@dataclass(frozen=True)
class ClipScoreConfig:
    model: str = "ViT-L-14"  # an open_clip model name, or "tiny"
    pretrained: str | None = "openai"  # hub tag or local file; None = seeded random weights
    aesthetic_head: str | None = None  # .safetensors / .pth of a LAION aesthetic predictor; None = no aesthetic
    caption_reduce: Literal["mean", "max"] = "mean"
    device: str = "cpu"
    precision: Precision = "fp32"
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.caption_reduce not in ("mean", "max"):
            raise ValueError(f'caption_reduce must be "mean" or "max"; got {self.caption_reduce!r}')
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")


def build_clip_scorer(cfg: ClipScoreConfig) -> ClipScorer:
    """The CLIP scorer of ``cfg``: a seeded open_clip model (``model="tiny"``: ``tiny_open_clip_config()``), the
    model's own tokenizer, ``batch_size`` frames and texts per forward."""
    import open_clip

    arch = tiny_open_clip_config() if cfg.model == "tiny" else cfg.model
    model = build_open_clip(arch, pretrained=cfg.pretrained, drop_tower=None, seed=cfg.seed, precision=cfg.precision)
    tokenizer = open_clip.SimpleTokenizer() if cfg.model == "tiny" else open_clip.get_tokenizer(cfg.model)
    return ClipScorer(
        model.to(cfg.device), device=cfg.device, batch_size=cfg.batch_size, tokenizer=tokenizer,
        text_batch_size=cfg.batch_size,
    )  # fmt: skip


class ClipScoreAnnotator(Annotator):
    """``aesthetic`` and ``clip_similarity`` of the clip's first/middle/last frames and its captions so far:
    ``annotate.clip_scores`` turns them on, ``annotate.clip`` configures the model."""

    name = "clip_scores"
    options = (
        Option("clip_scores", bool, True),  # CLIP aesthetics and caption similarity
        Option("clip", ClipScoreConfig, factory=ClipScoreConfig),
    )
    fields = ("aesthetic", "clip_similarity")
    cheap = False

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.clip_cfg = clip = cfg.clip
        self.scorer = build_clip_scorer(clip)
        self.head: AestheticHead | None = None
        if clip.aesthetic_head is not None:
            head = load_aesthetic_head(clip.aesthetic_head)
            dim = self.scorer.embed_texts(["a"]).shape[-1]
            if head.dim != dim:
                raise ValueError(
                    f"aesthetic head {clip.aesthetic_head!r} takes {head.dim}-d embeddings but {clip.model} gives "
                    f"{dim}-d; use the head trained on this CLIP (LAION's heads are for ViT-L-14, 768-d)"
                )
            self.head = head

    @classmethod
    def enabled(cls, cfg: Any) -> bool:
        return bool(cfg.clip_scores)

    @classmethod
    def missing(cls, cfg: Any, field_name: str) -> str | None:
        if field_name == "aesthetic" and (not cfg.clip_scores or cfg.clip.aesthetic_head is None):
            return (
                "no aesthetic head is configured: set annotate.clip.aesthetic_head=<LAION aesthetic predictor file "
                "for the CLIP model> or use a filter set without it (e.g. filters@subsets.<name>.filters=motion_text)"
            )
        return None if cfg.clip_scores else "annotate.clip_scores is off"

    @torch.no_grad()
    def aesthetic(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        """(N,) aesthetic scores of normalised image embeddings; None without a head."""
        return None if self.head is None else self.head(embeddings.float())

    def score_clip(self, frames: np.ndarray | Sequence[np.ndarray], captions: Sequence[str]) -> dict[str, Any]:
        """Scores of one clip from its (first, middle, last) frames and captions (see the module docstring)."""
        if not len(frames):
            raise ValueError("score_clip needs at least one frame")
        images = self.scorer.embed_images(frames)
        scores = self.aesthetic(images)
        per_caption: list[float] = []
        if captions:
            sims = self.scorer.embed_texts(captions) @ images.T  # (captions, frames) cosines
            per_caption = sims.mean(dim=1).tolist()
        reduce = max if self.clip_cfg.caption_reduce == "max" else (lambda v: sum(v) / len(v))
        return {
            "aesthetic": None if scores is None else float(scores.mean()),
            "aesthetic_frames": None if scores is None else scores.tolist(),
            "clip_similarity": float(reduce(per_caption)) if per_caption else None,
            "caption_similarities": per_caption,
        }

    def annotate(self, clip: ClipContext) -> None:
        scores = self.score_clip(clip.frames, list(clip.captions.values()))
        clip.record["aesthetic"] = round_score(scores.get("aesthetic"))
        clip.record["clip_similarity"] = round_score(scores.get("clip_similarity"))
