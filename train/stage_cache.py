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
from models.conditioners import CLIP_EMBEDDING_KEY
from train.builders import build_objective, dataset_config
from train.config import SourceSchema
from train.run import initialise


def stage_model(cfg: Any) -> nn.Module:
    """The stage's ``LatentDiffusion`` exactly as ``train.run.run`` builds and initialises it (same seed, same init)."""
    torch.manual_seed(cfg.seed)
    objective = build_objective(cfg)
    initialise(cfg, objective)
    return objective.model


def stage_vae(cfg: Any) -> nn.Module:
    """The stage's frozen VAE exactly as ``train.run.run`` builds and initialises it."""
    return stage_model(cfg).first_stage


def clip_tower(model: nn.Module) -> nn.Module | None:
    """The CLIP image tower (``FrozenOpenCLIPImageEmbedder``) whose embeddings the model's conditioner can take from
    a cache, or None (a text task)."""
    embedder = model.conditioner.cached_embedders().get(CLIP_EMBEDDING_KEY)
    return None if embedder is None else embedder.open_clip


def cache_stage_sources(
    cfg: Any, out: Path, *, vae: nn.Module, clip: nn.Module | None = None, device: str = "cpu", batch_size: int = 16
) -> list[dict[str, Any]]:
    """Cache every source of the stage's data config with ``vae`` (and, given ``clip``, the CLIP image embeddings:
    ``clip_tower`` of the stage's model) under ``out/<source index>/``.

    The clips are cut as the stage asks (frames, rate, size, on_short; centred window and crop, as every cache).
    Returns the ``data.sources`` entries that point at the cached shards (same weights and names).
    """
    spec = dataset_config(cfg, seed=cfg.seed).clip
    vae = vae.to(device).eval().requires_grad_(False)
    made_by = f"stage {cfg.stage.name} (seed {cfg.seed})"
    info = {"source": made_by, "sha256": None, "kind": type(vae).__name__}
    encoders = Encoders(vae=vae, vae_info=info, clip=None, clip_name=None)
    if clip is not None:
        fingerprint = clip.fingerprint()  # before the move to the device
        encoders = Encoders(vae, info, clip.to(device).eval(), made_by, clip_fingerprint=fingerprint)
    target_fps = None if spec.target_fps is None else float(spec.target_fps)
    cut = ClipSpec(num_frames=spec.num_frames, target_fps=target_fps, size=tuple(spec.size), on_short=spec.on_short)
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
