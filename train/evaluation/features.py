"""Video feature networks for the Frechet distance: the paper's I3D (FVD) and a CLIP content-only variant.

Every extractor maps uint8 videos ``(N, T, 3, H, W)`` to float64 features ``(N, dim)`` on CPU.

**I3D** (``I3DFeatures``): the TorchScript I3D that the SVD paper's UCF-101 protocol uses (RECIPE 7), the Kinetics-400
I3D as converted by stylegan-v and used by Brooks et al. (long-video-gan), file ``i3d_torchscript.pt``. It is called as
``detector(videos, rescale=True, resize=True, return_features=True)`` with ``videos`` float ``(N, 3, T, H, W)`` holding
pixel values in [0, 255]: ``rescale`` maps them to [-1, 1] inside the network, ``resize`` resamples every frame to
224x224 there, and ``return_features`` returns the 400-d pre-softmax logits, the features FVD is computed on
(stylegan-v's ``compute_fvd`` uses exactly these flags). Nothing is downloaded: the user gives the file's path.
TorchScript files carry code as well as weights and run it when loaded and called; load only a file from a source
you trust (the same caution as for any pickle or TorchScript file).

**CLIP** (``ClipVideoFeatures``): open_clip image embeddings per frame, averaged over time, optionally with the mean
absolute difference of consecutive frames' embeddings appended (a crude motion term). A content-only, CLIP-space
Frechet distance, handy during training when no I3D file is at hand. Its values are **not** FVD and not comparable
with the paper's numbers (SVD 242.02 on UCF-101 is I3D FVD).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Protocol, get_args

import torch

from train.evaluation.clip_metrics import ClipScorer
from train.evaluation.frechet import FeatureStats

FeatureName = Literal["i3d", "clip", "clip+diff"]
FEATURE_NAMES: tuple[str, ...] = get_args(FeatureName)
I3D_FILENAME = "i3d_torchscript.pt"
I3D_KWARGS = {"rescale": True, "resize": True, "return_features": True}
I3D_HELP = (
    f"the TorchScript I3D of the FVD protocol ({I3D_FILENAME}, Kinetics-400 I3D as released with stylegan-v and "
    "used by Brooks et al. and the SVD paper); download it once yourself and pass its path"
)


class VideoFeatureExtractor(Protocol):
    """uint8 ``(N, T, 3, H, W)`` videos -> float64 ``(N, dim)`` features on CPU."""

    name: str

    @property
    def dim(self) -> int: ...

    def __call__(self, videos: torch.Tensor) -> torch.Tensor: ...


def check_videos(videos: torch.Tensor) -> torch.Tensor:
    if videos.ndim != 5 or videos.shape[2] != 3 or videos.dtype != torch.uint8:
        raise ValueError(f"videos must be uint8 (N, T, 3, H, W); got {videos.dtype} {tuple(videos.shape)}")
    return videos


def to_i3d_input(videos: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, T, 3, H, W)`` -> float32 ``(N, 3, T, H, W)`` in [0, 255], the I3D input with ``rescale=True``."""
    return check_videos(videos).permute(0, 2, 1, 3, 4).float()  # (N, T, 3, H, W) -> (N, 3, T, H, W)


class I3DFeatures:
    """Features of the TorchScript I3D at ``path`` (see the module docstring: only trusted files)."""

    name = "i3d"

    def __init__(self, path: str | os.PathLike[str], *, device: str | torch.device = "cpu", batch_size: int = 16):
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no I3D file at {path}: --i3d needs {I3D_HELP}")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; use a positive number of videos per I3D forward")
        self.device = torch.device(device)
        with warnings.catch_warnings():
            # The protocol's network exists only as TorchScript; torch's deprecation notice is not actionable here.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.load.*")
            self.detector = torch.jit.load(str(path), map_location=self.device).eval()
        self.batch_size = batch_size
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:  # probe once with a blank 16-frame video (the protocol's length)
            self(torch.zeros(1, 16, 3, 64, 64, dtype=torch.uint8))
        assert self._dim is not None
        return self._dim

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in check_videos(videos).split(self.batch_size):
            features = self.detector(to_i3d_input(chunk).to(self.device), **I3D_KWARGS)
            if features.ndim != 2 or features.shape[0] != chunk.shape[0]:
                raise ValueError(
                    f"the I3D file returned {tuple(features.shape)} for {chunk.shape[0]} videos; expected (N, 400). "
                    f"Is it {I3D_HELP.split(';')[0]}?"
                )
            out.append(features.double().cpu())
        result = torch.cat(out)
        self._dim = int(result.shape[1])
        return result


class ClipVideoFeatures:
    """Mean CLIP frame embedding per video (+ mean |consecutive difference| with ``temporal_diff``); not FVD."""

    def __init__(self, scorer: ClipScorer, *, temporal_diff: bool = False) -> None:
        self.scorer = scorer
        self.temporal_diff = temporal_diff
        self.name = "clip+diff" if temporal_diff else "clip"

    @property
    def dim(self) -> int:
        return self.scorer.embed_dim * (2 if self.temporal_diff else 1)

    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        n, t = check_videos(videos).shape[:2]
        return self.pool(self.scorer.embed_frames(videos.flatten(0, 1)).view(n, t, -1))  # (N*T, D) -> (N, T, D)

    def pool(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, T, D) CLIP frame embeddings (``ClipScorer.embed_frames`` per video, stacked) -> float64 (N, dim)."""
        if frames.ndim != 3 or frames.shape[2] != self.scorer.embed_dim:
            raise ValueError(f"frame embeddings must be (N, T, {self.scorer.embed_dim}); got {tuple(frames.shape)}")
        frames = frames.double()
        features = [frames.mean(dim=1)]
        if self.temporal_diff:
            diff = (frames[:, 1:] - frames[:, :-1]).abs()
            features.append(diff.mean(dim=1) if frames.shape[1] > 1 else torch.zeros_like(features[0]))
        return torch.cat(features, dim=1)


def build_extractor(
    features: FeatureName,
    *,
    i3d_path: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    scorer: ClipScorer | None = None,
    clip_arch: str = "ViT-B-32",
    clip_pretrained: str | None = None,
) -> VideoFeatureExtractor:
    """The feature network ``features`` names: the I3D file at ``i3d_path`` (``batch_size`` videos per forward), or
    CLIP features of ``scorer`` (built from ``clip_arch`` / ``clip_pretrained`` on ``device`` when not given)."""
    if features == "i3d":
        if i3d_path is None:
            raise ValueError(f"i3d features need the path of {I3D_HELP}")
        return I3DFeatures(i3d_path, device=device, batch_size=batch_size)
    if features not in FEATURE_NAMES:
        raise ValueError(f"features={features!r}; choose one of {', '.join(FEATURE_NAMES)}")
    if scorer is None:
        scorer = ClipScorer.build(clip_arch, pretrained=clip_pretrained, device=device)
    return ClipVideoFeatures(scorer, temporal_diff=features == "clip+diff")


def metric_name(extractor: VideoFeatureExtractor) -> str:
    """``fvd`` for I3D features (the paper's metric), else ``fd_<extractor>`` (``fd_clip``, ``fd_clip_diff``)."""
    return "fvd" if extractor.name == "i3d" else f"fd_{extractor.name.replace('+', '_')}"


def accumulate_features(
    extractor: VideoFeatureExtractor,
    videos: Iterable[torch.Tensor],
    *,
    batch_size: int = 16,
    num_frames: int | None = None,
    limit: int | None = None,
    what: str = "videos",
    progress: bool = False,
    rows: list[torch.Tensor] | None = None,
) -> FeatureStats:
    """Streaming feature statistics of uint8 (T, 3, H, W) videos, ``batch_size`` videos per extractor call.

    All videos must have one frame count (``num_frames`` when given): FVD compares clips of one length. ``limit``
    stops after that many videos; ``rows``, when given, also receives each batch's (B, dim) features. Raises
    ValueError for an empty set or a mismatched frame count.
    """
    from tqdm import tqdm

    stats = FeatureStats()
    batch: list[torch.Tensor] = []
    frame_size: tuple[int, ...] | None = None
    bar = tqdm(total=limit, desc=f"features of {what}", unit="video", disable=not progress)
    for video in videos:
        if video.ndim != 4 or video.shape[1] != 3:
            raise ValueError(f"a video must be (T, 3, H, W); got {tuple(video.shape)}")
        if num_frames is None:
            num_frames = int(video.shape[0])
        if video.shape[0] != num_frames:
            raise ValueError(
                f"{what}: a video has {video.shape[0]} frames, others {num_frames}; FVD compares clips of one "
                "length: generate or cut every clip to the same number of frames"
            )
        frame_size = frame_size or tuple(video.shape[2:])
        if tuple(video.shape[2:]) != frame_size:
            raise ValueError(
                f"{what}: frame sizes differ ({tuple(video.shape[2:])} vs {frame_size}); resize every "
                "video to one size (--size)"
            )
        batch.append(video)
        if len(batch) == batch_size:
            _add(stats, extractor(torch.stack(batch)), rows)
            bar.update(len(batch))
            batch = []
        if limit is not None and stats.count + len(batch) >= limit:
            break
    if batch:
        _add(stats, extractor(torch.stack(batch)), rows)
        bar.update(len(batch))
    bar.close()
    if stats.count == 0:
        raise ValueError(f"no {what}: the set is empty (check the folder, the shards or the number requested)")
    return stats


def _add(stats: FeatureStats, features: torch.Tensor, rows: list[torch.Tensor] | None) -> None:
    stats.add(features)
    if rows is not None:
        rows.append(features)
