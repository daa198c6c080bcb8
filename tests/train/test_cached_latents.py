"""Stages trained from cached latents: the demo clips cached with the stage's own VAE, then video stages on them.

The cache is made by ``train.stage_cache.cache_stage_sources`` (``data/latent_cache_writer.py``, as
``scripts/cache_latents.py`` uses it, with the VAE the stage builds and initialises), so the cached and the pixel
path train the same model; the objective must then see the same latents for the same clip and generator (up to the
float16 the cache stores the posterior moments in).
"""

from __future__ import annotations

import math
import tarfile
from itertools import islice
from pathlib import Path

import pytest
import torch

from data.loader import build_stream, collate_samples
from models.checkpoints import load_state_dict
from train.builders import build_objective, dataset_config
from train.module import read_metrics
from train.run import initialise, run
from train.stage_cache import cache_stage_sources, stage_vae, with_sources

from .conftest import compose_train

SCRATCH = ("stage.init.from_stage=null", "stage.init.keep=[unet,first_stage,conditioner]")


@pytest.mark.parametrize("stage", ["video_pretrain", "img2vid_finetune"])
def test_a_video_stage_trains_from_cached_latents(stage_overrides, tmp_path, stage):
    cfg = compose_train(stage_overrides(stage, *SCRATCH, "stage.max_steps=2"))
    vae = stage_vae(cfg)
    sources = cache_stage_sources(cfg, tmp_path / "cache", vae=vae)
    shards = [Path(url) for s in sources for url in s["urls"]]
    assert shards and all(p.is_relative_to(tmp_path / "cache") for p in shards)
    for shard in shards:  # no media left: the run can only train on the cached latents
        with tarfile.open(shard) as tar:
            assert {name.split(".", 1)[1] for name in tar.getnames()} == {"json", "txt", "latents.safetensors"}

    assert run(with_sources(cfg, sources)) == 0
    folder = tmp_path / "runs" / "demo" / stage
    rows = read_metrics(folder / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and not any(r["skipped"] for r in rows)
    assert all(math.isfinite(r["train/loss"]) and r["train/loss"] > 0 for r in rows)
    export = load_state_dict(folder / "export" / "model.safetensors")
    for key, value in vae.state_dict().items():  # the run's frozen VAE is the one that made the cache
        torch.testing.assert_close(export[f"first_stage_model.{key}"], value, rtol=0, atol=0)


def _first_by_key(cfg, count: int) -> dict[str, dict]:
    """The first ``count`` distinct samples of the stage's stream (in this process), by key."""
    samples: dict[str, dict] = {}
    for sample in islice(build_stream(dataset_config(cfg, seed=cfg.seed)), 50):
        samples.setdefault(sample["key"], sample)
        if len(samples) == count:
            break
    return samples


def test_latents_from_the_cache_equal_latents_from_frames(stage_overrides, tmp_path):
    # A centred window, as the cache cuts it, so both paths see the same frames of each clip.
    cfg = compose_train(stage_overrides("img2vid_finetune", *SCRATCH, "data.start=center"))
    torch.manual_seed(cfg.seed)
    objective = build_objective(cfg)
    initialise(cfg, objective)
    objective.eval()
    sources = cache_stage_sources(cfg, tmp_path / "cache", vae=objective.model.first_stage)
    cached = _first_by_key(with_sources(cfg, sources), 3)
    decoded = _first_by_key(cfg, 6)
    assert len(cached) == 3 and set(cached) <= set(decoded)

    for key, sample in cached.items():
        from_cache, from_frames = collate_samples([sample]), collate_samples([decoded[key]])
        assert "frames" not in from_cache and "latent_moments" in from_cache
        torch.testing.assert_close(objective.cond_image(from_cache), objective.cond_image(from_frames), rtol=0, atol=0)
        z_cache = objective.latents(from_cache, generator=torch.Generator().manual_seed(11))
        z_frames = objective.latents(from_frames, generator=torch.Generator().manual_seed(11))
        assert z_cache.shape == z_frames.shape == (cfg.stage.num_frames, 4, 8, 8)
        # float16 moments: relative error 2^-11 on the mean and on logvar (so ~|logvar| 2^-12 on std).
        torch.testing.assert_close(z_cache, z_frames, rtol=2e-3, atol=2e-3 * float(z_frames.abs().max()))
        with torch.no_grad():  # the whole step draws the same randomness on both paths, so the losses agree too
            loss_cache, _ = objective(from_cache, generator=torch.Generator().manual_seed(5))
            loss_frames, _ = objective(from_frames, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(loss_cache, loss_frames, rtol=1e-3, atol=1e-6)
