"""Tiny OpenCLIP image and text embedders: shapes, preprocessing, layer selection, freezing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.conditioners import (
    FrozenOpenCLIPEmbedder,
    FrozenOpenCLIPImageEmbedder,
    FrozenOpenCLIPImagePredictionEmbedder,
    resize_bicubic,
    tiny_open_clip_config,
)


@pytest.fixture(scope="module")
def image_embedder() -> FrozenOpenCLIPImageEmbedder:
    torch.manual_seed(0)
    return FrozenOpenCLIPImageEmbedder(tiny_open_clip_config())


@pytest.fixture(scope="module")
def text_embedder() -> FrozenOpenCLIPEmbedder:
    torch.manual_seed(0)
    return FrozenOpenCLIPEmbedder(tiny_open_clip_config(), layer="penultimate")


def _images(b: int = 2, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


def test_image_embedding_shapes(image_embedder: FrozenOpenCLIPImageEmbedder) -> None:
    x = _images()
    assert image_embedder(x).shape == (2, 32)
    tokens = FrozenOpenCLIPImagePredictionEmbedder(image_embedder)(x)
    assert tokens.shape == (2, 1, 32)  # one crossattn token per sample
    copies = FrozenOpenCLIPImagePredictionEmbedder(image_embedder, n_copies=3)(x)
    assert copies.shape == (6, 1, 32)
    torch.testing.assert_close(copies[:3], tokens[:1].expand(3, 1, 32))  # (b s) order, as sgm
    two = FrozenOpenCLIPImagePredictionEmbedder(image_embedder, n_cond_frames=2)(x)
    assert two.shape == (1, 2, 32)


def test_preprocessing_matches_manual(image_embedder: FrozenOpenCLIPImageEmbedder) -> None:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    mean = torch.tensor(OPENAI_DATASET_MEAN)[:, None, None]
    std = torch.tensor(OPENAI_DATASET_STD)[:, None, None]
    x = _images()
    expected = resize_bicubic(x, (32, 32), mode="kornia")  # the default, as the official embedder
    expected = ((expected + 1) / 2 - mean) / std
    torch.testing.assert_close(image_embedder.preprocess(x), expected)
    torch_resize = FrozenOpenCLIPImageEmbedder(tiny_open_clip_config(), resize="torch")
    expected = F.interpolate(x, size=(32, 32), mode="bicubic", antialias=True)
    torch.testing.assert_close(torch_resize.preprocess(x), ((expected + 1) / 2 - mean) / std)
    # [-1, 1] -> [0, 1]: constant black / white images land on (0 - mean) / std and (1 - mean) / std.
    black, white = -torch.ones(1, 3, 32, 32), torch.ones(1, 3, 32, 32)
    torch.testing.assert_close(image_embedder.preprocess(black)[0], ((0 - mean) / std).expand(3, 32, 32))
    torch.testing.assert_close(image_embedder.preprocess(white)[0], ((1 - mean) / std).expand(3, 32, 32))


def test_forward_is_visual_tower_of_preprocessed(image_embedder: FrozenOpenCLIPImageEmbedder) -> None:
    x = _images()
    expected = image_embedder.model.visual(image_embedder.preprocess(x))
    torch.testing.assert_close(image_embedder(x), expected)


def test_kornia_resize_matches_diffusers_reimplementation() -> None:
    pipeline = pytest.importorskip("diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion")
    x = _images(b=2, h=96, w=150)
    expected = pipeline._resize_with_antialiasing(x, (32, 32))
    torch.testing.assert_close(resize_bicubic(x, (32, 32), mode="kornia"), expected)
    with pytest.raises(ValueError, match="choose"):
        resize_bicubic(x, (32, 32), mode="pil")  # type: ignore[arg-type]


def test_frozen_embedders_stay_in_eval(image_embedder: FrozenOpenCLIPImageEmbedder) -> None:
    assert not any(p.requires_grad for p in image_embedder.parameters())
    image_embedder.train()
    assert not image_embedder.training and not image_embedder.model.training
    trainable = FrozenOpenCLIPImageEmbedder(tiny_open_clip_config(), freeze=False)
    assert all(p.requires_grad for p in trainable.parameters())
    assert trainable.train().training


def test_text_embedding_shape_and_penultimate_layer(text_embedder: FrozenOpenCLIPEmbedder) -> None:
    captions = ["a dog running on the beach", ""]
    out = text_embedder(captions)
    assert out.shape == (2, 77, 32)
    m = text_embedder.model
    tokens = text_embedder.tokenize(captions)
    x = m.token_embedding(tokens) + m.positional_embedding
    x = m.transformer.resblocks[0](x, attn_mask=m.attn_mask)  # 2 layers, the last one skipped
    torch.testing.assert_close(out, m.ln_final(x))
    torch.testing.assert_close(text_embedder(tokens), out)  # pre-tokenised input


def test_text_last_layer_runs_whole_transformer() -> None:
    emb = FrozenOpenCLIPEmbedder(tiny_open_clip_config(), layer="last")
    m = emb.model
    tokens = emb.tokenize("a cat")
    x = m.transformer(m.token_embedding(tokens) + m.positional_embedding, attn_mask=m.attn_mask)
    torch.testing.assert_close(emb("a cat"), m.ln_final(x))
    with pytest.raises(ValueError, match="penultimate"):
        FrozenOpenCLIPEmbedder(tiny_open_clip_config(), layer="first")  # type: ignore[arg-type]


def test_bad_arch_and_pretrained_raise() -> None:
    with pytest.raises(ValueError, match="ViT-H-14"):
        FrozenOpenCLIPEmbedder("ViT-Nope-99")
    with pytest.raises(ValueError, match="not a file"):
        FrozenOpenCLIPEmbedder(tiny_open_clip_config(), pretrained="laion2b_s32b_b79k")


def test_pretrained_local_file_is_loaded(tmp_path) -> None:
    from open_clip.model import CLIP

    full = CLIP(**tiny_open_clip_config())
    path = tmp_path / "tiny_clip.pt"
    torch.save(full.state_dict(), path)
    image = FrozenOpenCLIPImageEmbedder(tiny_open_clip_config(), pretrained=str(path))
    text = FrozenOpenCLIPEmbedder(tiny_open_clip_config(), pretrained=str(path))
    torch.testing.assert_close(image.model.visual.proj, full.visual.proj)
    torch.testing.assert_close(
        text.model.transformer.resblocks[1].mlp.c_fc.weight, full.transformer.resblocks[1].mlp.c_fc.weight
    )
