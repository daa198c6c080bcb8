"""A stage's data sources cached with the stage's own VAE (``data/latent_cache_writer.py``), so that the cached and
the pixel path train the same model: used by ``scripts/bench_train.py`` and the cached-latent stage tests."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from data.latent_cache_writer import CacheSettings, Encoders, cache_shard
from data.shard_writer import mark_done, output_names
from data.sources import expand_urls
from data.video_decode import ClipSpec
from train.builders import build_objective, dataset_config
from train.config import SourceSchema
from train.run import initialise


def stage_vae(cfg: Any) -> nn.Module:
    """The stage's frozen VAE exactly as ``train.run.run`` builds and initialises it (same seed, same init)."""
    torch.manual_seed(cfg.seed)
    objective = build_objective(cfg)
    initialise(cfg, objective)
    return objective.model.first_stage


def cache_stage_sources(
    cfg: Any, out: Path, *, vae: nn.Module, device: str = "cpu", batch_size: int = 16
) -> list[dict[str, Any]]:
    """Cache every source of the stage's data config with ``vae`` under ``out/<source index>/``.

    The clips are cut as the stage asks (frames, rate, size, on_short; centred window and crop, as every cache).
    Returns the ``data.sources`` entries that point at the cached shards (same weights and names).
    """
    clip = dataset_config(cfg, seed=cfg.seed).clip
    vae = vae.to(device).eval().requires_grad_(False)
    info = {"source": f"stage {cfg.stage.name} (seed {cfg.seed})", "sha256": None, "kind": type(vae).__name__}
    encoders = Encoders(vae=vae, vae_info=info, clip=None, clip_name=None)
    target_fps = None if clip.target_fps is None else float(clip.target_fps)
    cut = ClipSpec(num_frames=clip.num_frames, target_fps=target_fps, size=tuple(clip.size), on_short=clip.on_short)
    settings = CacheSettings(clip=cut, batch_size=batch_size, device=device, dtype=torch.float32, workers=0)
    sources = []
    for index, source in enumerate(cfg.data.sources):
        urls = expand_urls(list(source.urls))
        folder = out / str(index)
        counts: Counter[str] = Counter()
        written = []
        for url, name in zip(urls, output_names(urls), strict=True):
            n = cache_shard(url, folder / name, settings=settings, encoders=encoders, counts=counts)
            if n is None:
                raise ValueError(f"cannot read shard {url}; check data.sources / --data")
            mark_done(folder / name, {"source": url, "samples": n})
            written.append(str(folder / name))
        sources.append({"urls": written, "weight": float(source.weight), "name": str(source.name)})
    return sources


def with_sources(cfg: DictConfig, sources: list[dict[str, Any]]) -> DictConfig:
    """A copy of ``cfg`` whose ``data.sources`` are ``sources`` (e.g. the cached shards)."""
    cfg = copy.deepcopy(cfg)
    cfg.data.sources = [SourceSchema(**s) for s in sources]
    return cfg
