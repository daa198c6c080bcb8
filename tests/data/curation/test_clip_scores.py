"""The curation's CLIP scores (``ClipScoreAnnotator``, embedding through ``models.clip_scorer.ClipScorer``) on a tiny
random open_clip model: numerics against direct open_clip calls, aesthetic-head files."""

from __future__ import annotations

import functools

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.nn import functional as F

from data.curation.clip_scores import AestheticHead, ClipScoreAnnotator, ClipScoreConfig, load_aesthetic_head
from data.curation.config import AnnotateConfig
from tests.data.curation.annot_fixtures import demo_scene_frames

FRAMES = np.stack([demo_scene_frames(s, speed="static", seconds=0.1, fps=10, size=(96, 64))[0] for s in range(3)])
CAPTIONS = ["a red circle over a striped background", "news", "a static shot of a square"]


def _build(**kw: object) -> ClipScoreAnnotator:
    return ClipScoreAnnotator(AnnotateConfig(clip=ClipScoreConfig(**kw)))  # type: ignore[arg-type]


@functools.cache
def _scorer(**kw: object) -> ClipScoreAnnotator:
    return _build(model="tiny", pretrained=None, **kw)


def _head_state(form: str, dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if form == "linear":  # LAION-AI/aesthetic-predictor: a bare nn.Linear(dim, 1)
        return {"weight": torch.randn(1, dim, generator=g), "bias": torch.randn(1, generator=g)}
    widths = (dim, 1024, 128, 64, 16, 1)
    state = {}
    for layer, (i, o) in zip((0, 2, 4, 6, 7), zip(widths[:-1], widths[1:], strict=True), strict=True):
        state[f"layers.{layer}.weight"] = torch.randn(o, i, generator=g) / i**0.5
        state[f"layers.{layer}.bias"] = torch.randn(o, generator=g)
    return state


def test_embeddings_match_direct_open_clip_calls() -> None:
    scorer = _scorer()
    images = scorer.scorer.embed_images(FRAMES)
    assert images.shape == (3, 32) and torch.allclose(images.norm(dim=-1), torch.ones(3))
    preprocess = open_clip.image_transform(32, is_train=False)  # bicubic short side, centre crop, OpenAI mean/std
    with torch.no_grad():
        x = torch.stack([preprocess(Image.fromarray(f)) for f in FRAMES])
        expected_img = F.normalize(scorer.scorer.model.encode_image(x), dim=-1)
        expected_txt = F.normalize(scorer.scorer.model.encode_text(open_clip.tokenize(CAPTIONS)), dim=-1)
    torch.testing.assert_close(images, expected_img)
    torch.testing.assert_close(scorer.scorer.embed_texts(CAPTIONS), expected_txt)


def test_clip_similarity_is_the_caption_mean_of_frame_mean_cosines() -> None:
    scorer = _scorer()
    out = scorer.score_clip(FRAMES, CAPTIONS)
    cos = scorer.scorer.embed_texts(CAPTIONS) @ scorer.scorer.embed_images(FRAMES).T  # (captions, frames)
    assert out["caption_similarities"] == pytest.approx(cos.mean(1).tolist(), abs=1e-6)
    assert out["clip_similarity"] == pytest.approx(float(cos.mean()), abs=1e-6)
    assert out["aesthetic"] is None and out["aesthetic_frames"] is None
    best = _scorer(caption_reduce="max").score_clip(FRAMES, CAPTIONS)
    assert best["clip_similarity"] == pytest.approx(float(cos.mean(1).max()), abs=1e-6)
    assert scorer.score_clip(FRAMES, [])["clip_similarity"] is None
    with pytest.raises(ValueError, match="at least one frame"):
        scorer.score_clip(FRAMES[:0], CAPTIONS)


def test_batching_and_seeds() -> None:
    a = _scorer().scorer.embed_images(FRAMES)
    torch.testing.assert_close(_scorer(batch_size=1).scorer.embed_images(FRAMES), a, atol=1e-6, rtol=0)
    texts = _scorer().scorer.embed_texts(CAPTIONS)
    torch.testing.assert_close(_scorer(batch_size=2).scorer.embed_texts(CAPTIONS), texts)
    fresh = _build(model="tiny", pretrained=None)
    assert torch.equal(fresh.scorer.embed_images(FRAMES), a)  # same seed, rebuilt: bit-identical
    assert not torch.allclose(_scorer(seed=1).scorer.embed_images(FRAMES), a)


@pytest.mark.parametrize(("form", "suffix"), [("linear", ".pth"), ("linear", ".safetensors"), ("mlp", ".pth")])
def test_aesthetic_head_files(tmp_path, form: str, suffix: str) -> None:
    state = _head_state(form, 32)
    path = tmp_path / f"head{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    head = load_aesthetic_head(path)
    assert (head.form, head.dim) == (form, 32)
    scorer = _build(model="tiny", pretrained=None, aesthetic_head=str(path))
    out = scorer.score_clip(FRAMES, CAPTIONS)
    emb = scorer.scorer.embed_images(FRAMES).double()
    if form == "linear":
        expected = emb @ state["weight"].double().T + state["bias"].double()
    else:  # the LAION MLP has no activations; dropout is off in eval
        expected = emb
        for layer in (0, 2, 4, 6, 7):
            expected = expected @ state[f"layers.{layer}.weight"].double().T + state[f"layers.{layer}.bias"].double()
    expected = expected.squeeze(-1)
    assert out["aesthetic_frames"] == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-4)
    assert out["aesthetic"] == pytest.approx(float(expected.mean()), rel=1e-4, abs=1e-4)


def test_mlp_head_matches_the_public_key_layout() -> None:
    keys = set(AestheticHead(768, "mlp").state_dict())
    assert keys == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    assert AestheticHead(768, "mlp").state_dict()["layers.6.weight"].shape == (16, 64)


def test_aesthetic_head_errors_name_the_file(tmp_path) -> None:
    bad_keys = tmp_path / "bad_keys.safetensors"
    save_file({"fc.weight": torch.zeros(1, 32), "fc.bias": torch.zeros(1)}, str(bad_keys))
    with pytest.raises(ValueError, match="bad_keys.safetensors.*layers.0.weight"):
        load_aesthetic_head(bad_keys)
    bad_shape = tmp_path / "bad_shape.pth"
    state = _head_state("mlp", 32)
    state["layers.2.weight"] = torch.zeros(128, 512)
    torch.save(state, bad_shape)
    with pytest.raises(ValueError, match="bad_shape.pth.*wrong shapes"):
        load_aesthetic_head(bad_shape)
    wrong_dim = tmp_path / "vit_l_head.pth"
    torch.save(_head_state("linear", 768), wrong_dim)
    with pytest.raises(ValueError, match="vit_l_head.pth.*768-d.*32-d"):
        _build(model="tiny", pretrained=None, aesthetic_head=str(wrong_dim))
    with pytest.raises(ValueError, match="does not exist"):
        load_aesthetic_head(tmp_path / "missing.pth")
    (tmp_path / "head.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="safetensors or .pth"):
        load_aesthetic_head(tmp_path / "head.npy")


def test_registered_architecture_builds_offline() -> None:
    scorer = _build(model="ViT-B-32", pretrained=None, seed=3)
    out = scorer.score_clip(FRAMES[:2], CAPTIONS[:1])
    assert scorer.scorer.embed_images(FRAMES[:1]).shape == (1, 512)
    assert isinstance(out["clip_similarity"], float) and out["aesthetic"] is None


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="no model named"):
        _build(model="ViT-Q-99", pretrained=None)
    with pytest.raises(ValueError, match="caption_reduce"):
        ClipScoreConfig(caption_reduce="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not exist"):
        _build(model="tiny", pretrained="/nonexistent/clip.safetensors")
