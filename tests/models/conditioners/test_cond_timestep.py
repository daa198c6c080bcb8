"""ConcatTimestepEmbedderND: sinusoids of raw values, concatenated per sample."""

from __future__ import annotations

import pytest
import torch

from models.conditioners import ConcatTimestepEmbedderND
from models.unet.embeddings import timestep_embedding


def test_shapes_and_values() -> None:
    emb = ConcatTimestepEmbedderND(256)
    assert list(emb.parameters()) == []
    fps = torch.tensor([5, 6])  # integer ids are fine
    out = emb(fps)
    assert out.shape == (2, 256) and out.dtype == torch.float32
    torch.testing.assert_close(out, timestep_embedding(fps.float(), 256))
    # [cos, sin] of the raw value: value 0 gives ones then zeros.
    zero = emb(torch.zeros(1))
    torch.testing.assert_close(zero[0, :128], torch.ones(128))
    torch.testing.assert_close(zero[0, 128:], torch.zeros(128))


def test_several_values_per_sample_are_concatenated_in_order() -> None:
    emb = ConcatTimestepEmbedderND(8)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = emb(x)
    assert out.shape == (2, 16)
    torch.testing.assert_close(out[:, :8], timestep_embedding(x[:, 0], 8))
    torch.testing.assert_close(out[:, 8:], timestep_embedding(x[:, 1], 8))


def test_bad_rank_raises() -> None:
    with pytest.raises(ValueError, match=r"\(B,\) or \(B, k\)"):
        ConcatTimestepEmbedderND(8)(torch.zeros(2, 2, 2))
