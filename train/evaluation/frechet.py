"""The Frechet distance between two Gaussians fitted to feature sets (FVD with I3D features, FID with Inception).

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

The reference implementations (stylegan-v's FVD, common_metrics_on_video_quality) take ``scipy.linalg.sqrtm`` of the
non-symmetric product ``S1 S2`` and keep the real part. Here the trace term is computed from the symmetric matrix
``A = S1^(1/2) S2 S1^(1/2)``, which is similar to ``S1 S2`` (``S1^(1/2) A S1^(-1/2) = S1 S2`` when S1 is
invertible, and by continuity otherwise), so ``tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(A))``. Both square roots are
eigendecompositions of symmetric PSD matrices (``numpy.linalg.eigh``), exact up to rounding, with no iteration and no
complex parts; eigenvalues within rounding of zero (or below it) are set to zero. All maths is float64.

Covariances are unbiased (divide by N - 1, ``numpy.cov(rowvar=False)``) as in common_metrics_on_video_quality;
stylegan-v's streaming ``FeatureStats`` divides by N. At the protocol's 13,320 videos the two differ by a factor
of 1 + 1/13319 on the covariance terms, far below the run-to-run spread of FVD.

``FeatureStats`` accumulates the sum and the sum of outer products (of the features minus a shift taken from the
first batch, which keeps the float64 sums well conditioned) so that features need not all be held in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from train.media import atomic_path

ArrayLike = np.ndarray | torch.Tensor


def _as_float64(x: ArrayLike, *, name: str) -> np.ndarray:
    array = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has non-finite values; check the feature network's outputs (NaN or inf)")
    return array


def _clean(eigenvalues: np.ndarray) -> np.ndarray:
    # Eigenvalues within rounding of zero (|l| <= d * eps * max|l|, numpy's matrix_rank tolerance) are set to zero:
    # their square roots (~1e-8 for a rounding error of 1e-16) would otherwise add noise for rank-deficient
    # covariances, e.g. fewer videos than feature dimensions.
    tol = eigenvalues.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(eigenvalues).max(initial=0.0)), 1e-300)
    return np.where(eigenvalues > tol, eigenvalues, 0.0)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues within rounding of zero, or below, are 0)."""
    eigenvalues, vectors = np.linalg.eigh(sigma)
    return (vectors * np.sqrt(_clean(eigenvalues))) @ vectors.T


def trace_sqrt_product(sigma1: ArrayLike, sigma2: ArrayLike) -> float:
    """``tr((S1 S2)^(1/2))`` for symmetric PSD S1, S2, via the eigenvalues of ``S1^(1/2) S2 S1^(1/2)``."""
    s1, s2 = _as_float64(sigma1, name="sigma1"), _as_float64(sigma2, name="sigma2")
    root = _psd_sqrt((s1 + s1.T) / 2)
    inner = root @ ((s2 + s2.T) / 2) @ root
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(_clean(eigenvalues)).sum())


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """The squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    This is the number papers report as FVD / FID (no final square root). Tiny negative values from rounding
    (identical inputs) are returned as 0.
    """
    m1, m2 = _as_float64(mu1, name="mu1"), _as_float64(mu2, name="mu2")
    s1, s2 = _as_float64(sigma1, name="sigma1"), _as_float64(sigma2, name="sigma2")
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise ValueError(f"means must be two vectors of one length; got shapes {m1.shape} and {m2.shape}")
    d = m1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}) for {d}-d means; got {s1.shape} and {s2.shape}")
    diff = m1 - m2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    return max(value, 0.0)


def feature_stats(features: ArrayLike, *, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows are samples; ``ddof=1`` unbiased as ``numpy.cov(rowvar=False)``) in float64."""
    x = _as_float64(features, name="features")
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D); got shape {x.shape}")
    if x.shape[0] <= ddof:
        raise ValueError(f"a covariance with ddof={ddof} needs more than {ddof} feature rows; got {x.shape[0]}")
    mu = x.mean(axis=0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - ddof)


class FeatureStats:
    """Streaming mean and covariance of feature rows (float64 sums; ``add`` any number of (N, D) batches)."""

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.count = 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def add(self, features: ArrayLike) -> None:
        x = _as_float64(features, name="features")
        if x.ndim != 2:
            raise ValueError(f"features must be (N, D); got shape {x.shape}")
        if self.dim is not None and x.shape[1] != self.dim:
            raise ValueError(f"features have {x.shape[1]} dimensions, these stats {self.dim}; use one feature network")
        if x.shape[0] == 0:
            return
        if self._shift is None:
            self.dim = x.shape[1]
            self._shift = x.mean(axis=0)
            self._sum = np.zeros(self.dim)
            self._outer = np.zeros((self.dim, self.dim))
        assert self._sum is not None and self._outer is not None
        centred = x - self._shift
        self._sum += centred.sum(axis=0)
        self._outer += centred.T @ centred
        self.count += x.shape[0]

    def mean(self) -> np.ndarray:
        if self.count == 0 or self._shift is None or self._sum is None:
            raise ValueError("no features were added; the video set is empty")
        return self._shift + self._sum / self.count

    def covariance(self, *, ddof: int = 1) -> np.ndarray:
        if self.count <= ddof:
            raise ValueError(
                f"a covariance needs more than {ddof} videos; got {self.count}. Use more videos (FVD needs many: "
                "the paper protocol uses 13,320)"
            )
        assert self._sum is not None and self._outer is not None
        centred_mean = self._sum / self.count
        cov = (self._outer - self.count * np.outer(centred_mean, centred_mean)) / (self.count - ddof)
        return (cov + cov.T) / 2

    def stats(self, *, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
        return self.mean(), self.covariance(ddof=ddof)

    def save(self, path: str | os.PathLike[str], *, extractor: str) -> Path:
        """Write mean, covariance (ddof=1), count and the feature network's name as an npz file, atomically."""
        mu, sigma = self.stats()
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no ".npz"
            np.savez(f, mu=mu, sigma=sigma, count=np.int64(self.count), extractor=np.str_(extractor))
        return Path(path)


def load_stats(path: str | os.PathLike[str], *, extractor: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, count) from ``FeatureStats.save``; refuses stats made with another feature network."""
    with np.load(path, allow_pickle=False) as data:
        saved = str(data["extractor"])
        if saved != extractor:
            raise ValueError(
                f"{path} holds statistics of {saved!r} features, not {extractor!r}; delete it or pass another path"
            )
        return data["mu"], data["sigma"], int(data["count"])
