"""The Frechet distance against independent computations: closed forms, eig of the non-symmetric product, numpy.cov."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.evaluation.frechet import FeatureStats, feature_stats, frechet_distance, load_stats, trace_sqrt_product


def _random_psd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


def test_diagonal_covariances_match_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    v1, v2 = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)


def test_commuting_covariances_match_the_closed_form():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))  # a shared eigenbasis: the matrices commute
    l1, l2 = rng.uniform(0.0, 2.0, 6), rng.uniform(0.0, 2.0, 6)
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    mu = rng.standard_normal(6)
    expected = ((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum()
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("rank", [None, 3])
def test_trace_term_matches_the_eigenvalues_of_the_nonsymmetric_product(rank):
    # The reference codes take sqrtm(S1 @ S2); its trace is the sum of square roots of S1 @ S2's eigenvalues
    # (real and >= 0 for PSD inputs), computed here with the general (non-symmetric) eigensolver.
    rng = np.random.default_rng(2)
    s1, s2 = _random_psd(rng, 8, rank), _random_psd(rng, 8)
    eig = np.linalg.eigvals(s1 @ s2)
    assert np.abs(eig.imag).max() < 1e-9
    expected = np.sqrt(np.clip(eig.real, 0, None)).sum()
    assert trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-8)
    # ... and with torch's symmetric eigensolver on the (S2^1/2 S1 S2^1/2) form, the other order.
    w, v = torch.linalg.eigh(torch.from_numpy(s2))
    root = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
    inner = root @ torch.from_numpy(s1) @ root
    assert trace_sqrt_product(s1, s2) == pytest.approx(float(torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum()))


def test_properties_identity_symmetry_and_translation():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(7), rng.standard_normal(7)
    s1, s2 = _random_psd(rng, 7), _random_psd(rng, 7, rank=2)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)
    assert frechet_distance(mu1, s1, mu2, s1) == pytest.approx(((mu1 - mu2) ** 2).sum(), rel=1e-9)


def test_one_dimension_is_the_wasserstein_distance_of_two_normals():
    d = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert d == pytest.approx(3.0**2 + (2.0 - 3.0) ** 2)


def test_feature_stats_match_numpy_cov_and_streaming_matches_all_at_once():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 6)) * 3 + 100.0  # a large offset: the shifted sums must keep precision
    mu, sigma = feature_stats(x)
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-11)
    stats = FeatureStats()
    for part in np.array_split(x, [1, 7, 30]):
        stats.add(torch.from_numpy(part))  # tensors or arrays
    assert stats.count == 50
    np.testing.assert_allclose(stats.mean(), mu, rtol=1e-13)
    np.testing.assert_allclose(stats.covariance(), sigma, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats.covariance(ddof=0), np.cov(x, rowvar=False, ddof=0), rtol=1e-10)


def test_stats_round_trip_through_a_file_and_check_the_extractor(tmp_path):
    stats = FeatureStats()
    stats.add(np.random.default_rng(5).standard_normal((10, 3)))
    path = stats.save(tmp_path / "ref.npz", extractor="i3d")
    mu, sigma, count = load_stats(path, extractor="i3d")
    np.testing.assert_array_equal(mu, stats.mean())
    np.testing.assert_array_equal(sigma, stats.covariance())
    assert count == 10 and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="'i3d' features, not 'clip'"):
        load_stats(path, extractor="clip")


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="empty"):
        FeatureStats().mean()
    one = FeatureStats()
    one.add(np.ones((1, 4)))
    with pytest.raises(ValueError, match="needs more than 1 videos"):
        one.covariance()
    with pytest.raises(ValueError, match="5 dimensions, these stats 4"):
        one.add(np.ones((2, 5)))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1))
    with pytest.raises(ValueError, match="covariances must be"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
