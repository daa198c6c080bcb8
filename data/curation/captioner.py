"""Captioners for curation: a pluggable ``Captioner`` protocol and the CoCa captioner the recipe uses.

RECIPE section 6, "Captions": CoCa on the clip's middle frame (the orchestrator passes that frame). The default is
open_clip's ``coca_ViT-L-14`` with the ``mscoco_finetuned_laion2B-s13B-b90k`` weights (the MS-COCO finetuned
captioner; its captions read like COCO's "a man riding a bike down a street").

Decoding is ours, deterministic, and does not use ``CoCa.generate``: that needs transformers' ``BeamSearchScorer``
and logits processors, and with transformers >= 5 (installed here) open_clip's import of them fails, so
``generate`` only raises. The loop below calls the public ``CoCa.forward`` with the image features computed once:

- ``num_beams=1``: greedy, the most likely next token at each step;
- ``num_beams>1``: beam search; each hypothesis ending in ``<end_of_text>`` is scored by its summed log
  probability over ``length ** length_penalty`` and the best one wins (open_clip's default is a diverse group beam
  search of 6 beams in 3 groups; plain beam search with a few beams gives the same kind of COCO-style caption).

``<end_of_text>`` is forbidden before ``min_tokens`` tokens (as open_clip's ``min_seq_len``) and a caption stops
at ``max_tokens`` tokens, not counting the start and end tokens. ``model="tiny"`` builds a tiny random CoCa
(seeded) for tests; it uses open_clip's bundled BPE tokenizer, so nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn import functional as F

from data.curation.annotators import Annotator, ClipContext, Option
from models.conditioners.open_clip_factory import Precision, build_open_clip, eval_transform

SOT_TOKEN, EOT_TOKEN = 49406, 49407  # open_clip's <start_of_text> / <end_of_text>

TINY_COCA_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8,
                   "attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 8, "output_tokens": True},
    "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "embed_cls": True,
                 "output_tokens": True},
    "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                       "dim_head": 16},
}  # fmt: skip


class Captioner(Protocol):
    name: str  # the key of the caption in the clip's ``captions`` record, e.g. "coca"

    def __call__(self, frame: np.ndarray) -> str:
        """One caption for an (H, W, 3) uint8 RGB frame."""
        ...


@dataclass(frozen=True)
class CocaConfig:
    model: str = "coca_ViT-L-14"  # an open_clip CoCa model name, or "tiny"
    pretrained: str | None = "mscoco_finetuned_laion2B-s13B-b90k"  # hub tag or local file; None = random (seeded)
    device: str = "cpu"
    precision: Precision = "fp32"
    num_beams: int = 3  # 1 = greedy
    length_penalty: float = 1.0  # beam scores are sum(log p) / length ** length_penalty
    min_tokens: int = 5
    max_tokens: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1 (1 = greedy); got {self.num_beams}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"need 0 <= min_tokens <= max_tokens; got {self.min_tokens}, {self.max_tokens}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1; got {self.max_tokens}")


def clean_caption(text: str) -> str:
    """Drop special tokens and the tokenizer's spaces before punctuation: "a dog .  " -> "a dog."."""
    text = text.split("<end_of_text>")[0].replace("<start_of_text>", "")
    text = re.sub(r"\s+([.,!?;:'])", r"\1", text)
    return " ".join(text.split())


class CocaCaptioner:
    """CoCa captions of single frames with deterministic greedy or beam decoding (see the module docstring)."""

    name = "coca"

    def __init__(self, cfg: CocaConfig | None = None, **overrides: Any) -> None:
        import open_clip
        from open_clip import CoCa

        cfg = cfg or CocaConfig()
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(CocaConfig)})
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(CocaConfig))
            raise ValueError(f"unknown captioner option(s) {unknown}; valid: {valid}")
        self.cfg = cfg = dataclasses.replace(cfg, **overrides)
        arch = open_clip.get_model_config(cfg.model) if cfg.model != "tiny" else None
        if arch is not None and "multimodal_cfg" not in arch:
            raise ValueError(f"{cfg.model!r} is not a CoCa model; use e.g. 'coca_ViT-L-14' or 'tiny'")
        self.model = build_open_clip(
            TINY_COCA_CONFIG if cfg.model == "tiny" else cfg.model, pretrained=cfg.pretrained, drop_tower=None,
            seed=cfg.seed, precision=cfg.precision, model_class=CoCa,
        ).to(cfg.device)  # fmt: skip
        if not isinstance(self.model, CoCa):
            raise ValueError(f"{cfg.model!r} is not a CoCa model; use e.g. 'coca_ViT-L-14' or 'tiny'")
        context = int(self.model.text.context_length)
        if cfg.max_tokens + 1 > context:  # the prefix fed back holds <start_of_text> + the tokens so far
            raise ValueError(f"max_tokens must be <= {context - 1} for {cfg.model}; got {cfg.max_tokens}")
        self.transform = eval_transform(self.model)
        self.tokenizer = open_clip.SimpleTokenizer()
        self.dtype = next(self.model.parameters()).dtype

    @torch.no_grad()
    def next_token_logprobs(self, image_out: dict[str, torch.Tensor], prefixes: torch.Tensor) -> torch.Tensor:
        """(B, L) token prefixes -> (B, vocab) log probabilities of the next token given the image features."""
        b = prefixes.shape[0]
        latent = image_out["image_features"].expand(b, -1)
        embs = image_out["image_embs"].expand(b, -1, -1)
        logits = self.model(None, prefixes, image_latent=latent, image_embs=embs, output_labels=False)["logits"]
        return F.log_softmax(logits[:, -1].float(), dim=-1)

    @torch.no_grad()
    def tokens(self, frame: np.ndarray) -> list[int]:
        """The caption's token ids (without start/end tokens) for one (H, W, 3) uint8 RGB frame."""
        cfg = self.cfg
        image = self.transform(frame)[None].to(cfg.device, self.dtype)
        image_out = self.model(image)  # {"image_features", "image_embs"}, computed once
        beams = torch.full((1, 1), SOT_TOKEN, dtype=torch.long, device=cfg.device)
        scores = torch.zeros(1, device=cfg.device)
        finished: list[tuple[float, list[int]]] = []
        for step in range(cfg.max_tokens + 1):
            logp = self.next_token_logprobs(image_out, beams)
            logp[:, SOT_TOKEN] = -torch.inf
            if step < cfg.min_tokens:
                logp[:, EOT_TOKEN] = -torch.inf
            if step == cfg.max_tokens:  # length limit: every beam must end now
                for score, seq in zip((scores + logp[:, EOT_TOKEN]).tolist(), beams[:, 1:].tolist(), strict=True):
                    finished.append((score / max(1, len(seq)) ** cfg.length_penalty, seq))
                break
            total = (scores[:, None] + logp).flatten()  # (beams * vocab)
            top = torch.topk(total, min(2 * cfg.num_beams, total.numel()))
            keep_seq, keep_score = [], []
            for score, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                beam, token = divmod(flat, logp.shape[1])
                seq = beams[beam, 1:].tolist()
                if token == EOT_TOKEN:
                    finished.append((score / max(1, len(seq)) ** cfg.length_penalty, seq))
                else:
                    keep_seq.append(beams[beam].tolist() + [token])
                    keep_score.append(score)
                if len(keep_seq) == cfg.num_beams:
                    break
            if len(finished) >= cfg.num_beams or not keep_seq:
                break
            beams = torch.tensor(keep_seq, dtype=torch.long, device=cfg.device)
            scores = torch.tensor(keep_score, device=cfg.device)
        return max(finished, key=lambda item: item[0])[1]

    def __call__(self, frame: np.ndarray) -> str:
        return clean_caption(self.tokenizer.decode(self.tokens(frame)))


def build_captioner(name: str, **kwargs: Any) -> Captioner | None:
    """``"coca"`` -> ``CocaCaptioner(**kwargs)`` (``CocaConfig`` fields); ``"none"`` -> None (no generated caption)."""
    if name == "none":
        return None
    if name == "coca":
        return CocaCaptioner(**kwargs)
    raise ValueError(f'captioner must be "coca" or "none"; got {name!r}')


class CaptionerAnnotator(Annotator):
    """A generated caption of the clip's middle frame in ``captions[<captioner name>]`` (``annotate.captioner``:
    "coca" or "none"; ``annotate.captioner_options``: ``CocaConfig`` fields). The source's caption is kept apart."""

    name = "captioner"
    options = (Option("captioner", str, "coca"), Option("captioner_options", Mapping[str, Any], factory=dict))
    cheap = False

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        captioner = build_captioner(cfg.captioner, **dict(cfg.captioner_options))
        assert captioner is not None  # enabled() is False for "none"
        self.captioner = captioner

    @classmethod
    def enabled(cls, cfg: Any) -> bool:
        return cfg.captioner != "none"

    def annotate(self, clip: ClipContext) -> None:
        clip.captions[self.captioner.name] = self.captioner(clip.frames[1])
