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
through open_clip, which downloads only when a user names a hub tag. ``data/`` does not import ``models/``, so the
builder here (shared with ``captioner.py``) calls open_clip directly.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

Precision = Literal["fp32", "fp16", "bf16"]
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# A tiny ViT CLIP for CPU tests (seeded random weights); the text tower keeps the real tokenizer's vocab and context.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def build_open_clip_model(
    name: str,
    *,
    pretrained: str | None,
    seed: int = 0,
    device: str = "cpu",
    precision: Precision = "fp32",
    tiny: tuple[Callable[..., nn.Module], Mapping[str, Any]] | None = None,
) -> nn.Module:
    """An open_clip model in eval mode without gradients. ``name="tiny"`` builds ``tiny = (cls, config)``; other
    names go to ``open_clip.create_model``. Random initialisation is seeded without touching the global RNG."""
    import open_clip

    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of {sorted(_DTYPES)}; got {precision!r}")
    if pretrained is not None and pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        if not os.path.isfile(pretrained):
            raise ValueError(f"pretrained weights file {pretrained!r} does not exist")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "tiny":
            if tiny is None:
                raise ValueError('model="tiny" is not available here; pass an open_clip model name')
            cls, cfg = tiny
            model = cls(**copy.deepcopy(dict(cfg)))
            if pretrained is not None:
                if not os.path.isfile(pretrained):
                    raise ValueError(f'model="tiny" needs pretrained=None or a local weights file; got {pretrained!r}')
                open_clip.load_checkpoint(model, pretrained)
            model = model.to(_DTYPES[precision])
        else:
            if ":" not in name and open_clip.get_model_config(name) is None:
                raise ValueError(
                    f"open_clip has no model named {name!r}; use one of open_clip.list_models() (e.g. 'ViT-L-14', "
                    "'coca_ViT-L-14') or 'tiny'"
                )
            model = open_clip.create_model(name, pretrained=pretrained, precision=precision, device="cpu")
        decoder = getattr(model, "text_decoder", None)
        if pretrained is None and decoder is not None:
            # open_clip never runs CoCa's MultimodalTransformer.init_parameters, so its text_projection is left as
            # torch.empty memory; give it the init that method intends, so random-weight captioners are seeded.
            width = decoder.text_projection.shape[0]
            with torch.no_grad():
                decoder.text_projection.normal_(std=width**-0.5)
    return model.to(device).eval().requires_grad_(False)


def frame_transform(model: nn.Module) -> Callable[[np.ndarray], torch.Tensor]:
    """(H, W, 3) uint8 RGB -> (3, S, S) float tensor through the model's open_clip eval transform."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    cfg = {k: v for k, v in open_clip.get_model_preprocess_cfg(model).items() if v is not None}
    transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)

    def apply(frame: np.ndarray) -> torch.Tensor:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be (H, W, 3) uint8 RGB; got {frame.shape} {frame.dtype}")
        return transform(Image.fromarray(np.ascontiguousarray(frame)))

    return apply


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


class ClipScorer:
    """Builds the CLIP model (and aesthetic head) once; scores clips from a few frames and their captions."""

    def __init__(self, cfg: ClipScoreConfig | None = None) -> None:
        import open_clip
        from open_clip.model import CLIP

        self.cfg = cfg = cfg or ClipScoreConfig()
        self.model = build_open_clip_model(
            cfg.model, pretrained=cfg.pretrained, seed=cfg.seed, device=cfg.device, precision=cfg.precision,
            tiny=(CLIP, TINY_CLIP_CONFIG),
        )  # fmt: skip
        self.tokenizer = open_clip.SimpleTokenizer() if cfg.model == "tiny" else open_clip.get_tokenizer(cfg.model)
        self.transform = frame_transform(self.model)
        self.dtype = next(self.model.parameters()).dtype
        self.head: AestheticHead | None = None
        if cfg.aesthetic_head is not None:
            head = load_aesthetic_head(cfg.aesthetic_head)
            dim = self.embed_texts(["a"]).shape[-1]
            if head.dim != dim:
                raise ValueError(
                    f"aesthetic head {cfg.aesthetic_head!r} takes {head.dim}-d embeddings but {cfg.model} gives "
                    f"{dim}-d; use the head trained on this CLIP (LAION's heads are for ViT-L-14, 768-d)"
                )
            self.head = head

    @torch.no_grad()
    def embed_images(self, frames: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """(N, D) float32 L2-normalised image embeddings (on CPU) of (H, W, 3) uint8 frames."""
        out = []
        for i in range(0, len(frames), self.cfg.batch_size):
            x = torch.stack([self.transform(f) for f in frames[i : i + self.cfg.batch_size]])
            emb = self.model.encode_image(x.to(self.cfg.device, self.dtype))
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(M, D) float32 L2-normalised text embeddings (on CPU)."""
        out = []
        for i in range(0, len(texts), self.cfg.batch_size):
            tokens = self.tokenizer(list(texts[i : i + self.cfg.batch_size])).to(self.cfg.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    @torch.no_grad()
    def aesthetic(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        """(N,) aesthetic scores of normalised image embeddings; None without a head."""
        return None if self.head is None else self.head(embeddings.float())

    def score_clip(self, frames: np.ndarray | Sequence[np.ndarray], captions: Sequence[str]) -> dict[str, Any]:
        """Scores of one clip from its (first, middle, last) frames and captions (see the module docstring)."""
        if not len(frames):
            raise ValueError("score_clip needs at least one frame")
        images = self.embed_images(frames)
        scores = self.aesthetic(images)
        per_caption: list[float] = []
        if captions:
            sims = self.embed_texts(captions) @ images.T  # (captions, frames) cosines
            per_caption = sims.mean(dim=1).tolist()
        reduce = max if self.cfg.caption_reduce == "max" else (lambda v: sum(v) / len(v))
        return {
            "aesthetic": None if scores is None else float(scores.mean()),
            "aesthetic_frames": None if scores is None else scores.tolist(),
            "clip_similarity": float(reduce(per_caption)) if per_caption else None,
            "caption_similarities": per_caption,
        }
