"""Cached CLIP image embeddings: a latent cache written with the stage's own CLIP tower (the real cache writer) gives
the image-to-video conditioner the conditioning it would compute, without running the tower; a cache made by
another CLIP is refused; a cache from before fingerprints is read without its embeddings."""

from __future__ import annotations

import json
import math
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from data.captions import CaptionPicker
from data.latent_cache import LATENT_MEMBER, decode_cached_sample
from data.loader import build_dataloader, build_stream, collate_samples
from data.micro_cond import MicroCondConfig
from data.sources import iter_shard_records
from models.conditioners import tiny_open_clip_config
from models.conditioners.open_clip_image import FrozenOpenCLIPImageEmbedder
from train.builders import build_objective, dataset_config
from train.conditioning import cached_clip_embedding, conditioner_inputs, sample_cond_aug
from train.module import read_metrics
from train.run import initialise, run
from train.stage_cache import cache_stage_sources, clip_tower, with_sources

from .conftest import compose_train

SCRATCH = ("stage.init.from_stage=null", "stage.init.keep=[unet,first_stage,conditioner]")


@pytest.fixture
def stage(stage_overrides, tmp_path):
    """The tiny img2vid stage (built and initialised as a run builds it) and its sources cached with its own VAE
    and CLIP tower."""
    cfg = compose_train(stage_overrides("img2vid_finetune", *SCRATCH, "data.start=center"))
    torch.manual_seed(cfg.seed)
    objective = build_objective(cfg)
    initialise(cfg, objective)
    objective.eval()
    model = objective.model
    sources = cache_stage_sources(cfg, tmp_path / "cache", vae=model.first_stage, clip=clip_tower(model))
    return cfg, objective, sources


def _cached_batch(cfg, sources, n: int = 3) -> dict:
    stream = build_stream(dataset_config(with_sources(cfg, sources), seed=cfg.seed))
    return collate_samples(list(islice(stream, n)))


def _conditioning(objective, batch: dict, *, embedding: torch.Tensor | None, seed: int) -> dict[str, torch.Tensor]:
    """The conditioner's output for ``batch`` as the objective builds it (cond_aug, frame noise, ucg dropout)."""
    g = torch.Generator().manual_seed(seed)
    b = len(batch["key"])
    inputs = conditioner_inputs(
        objective.task,
        captions=batch["caption"],
        fps_id=batch["fps_id"],
        motion_bucket_id=batch["motion_bucket_id"],
        cond_image=objective.cond_image(batch),
        cond_aug=sample_cond_aug(objective.cond_aug, b, generator=g, device=torch.device("cpu")),
        generator=g,
        clip_image_embedding=embedding,
    )
    return objective.model.conditioner(inputs, generator=g)


def test_cached_embedding_gives_the_conditioning_of_the_clip_tower_without_running_it(stage):
    cfg, objective, sources = stage
    batch = _cached_batch(cfg, sources)
    conditioner = objective.model.conditioner
    tower = clip_tower(objective.model)
    assert batch["clip_image_embedding"].shape == (3, 1, tower.embed_dim)
    assert batch["clip_image_embedding"].dtype == torch.float16
    assert batch["clip_fingerprint"] == [tower.fingerprint()] * 3
    embedding = cached_clip_embedding(conditioner, batch)
    assert embedding is batch["clip_image_embedding"]

    calls = []
    hook = tower.register_forward_hook(lambda *_: calls.append(1))
    spec = conditioner.specs[0]
    assert spec.input_key == "cond_frames_without_noise" and spec.cached_key == "clip_image_embedding"
    spec.ucg_rate = 0.5  # dropout on: both paths must zero the same samples (the same generator draws)
    dropped_somewhere = kept_somewhere = False
    try:
        for seed in range(4):
            cached = _conditioning(objective, batch, embedding=embedding, seed=seed)
            assert calls == []  # the tower never ran on the cached path
            fresh = _conditioning(objective, batch, embedding=None, seed=seed)
            assert len(calls) == 1
            calls.clear()
            assert cached.keys() == fresh.keys() == {"crossattn", "vector", "concat"}
            # the cache stores the tower output in float16: agreement within float16 rounding
            scale = float(fresh["crossattn"].abs().max())
            torch.testing.assert_close(cached["crossattn"], fresh["crossattn"], rtol=1e-3, atol=1e-3 * scale)
            assert cached["crossattn"].dtype == fresh["crossattn"].dtype == torch.float32
            for key in ("vector", "concat"):  # untouched by the cache: bit for bit
                torch.testing.assert_close(cached[key], fresh[key], rtol=0, atol=0)
            zero = fresh["crossattn"].flatten(1).abs().amax(1) == 0
            assert torch.equal(cached["crossattn"].flatten(1).abs().amax(1) == 0, zero)
            dropped_somewhere |= bool(zero.any())
            kept_somewhere |= bool((~zero).any())
    finally:
        hook.remove()
    assert dropped_somewhere and kept_somewhere

    # the whole training step agrees too (the objective takes the cached embedding itself)
    without = {k: v for k, v in batch.items() if k not in ("clip_image_embedding", "clip_fingerprint")}
    with torch.no_grad():
        loss_cached, _ = objective(batch, generator=torch.Generator().manual_seed(5))
        loss_fresh, _ = objective(without, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(loss_cached, loss_fresh, rtol=1e-3, atol=1e-6)


def test_a_cache_made_by_another_clip_is_refused(stage, tmp_path):
    cfg, objective, _ = stage
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        other = FrozenOpenCLIPImageEmbedder(tiny_open_clip_config(), resize=cfg.conditioner.clip_resize)
    assert other.fingerprint() != clip_tower(objective.model).fingerprint()
    sources = cache_stage_sources(cfg, tmp_path / "other", vae=objective.model.first_stage, clip=other)
    batch = _cached_batch(cfg, sources, n=2)
    with pytest.raises(ValueError, match="re-run scripts/cache_latents.py with the --clip-model"):
        objective(batch, generator=torch.Generator().manual_seed(0))


def test_a_cache_without_fingerprint_is_read_without_its_embeddings(stage):
    _, _, sources = stage
    record = next(iter_shard_records(sources[0]["urls"][0]))
    meta = json.loads(record["json"])
    kw = {"captions": CaptionPicker(), "micro": MicroCondConfig(), "rng": np.random.default_rng(0)}
    assert "clip_image_embedding" in decode_cached_sample(record, **kw)
    del meta["latent_cache"]["clip_fingerprint"]  # what a cache made before fingerprints holds
    old = {**record, "json": json.dumps(meta).encode()}
    sample = decode_cached_sample(old, **kw)
    assert "clip_image_embedding" not in sample and "clip_fingerprint" not in sample
    assert torch.equal(sample["latent_moments"], decode_cached_sample(record, **kw)["latent_moments"])
    assert LATENT_MEMBER in record


def test_a_stage_trains_from_cached_latents_and_clip_embeddings(stage, monkeypatch):
    cfg, objective, sources = stage
    # DataLoader workers collate the embeddings and fingerprints; Lightning moves the batch; the tower never runs.
    loader = build_dataloader(build_stream(dataset_config(with_sources(cfg, sources), seed=cfg.seed)), batch_size=2,
                              num_workers=1)  # fmt: skip
    first = next(iter(loader))
    assert first["clip_image_embedding"].shape[:2] == (2, 1) and len(first["clip_fingerprint"]) == 2

    def no_tower(self, image):
        raise AssertionError("the CLIP tower ran although the batch carried cached embeddings")

    monkeypatch.setattr(FrozenOpenCLIPImageEmbedder, "forward", no_tower)
    cfg = with_sources(cfg, sources)
    cfg.stage.max_steps = 2
    assert run(cfg) == 0
    rows = read_metrics(Path(cfg.paths.root) / cfg.paths.run_name / cfg.stage.name / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train/loss"]) and r["train/loss"] > 0 for r in rows)
