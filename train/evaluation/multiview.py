"""Multi-view evaluation (SVD paper 4.5, its GSO table): novel views generated from an object's first view against the
held-out ground-truth views of its orbit.

For each held-out orbit (shards in the data/ layout with ``elevation`` in the json, e.g. the demo's ``orbits/test/``):
its first frame and elevation condition an mv stage export (``train.sampling.sample_video``, one seed per orbit),
the generated views 1 .. T-1 are compared with the orbit's frames 1 .. T-1 (view 0 is the input and is left out), and
each metric is averaged over the views, then over the orbits:

* **PSNR** in dB on [0, 1] pixels (``psnr``); identical images give ``inf`` (reported as such; the mean over views is
  then ``inf``, the JSON carries ``Infinity``).
* **SSIM** (Wang et al. 2004; ``ssim``): an 11x11 gaussian window with sigma 1.5, K1 0.01, K2 0.03, per channel,
  the images reflect-padded so the SSIM map has their size, its mean; this is torchmetrics' (1.x)
  ``StructuralSimilarityIndexMeasure(data_range=1.0)`` computation, written in float64 torch (the tests compare them).
* **CLIP-S**: the cosine between the CLIP image embeddings of each generated view and its ground-truth view; the
  embeddings come from the export's own CLIP image tower (its conditioner's, ViT-H-14 for SVD) unless a tower is
  given (``--clip-arch`` / ``--clip-pretrained``, ``models.clip_scorer.ClipScorer``).
* **LPIPS** is not computed: the ``lpips`` package (and torchmetrics' LPIPS, which wraps it) fetches its torchvision
  backbone weights from the internet on first use and is not installed here; no packaged network works offline.

Each metric also comes as ``input_copy_*``: the same scores of the input view repeated for every view, the floor a
model must beat to have learned anything about the unseen sides.

The ground truth goes through the same decode and resize as training clips (``data.loader.build_stream``: centred
clip and crop at the generation size, no shuffle); records without ``elevation`` are a ValueError.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.video_decode import ClipSpec
from train.config import GenerationSettings
from train.evaluation.generate import Generator, generate_video
from train.tasks import get_task

CLIP_INPUT_KEY = "cond_frames_without_noise"


def _unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float64 in [0, 1]."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected uint8 (N, 3, H, W) frames, got {frames.dtype} {tuple(frames.shape)}")
    return frames.double() / 255.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (N,) in dB of uint8 (N, 3, H, W) images; ``inf`` where they are identical."""
    mse = (_unit(a) - _unit(b)).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)  # mse 0 -> inf


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]  # (size, size)


def ssim(a: torch.Tensor, b: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (N,) of uint8 (N, 3, H, W) images (module docstring); 1 for identical images."""
    x, y = _unit(a), _unit(b)
    if min(x.shape[-2:]) <= window // 2:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are too small for an SSIM window of {window}")
    c1, c2 = 0.01**2, 0.03**2
    pad = (window - 1) // 2
    kernel = _gaussian_window(window, sigma).expand(3, 1, window, window)
    stack = torch.cat([x, y, x * x, y * y, x * y])  # (5N, 3, H, W)
    stack = F.pad(stack, (pad, pad, pad, pad), mode="reflect")
    mu_x, mu_y, xx, yy, xy = F.conv2d(stack, kernel, groups=3).split(x.shape[0])
    var_x, var_y = (xx - mu_x**2).clamp(min=0.0), (yy - mu_y**2).clamp(min=0.0)
    cov = xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).flatten(1).mean(dim=1)  # the map has the image's size (reflect padding)


def export_clip_embedder(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (N, 3, H, W) -> (N, D) unit embeddings from the export's conditioner CLIP image tower."""
    keys = model.conditioner.input_keys
    if CLIP_INPUT_KEY not in keys:
        raise ValueError(f"the export's conditioner has no CLIP image embedder ({keys}); give --clip-arch")
    tower = model.conditioner.embedders[keys.index(CLIP_INPUT_KEY)].open_clip
    dtype = next(tower.parameters()).dtype
    device = next(tower.parameters()).device

    @torch.no_grad()
    def embed(frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(device=device, dtype=dtype) / 127.5 - 1.0  # the conditioner's [-1, 1] input
        return F.normalize(tower(x).double().cpu(), dim=-1)

    return embed


@dataclass(frozen=True)
class Orbit:
    key: str
    frames: torch.Tensor  # uint8 (T, 3, H, W): view 0 is the input, the others the ground truth
    elevation: float


def iter_orbits(urls: Sequence[str], *, num_views: int, size: tuple[int, int]) -> Iterator[Orbit]:
    """The orbits of the shards, in order, decoded as training decodes clips (module docstring)."""
    from data.loader import DatasetConfig, build_stream
    from data.sources import SourceSpec
    from data.stream import StreamConfig

    config = DatasetConfig(
        sources=[SourceSpec(list(urls))],
        clip=ClipSpec(num_frames=num_views, size=size, start="center", crop="center"),
        stream=StreamConfig(seed=0, shuffle_buffer=0, passes=1),
        require_json="always",
    )
    for sample in build_stream(config, rank=0, world_size=1).iter_worker(0, num_workers=1):
        if "elevation" not in sample:
            raise ValueError(
                f"record {sample['key']} of {sample['shard']} has no 'elevation' in its json; the multiview "
                "evaluation needs orbit records (scripts/make_demo_data.py --orbits N writes orbits/test/)"
            )
        yield Orbit(sample["key"], sample["frames"], float(sample["elevation"]))


@dataclass
class MultiviewScores:
    """Per-orbit means over the generated views; ``summary`` averages them over the orbits."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        names = ("psnr", "ssim", "clip_s", "input_copy_psnr", "input_copy_ssim", "input_copy_clip_s")
        return {n: math.fsum(r[n] for r in self.rows) / len(self.rows) for n in names} if self.rows else {}


def score_views(
    generated: torch.Tensor, truth: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, float]:
    """Mean PSNR, SSIM and CLIP-S of uint8 (V, 3, H, W) generated views against the ground-truth views."""
    if generated.shape != truth.shape:
        raise ValueError(f"generated views {tuple(generated.shape)} vs ground truth {tuple(truth.shape)}")
    clip_s = (embed(generated) * embed(truth)).sum(dim=-1)
    return {
        "psnr": float(psnr(generated, truth).mean()),
        "ssim": float(ssim(generated, truth).mean()),
        "clip_s": float(clip_s.mean()),
    }


def evaluate_orbits(
    source: Generator,
    orbits: Iterable[Orbit],
    *,
    settings: GenerationSettings,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> MultiviewScores:
    """Generate each orbit from its first view and elevation (seed ``settings.seed + i``) and score views 1 .. T-1."""
    if not get_task(source.task).image_conditioned or not get_task(source.task).video:
        raise ValueError(f"the export is a {source.task} stage; the multiview evaluation needs an mv stage export")
    embed = embed or export_clip_embedder(source.model)
    scores = MultiviewScores()
    bar = tqdm(total=limit, unit="orbit", desc="multiview", disable=not progress)
    for i, orbit in enumerate(orbits):
        if limit is not None and i >= limit:
            break
        num_views, _, height, width = orbit.frames.shape
        video = generate_video(
            source.model,
            source.denoiser,
            task=source.task,
            image=orbit.frames[0],
            num_frames=num_views,
            height=height,
            width=width,
            settings=dataclasses.replace(settings, seed=settings.seed + i, elevation=orbit.elevation),
            device=source.device,
        )
        row = score_views(video[1:], orbit.frames[1:], embed)
        copy = score_views(orbit.frames[:1].expand_as(orbit.frames[1:]), orbit.frames[1:], embed)
        copied = {f"input_copy_{k}": v for k, v in copy.items()}
        scores.rows.append({"key": orbit.key, "elevation": orbit.elevation, **row, **copied})
        bar.update(1)
    bar.close()
    if not scores.rows:
        raise ValueError("no orbits were read from --data; check the shard specs")
    return scores


def add_parser(sub: Any, common: Callable[..., None]) -> None:
    """The ``multiview`` subcommand of scripts/evaluate.py (``common`` adds the shared options)."""
    mv = sub.add_parser("multiview", help="PSNR / SSIM / CLIP-S of an mv export's novel views against held-out orbits")
    mv.add_argument("--export", required=True, help="a multiview stage export (task mv)")
    mv.add_argument("--data", nargs="+", required=True, help="shard specs of held-out orbits (elevation in the json)")
    mv.add_argument("--num-views", type=int, help="views per orbit (default: the export's frame count)")
    mv.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="default: the export's training size")
    mv.add_argument("--num-orbits", type=int, help="evaluate only the first N orbits")
    mv.add_argument("--steps", type=int, default=GenerationSettings.num_steps)
    mv.add_argument("--min-cfg", type=float, default=GenerationSettings.min_cfg)
    mv.add_argument("--max-cfg", type=float, default=GenerationSettings.max_cfg)
    mv.add_argument("--cond-aug", type=float, default=GenerationSettings.cond_aug)
    mv.add_argument("--decode-chunk", type=int, default=GenerationSettings.decode_chunk)
    mv.add_argument("--per-orbit", help="jsonl of the per-orbit scores")
    common(mv, features=False)
    mv.set_defaults(clip_arch=None)  # CLIP-S with the export's own CLIP image tower unless --clip-arch names one


def run_multiview(args: argparse.Namespace) -> dict[str, Any]:
    """``scripts/evaluate.py multiview``: the JSON result (the per-orbit rows go to ``--per-orbit``)."""
    from models.clip_scorer import ClipScorer
    from train.export import load_export

    device = torch.device(args.device)
    export = load_export(args.export, device=device)
    source = Generator(export.model.to(device), export.denoiser.to(device), export.task, device)
    num_views = args.num_views or export.num_frames
    size = tuple(args.size) if args.size else (export.height, export.width)
    settings = GenerationSettings(
        num_steps=args.steps, min_cfg=args.min_cfg, max_cfg=args.max_cfg, cond_aug=args.cond_aug, seed=args.seed,
        decode_chunk=args.decode_chunk,
    )  # fmt: skip
    embed = None
    if args.clip_arch is not None:
        scorer = ClipScorer.build(args.clip_arch, pretrained=args.clip_pretrained, device=args.device)
        embed = lambda frames: scorer.embed_frames(frames).double().cpu()  # noqa: E731 (unit embeddings)
    scores = evaluate_orbits(
        source,
        iter_orbits(args.data, num_views=num_views, size=size),
        settings=settings,
        embed=embed,
        limit=args.num_orbits,
        progress=not args.quiet,
    )
    if args.per_orbit:
        import json

        from train.media import atomic_path

        with atomic_path(args.per_orbit) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in scores.rows))
    clip = f"{args.clip_arch} ({args.clip_pretrained or 'random'})" if embed else "the export's CLIP image tower"
    return {
        "mode": "multiview",
        **scores.summary(),
        "num_orbits": len(scores.rows),
        "num_views": num_views,
        "size": list(size),
        "clip": clip,
        "lpips": "not available offline (see train/evaluation/multiview.py)",
        "steps": args.steps,
        "seed": args.seed,
    }
