"""The one open_clip builder: the plain build (conditioners, evaluation) under the caller's RNG, the seeded build
(curation) under its own seed without touching the global RNG, and the shared CLIP scorer on top of it."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import CLIP
from PIL import Image

from models.clip_scorer import ClipScorer
from models.conditioners.open_clip_factory import build_open_clip, eval_transform, tiny_open_clip_config


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_plain_build_draws_from_the_callers_rng_like_clip_itself() -> None:
    torch.manual_seed(0)
    built = build_open_clip(tiny_open_clip_config(), drop_tower=None)
    torch.manual_seed(0)
    direct = CLIP(**tiny_open_clip_config())
    assert all(torch.equal(a, b) for a, b in zip(_weights(built), _weights(direct), strict=True))
    assert built.training  # the caller freezes (or trains) it


def test_seeded_build_is_reproducible_frozen_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = build_open_clip(tiny_open_clip_config(), drop_tower=None, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_open_clip(tiny_open_clip_config(), drop_tower=None, seed=0)
    c = build_open_clip(tiny_open_clip_config(), drop_tower=None, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(c), strict=True))
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    half = build_open_clip(tiny_open_clip_config(), drop_tower="text", seed=0, precision="bf16")
    assert half.visual.conv1.weight.dtype == torch.bfloat16 and not hasattr(half, "transformer")


def test_builder_errors() -> None:
    with pytest.raises(ValueError, match="seeded build only"):
        build_open_clip(tiny_open_clip_config(), drop_tower=None, precision="bf16")
    with pytest.raises(ValueError, match="no model named"):
        build_open_clip("ViT-Q-99", drop_tower=None, seed=0)
    with pytest.raises(ValueError, match="does not exist"):
        build_open_clip(tiny_open_clip_config(), pretrained="/nonexistent/clip.safetensors", drop_tower=None, seed=0)
    with pytest.raises(ValueError, match="drop_tower"):
        build_open_clip(tiny_open_clip_config(), drop_tower="both")  # type: ignore[arg-type]


def test_scorer_embeds_numpy_frames_through_open_clips_pil_transform_and_tensors_in_torch() -> None:
    model = build_open_clip(tiny_open_clip_config(), drop_tower=None, seed=0)
    scorer = ClipScorer(model, batch_size=2)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 40, 56, 3), dtype=np.uint8)
    preprocess = open_clip.image_transform(32, is_train=False)
    with torch.no_grad():
        x = torch.stack([preprocess(Image.fromarray(f)) for f in frames])
        pil = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
    torch.testing.assert_close(scorer.embed_images(frames), pil)
    assert torch.equal(eval_transform(model)(frames[0]), x[0])
    tensors = scorer.embed_frames(torch.from_numpy(frames).permute(0, 3, 1, 2))
    assert tensors.shape == (3, 32) and torch.allclose(tensors.norm(dim=-1), torch.ones(3))
    assert (tensors * pil).sum(-1).min() > 0.9  # the same frames, resampled in torch instead of PIL
    texts = ["a cat", "a dog", "news"]
    batched = ClipScorer(model, tokenizer=open_clip.SimpleTokenizer(), text_batch_size=2).embed_texts(texts)
    torch.testing.assert_close(batched, scorer.embed_texts(texts))  # open_clip.tokenize == the BPE tokenizer
    assert scorer.embed_dim == 32 and scorer.context_length == 77
