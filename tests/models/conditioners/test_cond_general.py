"""GeneralConditioner: rank routing, CFG dropout, forced zeros, the SVD and SD 2.1 text layouts (tiny)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.conditioners import (
    SVD_INPUT_KEYS,
    SVD_UC_ZERO_KEYS,
    ConcatTimestepEmbedderND,
    EmbedderSpec,
    GeneralConditioner,
    build_tiny_sd21_text_conditioner,
    build_tiny_svd_conditioner,
)
from models.unet.embeddings import timestep_embedding


class Const(nn.Module):
    """Returns ``value`` broadcast to ``(B, *shape)``."""

    def __init__(self, *shape: int, value: float = 1.0) -> None:
        super().__init__()
        self.shape, self.value = shape, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], *self.shape), self.value)


def _svd_batch(b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(b, 3, 64, 64, generator=g) * 2 - 1
    return {
        "cond_frames_without_noise": image,
        "fps_id": torch.full((b,), 6.0),
        "motion_bucket_id": torch.arange(b, dtype=torch.float32) + 127,
        "cond_frames": image + 0.02 * torch.randn(image.shape, generator=g),
        "cond_aug": torch.full((b,), 0.02),
    }


def test_rank_routing_and_concat_dims() -> None:
    x = torch.zeros(2)
    cond = GeneralConditioner(
        [
            EmbedderSpec(Const(3, value=1), "a"),
            EmbedderSpec(Const(4, 5, value=2), "a"),
            EmbedderSpec(Const(6, 8, 8, value=3), "a"),
            EmbedderSpec(Const(5, value=4), "a"),
            EmbedderSpec(Const(4, 7, value=5), "a"),
            EmbedderSpec(Const(2, 8, 8, value=6), "a"),
        ]
    )
    out = cond({"a": x})
    assert set(out) == {"vector", "crossattn", "concat"}
    assert out["vector"].shape == (2, 8) and out["vector"][0, 3:].eq(4).all()
    assert out["crossattn"].shape == (2, 4, 12) and out["crossattn"][0, :, 5:].eq(5).all()
    assert out["concat"].shape == (2, 8, 8, 8) and out["concat"][0, 6:].eq(6).all()
    with pytest.raises(ValueError, match="1-D"):
        GeneralConditioner([EmbedderSpec(Const(), "a")])({"a": x})
    with pytest.raises(ValueError, match="batch keys"):
        cond({"b": x})


def test_tiny_svd_layout_and_outputs(stand_in_vae: nn.Module) -> None:
    cond = build_tiny_svd_conditioner(encoder=stand_in_vae)
    assert cond.input_keys == list(SVD_INPUT_KEYS)
    batch = _svd_batch()
    out = cond(batch)
    assert out["crossattn"].shape == (2, 1, 32)
    assert out["concat"].shape == (2, 4, 8, 8)
    assert out["vector"].shape == (2, 768)
    expected = torch.cat([timestep_embedding(batch[k], 256) for k in ("fps_id", "motion_bucket_id", "cond_aug")], 1)
    torch.testing.assert_close(out["vector"], expected)  # fps, motion, cond_aug in that order
    torch.testing.assert_close(out["concat"], stand_in_vae.encode(batch["cond_frames"]).mode())
    clip = cond.embedders[0]
    torch.testing.assert_close(out["crossattn"], clip.open_clip(batch["cond_frames_without_noise"])[:, None])


def test_frozen_embedders_stay_frozen(stand_in_vae: nn.Module) -> None:
    cond = build_tiny_svd_conditioner(encoder=stand_in_vae).train()
    assert cond.training
    assert not any(m.training for emb in cond.embedders for m in emb.modules())
    assert not any(p.requires_grad for p in cond.parameters())
    assert not cond(_svd_batch())["crossattn"].requires_grad
    with pytest.raises(ValueError, match="freeze=False"):
        GeneralConditioner([EmbedderSpec(nn.Linear(2, 2).requires_grad_(False), "a", is_trainable=True)])


def test_trainable_embedder_gets_gradients() -> None:
    lin = nn.Linear(3, 4)
    cond = GeneralConditioner([EmbedderSpec(lin, "x", is_trainable=True)]).train()
    assert lin.training
    cond({"x": torch.randn(2, 3)})["vector"].sum().backward()
    assert lin.weight.grad is not None


def _scalar_conditioner(rate_a: float, rate_b: float) -> GeneralConditioner:
    return GeneralConditioner(
        [
            EmbedderSpec(ConcatTimestepEmbedderND(8), "a", ucg_rate=rate_a),
            EmbedderSpec(ConcatTimestepEmbedderND(8), "b", ucg_rate=rate_b),
        ]
    )


def test_ucg_rate_zero_and_one() -> None:
    batch = {"a": torch.arange(16.0), "b": torch.arange(16.0)}
    reference = _scalar_conditioner(0.0, 0.0)(batch)["vector"]
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(_scalar_conditioner(0.0, 0.0)(batch, generator=g)["vector"], reference)
    assert _scalar_conditioner(1.0, 1.0)(batch, generator=g)["vector"].eq(0).all()
    half = _scalar_conditioner(1.0, 0.0)(batch, generator=g)["vector"]
    assert half[:, :8].eq(0).all()
    torch.testing.assert_close(half[:, 8:], reference[:, 8:])


def test_ucg_is_seeded_per_sample_and_independent_per_embedder() -> None:
    n = 2000
    batch = {"a": torch.arange(n, dtype=torch.float32), "b": torch.arange(n, dtype=torch.float32)}
    cond = _scalar_conditioner(0.3, 0.3)
    one = cond(batch, generator=torch.Generator().manual_seed(1))["vector"]
    two = cond(batch, generator=torch.Generator().manual_seed(1))["vector"]
    torch.testing.assert_close(one, two)
    other = cond(batch, generator=torch.Generator().manual_seed(2))["vector"]
    assert not torch.equal(one, other)
    dropped_a = one[:, :8].eq(0).all(1)
    dropped_b = one[:, 8:].eq(0).all(1)
    assert 0.25 < dropped_a.float().mean() < 0.35 and 0.25 < dropped_b.float().mean() < 0.35
    assert not torch.equal(dropped_a, dropped_b)  # independent draws per embedder
    both = (dropped_a & dropped_b).float().mean()
    assert abs(both - 0.09) < 0.03  # P(both) = 0.3 * 0.3


def test_force_zero_and_unconditional(stand_in_vae: nn.Module) -> None:
    cond = build_tiny_svd_conditioner(encoder=stand_in_vae, ucg_rates={k: 1.0 for k in SVD_INPUT_KEYS})
    batch = _svd_batch()
    c, uc = cond.get_unconditional_conditioning(batch, force_uc_zero_embeddings=SVD_UC_ZERO_KEYS)
    assert c["crossattn"].abs().sum() > 0 and c["concat"].abs().sum() > 0  # no ucg dropout here
    assert uc["crossattn"].eq(0).all() and uc["concat"].eq(0).all()
    torch.testing.assert_close(uc["vector"], c["vector"])  # fps / motion / cond_aug kept
    zeroed = cond(batch, force_zero_embeddings=["fps_id"], generator=torch.Generator().manual_seed(0))
    assert zeroed["vector"].eq(0).all()
    with pytest.raises(ValueError, match="not input keys"):
        cond(batch, force_zero_embeddings=["fps"])
    with pytest.raises(ValueError, match="unknown keys"):
        build_tiny_svd_conditioner(encoder=stand_in_vae, ucg_rates={"fps": 0.1})


def test_text_ucg_replaces_caption_or_zeroes() -> None:
    captions = ["a red car", "two birds"]
    torch.manual_seed(0)
    text = build_tiny_sd21_text_conditioner(ucg_rate=1.0, ucg_value="")
    out = text({"txt": captions}, generator=torch.Generator().manual_seed(0))["crossattn"]
    assert out.shape == (2, 77, 32)
    torch.testing.assert_close(out, text.embedders[0](["", ""]))  # dropped caption = empty prompt
    assert not torch.equal(out, text.embedders[0](captions))
    zeroing = build_tiny_sd21_text_conditioner(ucg_rate=1.0, ucg_value=None)
    assert zeroing({"txt": captions}, generator=torch.Generator().manual_seed(0))["crossattn"].eq(0).all()
    kept = build_tiny_sd21_text_conditioner(ucg_rate=0.0)
    torch.testing.assert_close(kept({"txt": captions})["crossattn"], kept.embedders[0](captions))
