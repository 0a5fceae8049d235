"""Projection, k-means medoids and selection diagnostics on arrays with known structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cola.cluster import gaussian_projection, mean_pairwise_distance, nearest_selected_distance, select_medoids


def test_projection_is_seeded_and_scaled() -> None:
    a, b = gaussian_projection(500, 64, seed=3), gaussian_projection(500, 64, seed=3)
    assert a.shape == (500, 64)
    assert torch.equal(a, b)
    assert not torch.equal(a, gaussian_projection(500, 64, seed=4))
    # N(0, 1/64) entries: the variance is 1/64 within sampling error (32,000 draws).
    assert abs(a.var().item() * 64 - 1.0) < 0.05


def test_projection_preserves_distances_roughly() -> None:
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(20, 2000)), dtype=torch.float32)
    y = x @ gaussian_projection(2000, 256, seed=0)
    ratio = torch.pdist(y) / torch.pdist(x)
    assert 0.75 < ratio.min().item() and ratio.max().item() < 1.25  # Johnson-Lindenstrauss


def _blobs(centers: int, per: int, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=20.0, size=(centers, dim))
    x = np.concatenate([m + rng.normal(scale=0.5, size=(per, dim)) for m in means])
    return x, np.repeat(np.arange(centers), per)


def test_planted_clusters_get_one_pick_each() -> None:
    x, truth = _blobs(centers=6, per=25)
    medoids = select_medoids(x, k=6, seed=0)
    assert sorted(truth[medoids.indices]) == list(range(6))
    # Each pick is the member closest to its cluster's centroid.
    for cluster, pick in enumerate(medoids.indices):
        members = np.flatnonzero(medoids.labels == cluster)
        dists = np.linalg.norm(x[members] - medoids.centroids[cluster], axis=1)
        assert pick == members[dists.argmin()]


def test_picks_are_distinct_pool_members_even_with_duplicates() -> None:
    base = np.random.default_rng(1).normal(size=(5, 4))
    x = np.repeat(base, 4, axis=0)  # 20 candidates, only 5 distinct points
    medoids = select_medoids(x, k=8, seed=0)
    assert len(medoids.indices) == 8
    assert len(set(medoids.indices.tolist())) == 8
    assert all(0 <= i < 20 for i in medoids.indices)


def test_k_equal_to_pool_returns_everything() -> None:
    x = np.random.default_rng(2).normal(size=(7, 3))
    assert sorted(select_medoids(x, k=7, seed=0).indices.tolist()) == list(range(7))


@pytest.mark.parametrize("k", [0, 11])
def test_invalid_k_raises(k: int) -> None:
    with pytest.raises(ValueError, match="between 1 and the number of candidates"):
        select_medoids(np.zeros((10, 2)), k=k, seed=0)


def test_selection_is_deterministic_for_a_seed() -> None:
    x, _ = _blobs(centers=10, per=10, seed=4)
    assert np.array_equal(select_medoids(x, 10, seed=5).indices, select_medoids(x, 10, seed=5).indices)


def test_distance_diagnostics() -> None:
    x = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    selected = np.array([0, 2])
    assert nearest_selected_distance(x, selected).tolist() == [0.0, 5.0, 0.0]
    assert mean_pairwise_distance(x, selected) == pytest.approx(10.0)
    assert mean_pairwise_distance(x, np.array([1])) == 0.0


@pytest.mark.parametrize("chunk_entries", [7, 1 << 22])  # 7: one candidate row per chunk, many merges
def test_matching_on_nearest_candidates_is_the_dense_optimum(monkeypatch, chunk_entries: int) -> None:
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    import cola.cluster as cluster

    monkeypatch.setattr(cluster, "_CHUNK_ENTRIES", chunk_entries)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(300, 5))
    centroids = rng.normal(scale=0.3, size=(12, 5))  # crowded centroids: many want the same candidates
    picks = cluster._match_centroids(x, centroids)
    dense = cdist(centroids, x)
    rows, cols = linear_sum_assignment(dense)
    assert len(set(picks.tolist())) == 12
    assert dense[np.arange(12), picks].sum() == pytest.approx(dense[rows, cols].sum(), rel=1e-12)


def test_minibatch_kmeans_recovers_planted_clusters_deterministically() -> None:
    x, truth = _blobs(centers=8, per=200, seed=3)
    first = select_medoids(x, k=8, seed=1, kmeans="minibatch")
    assert sorted(truth[first.indices]) == list(range(8))
    assert np.array_equal(first.indices, select_medoids(x, k=8, seed=1, kmeans="minibatch").indices)
    # every label agrees with the planted cluster of its medoid
    assert np.array_equal(truth[first.indices][first.labels], truth)


def test_unknown_kmeans_raises() -> None:
    with pytest.raises(ValueError, match="kmeans must be one of auto, full, minibatch"):
        select_medoids(np.zeros((10, 2)), k=2, seed=0, kmeans="faiss")


def test_nearest_selected_distance_in_chunks(monkeypatch) -> None:
    import cola.cluster as cluster

    x = np.random.default_rng(7).normal(size=(50, 3))
    whole = nearest_selected_distance(x, np.array([3, 9, 40]))
    monkeypatch.setattr(cluster, "_CHUNK_ENTRIES", 4)
    assert np.allclose(nearest_selected_distance(x, np.array([3, 9, 40])), whole, rtol=0, atol=1e-12)


def test_lloyd_refine_recovers_planted_clusters_and_returns_consistent_labels(monkeypatch) -> None:
    """From centroids pulled off the planted centres, chunked Lloyd iterations (chunks smaller than the pool)
    land on the centres; each label is its point's nearest returned centroid; sklearn's Lloyd agrees."""
    import cola.cluster
    from sklearn.cluster import KMeans

    x, truth = _blobs(centers=6, per=40, dim=8, seed=1)
    start = np.stack([x[truth == c].mean(0) for c in range(6)]) + 0.5
    monkeypatch.setattr(cola.cluster, "_CHUNK_ENTRIES", 6 * 17)  # 17 rows per chunk: many chunks
    centroids, labels = cola.cluster.lloyd_refine(x.astype(np.float32), start, 20)
    nearest = ((x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (labels == nearest).all()
    assert (labels == truth).all()  # the planted clusters, in the starting centroids' order
    reference = KMeans(n_clusters=6, init=start, n_init=1, max_iter=20).fit(x)
    np.testing.assert_allclose(centroids, reference.cluster_centers_, rtol=1e-5, atol=1e-6)


def test_lloyd_refine_keeps_an_empty_centroid_in_place() -> None:
    from cola.cluster import lloyd_refine

    x = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0]])
    far = np.array([100.0, -100.0])
    centroids, labels = lloyd_refine(x, np.stack([x[0], x[2], far]), 5)
    assert labels.tolist() == [0, 0, 1]
    np.testing.assert_allclose(centroids, [[0.05, 0.0], [10.0, 10.0], far])
