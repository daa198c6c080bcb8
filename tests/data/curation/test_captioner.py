"""The CoCa captioner on a tiny random CoCa: deterministic decoding, length limits, greedy = teacher-forced argmax."""

from __future__ import annotations

import functools

import pytest
import torch

from data.curation.captioner import (
    EOT_TOKEN,
    SOT_TOKEN,
    CocaCaptioner,
    CocaConfig,
    build_captioner,
    clean_caption,
)
from tests.data.curation.annot_fixtures import demo_scene_frames

FRAME = demo_scene_frames(0, speed="static", seconds=0.1, fps=10, size=(96, 64))[0]


@functools.cache
def _captioner(**kw: object) -> CocaCaptioner:
    return CocaCaptioner(model="tiny", pretrained=None, **kw)


def test_returns_a_deterministic_string() -> None:
    cap = _captioner()
    text = cap(FRAME)
    assert isinstance(text, str) and text == cap(FRAME)
    again = CocaCaptioner(model="tiny", pretrained=None)  # same seed, fresh weights: same caption
    assert again(FRAME) == text
    assert cap.name == "coca"
    # Every weight is seeded, including the decoder projection open_clip leaves as torch.empty memory.
    ours, theirs = cap.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert cap.model.text_decoder.text_projection.std() > 0.01
    other = CocaCaptioner(model="tiny", pretrained=None, seed=1)
    assert not torch.equal(other.model.text_decoder.text_projection, cap.model.text_decoder.text_projection)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_length_limits(num_beams: int) -> None:
    for seed in (0, 1):
        cap = _captioner(num_beams=num_beams, min_tokens=2, max_tokens=6, seed=seed)
        tokens = cap.tokens(FRAME)
        assert 2 <= len(tokens) <= 6
        assert SOT_TOKEN not in tokens and EOT_TOKEN not in tokens


def test_greedy_picks_the_teacher_forced_argmax() -> None:
    cap = _captioner(num_beams=1, min_tokens=3, max_tokens=10, seed=2)
    tokens = cap.tokens(FRAME)
    image = cap.transform(FRAME)[None]
    with torch.no_grad():
        out = cap.model(image, torch.tensor([[SOT_TOKEN, *tokens]]), output_labels=False)
    logits = out["logits"][0]  # position i predicts token i + 1
    logits[:, SOT_TOKEN] = -torch.inf
    logits[:3, EOT_TOKEN] = -torch.inf
    assert logits[: len(tokens)].argmax(-1).tolist() == tokens
    if len(tokens) < 10:  # stopped early: end-of-text was the most likely next token
        assert int(logits[len(tokens)].argmax()) == EOT_TOKEN


def test_clean_caption() -> None:
    assert clean_caption("<start_of_text>a dog on a couch . <end_of_text>!!!") == "a dog on a couch."
    assert clean_caption("  two  cats , sleeping ") == "two cats, sleeping"


def test_build_captioner_and_errors() -> None:
    assert build_captioner("none") is None
    cap = build_captioner("coca", model="tiny", pretrained=None, max_tokens=6)
    assert isinstance(cap, CocaCaptioner) and cap.cfg.max_tokens == 6
    with pytest.raises(ValueError, match="captioner"):
        build_captioner("blip")
    with pytest.raises(ValueError, match="unknown captioner option"):
        build_captioner("coca", model="tiny", beams=3)
    with pytest.raises(ValueError, match="max_tokens"):
        CocaCaptioner(model="tiny", pretrained=None, max_tokens=80)
    with pytest.raises(ValueError, match="min_tokens"):
        CocaConfig(min_tokens=10, max_tokens=5)
    with pytest.raises(ValueError, match="not a CoCa"):
        CocaCaptioner(model="ViT-B-32", pretrained=None)  # refused from its config, before building
    with pytest.raises(ValueError, match="does not exist"):
        CocaCaptioner(model="tiny", pretrained="/nonexistent/coca.safetensors")
