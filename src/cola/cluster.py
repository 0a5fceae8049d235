"""Random projection, k-means and medoid picking: pure functions on arrays (COLA Stage 3, arXiv 2510.10618 Sec. 4.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist, pdist

if TYPE_CHECKING:
    import torch


def gaussian_projection(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """A seeded Gaussian random projection (in_dim, out_dim) with N(0, 1/out_dim) entries (Johnson-Lindenstrauss).

    Drawn on the CPU from an explicit generator, so the same seed gives the same matrix on any device.
    """
    import torch  # imported here so that array-only users of this module (Stage 1 scoring) stay light

    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(in_dim, out_dim, generator=generator, dtype=torch.float32) / out_dim ** 0.5


# Above this many candidates, k-means runs mini-batch (then a few full Lloyd iterations) instead of full-batch Lloyd
# restarts: measured at 100k x 64, k = 128 within 1 % of the full-batch inertia at a quarter of its time
# (benchmarks/selection_scale.py). At or below it, the full-batch method is kept exactly as it was.
FULL_BATCH_LIMIT = 50_000
# rows of candidates whose distances to every centroid are held at once (chunk x k float64): bounded memory at any N
_CHUNK_ENTRIES = 1 << 20


@dataclass(frozen=True)
class Medoids:
    """The result of clustering: picked candidate per cluster, every candidate's cluster, the centroids."""

    indices: np.ndarray    # (k,) candidate index picked for each cluster, all distinct
    labels: np.ndarray     # (N,) cluster of each candidate
    centroids: np.ndarray  # (k, D)


def select_medoids(features: np.ndarray, k: int, seed: int, n_init: int = 3,
                   on_restart: Callable[[], None] | None = None, kmeans: str = "auto") -> Medoids:
    """k-means with k clusters, then one distinct candidate per centroid, as close to it as possible.

    features: (N, D) candidates (any float dtype). k-means runs `n_init` times from k-means++ seeds `seed, seed+1,
    …` and keeps the lowest inertia (`on_restart` is called after each run, for progress). `kmeans`: "full"
    (scikit-learn's full-batch Lloyd), "minibatch" (MiniBatchKMeans, Sculley 2010, each restart on the whole set;
    the best then refined by full Lloyd iterations) or "auto" (full up to FULL_BATCH_LIMIT candidates).

    The candidate-to-centroid matching is an optimal assignment (minimum total Euclidean distance), so exactly k
    different candidates come back even when centroids coincide (duplicate candidates) or a cluster is empty. It is
    solved on each centroid's k nearest candidates only, found chunk by chunk: no k x N matrix is ever held, and
    the result is the same optimum (a centroid matched outside its k nearest could swap to one of them that no
    other centroid holds, at no greater cost).

    Raises ValueError when k is not in [1, N] or `kmeans` is not one of the three.
    """
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of candidates ({n}), got {k}")
    if kmeans not in ("auto", "full", "minibatch"):
        raise ValueError(f"kmeans must be one of auto, full, minibatch, got {kmeans!r}")
    if kmeans == "full" or (kmeans == "auto" and n <= FULL_BATCH_LIMIT):
        centroids, labels = _full_batch_kmeans(np.asarray(features, dtype=np.float64), k, seed, n_init, on_restart)
    else:
        centroids, labels = _minibatch_kmeans(np.asarray(features, dtype=np.float32), k, seed, n_init, on_restart)
    return Medoids(indices=_match_centroids(features, centroids), labels=labels, centroids=centroids)


def _full_batch_kmeans(x: np.ndarray, k: int, seed: int, n_init: int,
                       on_restart: Callable[[], None] | None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    best = None
    for restart in range(n_init):
        with warnings.catch_warnings():  # fewer distinct points than k: handled by the matching
            warnings.filterwarnings("ignore", message="Number of distinct clusters")
            km = KMeans(n_clusters=k, n_init=1, random_state=seed + restart).fit(x)
        if best is None or km.inertia_ < best.inertia_:
            best = km
        if on_restart is not None:
            on_restart()
    return best.cluster_centers_, best.labels_.astype(np.int64)


def _minibatch_kmeans(x: np.ndarray, k: int, seed: int, n_init: int, on_restart: Callable[[], None] | None,
                      batch_size: int = 4096, refine_iterations: int = 10) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import MiniBatchKMeans

    best = None
    for restart in range(n_init):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Number of distinct clusters")
            km = MiniBatchKMeans(n_clusters=k, n_init=1, random_state=seed + restart,
                                 batch_size=max(batch_size, 3 * k)).fit(x)
        if best is None or km.inertia_ < best.inertia_:  # inertia_ is over the whole set after fitting
            best = km
        if on_restart is not None:
            on_restart()
    return lloyd_refine(x, best.cluster_centers_, refine_iterations)


def lloyd_refine(x: np.ndarray, centroids: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `iterations` full Lloyd iterations (assign each point to its nearest centroid, move each centroid
    to its points' mean; Lloyd 1982) from `centroids` (k, D), over x (N, D) in chunks of rows: no copy of x and
    no N x k matrix, so memory stays flat at any N. Stops early when no label changes; a centroid that loses all
    its points stays where it was. Returns ((k, D) float64 centroids, (N,) int64 labels of those centroids)."""
    from scipy.sparse import csr_matrix

    c = np.asarray(centroids, dtype=np.float64).copy()
    k, step = len(c), _row_step(len(c))
    labels = np.full(len(x), -1, dtype=np.int64)
    for iteration in range(iterations + 1):
        sums, counts, changed = np.zeros_like(c), np.zeros(k), 0
        # |x - c|^2 less the row's own |x|^2, which does not change the argmin: x @ (-2 c^T) + |c|^2
        minus_twice, squared = -2.0 * c.T, (c * c).sum(1)
        for start in range(0, len(x), step):
            rows = np.asarray(x[start:start + step], dtype=np.float64)
            scores = rows @ minus_twice
            scores += squared
            assigned = scores.argmin(axis=1)
            changed += int((assigned != labels[start:start + step]).sum())
            labels[start:start + step] = assigned
            members = csr_matrix((np.ones(len(rows)), (assigned, np.arange(len(rows)))), shape=(k, len(rows)))
            sums += members @ rows  # (k, D): each centroid's points summed
            counts += np.bincount(assigned, minlength=k)
        if changed == 0 or iteration == iterations:  # the labels are those of the centroids returned
            break
        present = counts > 0
        c[present] = sums[present] / counts[present, None]
    return c, labels


def _row_step(columns: int) -> int:
    """How many candidate rows to take at once against `columns` points: chunk x columns <= _CHUNK_ENTRIES."""
    return max(1, _CHUNK_ENTRIES // max(columns, 1))


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(len(x), len(y)) squared Euclidean distances in float64, clipped at 0."""
    x = np.asarray(x, dtype=np.float64)
    d2 = (x * x).sum(1)[:, None] - 2.0 * (x @ y.T) + (y * y).sum(1)[None, :]
    return np.maximum(d2, 0.0, out=d2)


def _match_centroids(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(k,) distinct candidates of minimum total distance to the k centroids (one each), from a sparse graph of
    each centroid's k nearest candidates, gathered chunk by chunk over the N candidates."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    k, n = len(centroids), len(features)
    c = np.asarray(centroids, dtype=np.float64)
    near_d = np.empty((k, 0))                  # (k, <= k) squared distances of the nearest found so far
    near_i = np.empty((k, 0), dtype=np.int64)  # (k, <= k) their candidate indices
    step = _row_step(k)
    for start in range(0, n, step):
        d2 = _squared_distances(features[start:start + step], c).T  # (k, chunk)
        d = np.concatenate([near_d, d2], axis=1)
        i = np.concatenate([near_i, np.broadcast_to(np.arange(start, start + d2.shape[1]), d2.shape)], axis=1)
        if d.shape[1] > k:
            keep = np.argpartition(d, k - 1, axis=1)[:, :k]
            d, i = np.take_along_axis(d, keep, axis=1), np.take_along_axis(i, keep, axis=1)
        near_d, near_i = d, i
    columns, column_of = np.unique(near_i, return_inverse=True)
    # +1 keeps zero distances (a candidate on its centroid) as edges; every full matching has k edges, so the
    # constant does not change which one is optimal
    graph = csr_matrix((np.sqrt(near_d).ravel() + 1.0, (np.repeat(np.arange(k), near_i.shape[1]),
                                                         column_of.ravel())), shape=(k, len(columns)))
    rows, matched = min_weight_full_bipartite_matching(graph)
    picks = np.empty(k, dtype=np.int64)
    picks[rows] = columns[matched]
    return picks


def nearest_selected_distance(features: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """(N,) distance of every candidate to its nearest selected candidate (representativeness; lower is better).

    Computed in chunks of candidates, so memory stays bounded for any N."""
    chosen = np.asarray(features[np.asarray(selected)], dtype=np.float64)
    out = np.empty(len(features))
    step = _row_step(len(chosen))
    for start in range(0, len(features), step):
        out[start:start + step] = cdist(np.asarray(features[start:start + step], np.float64), chosen).min(axis=1)
    return out


def mean_pairwise_distance(features: np.ndarray, selected: np.ndarray) -> float:
    """Mean Euclidean distance between the selected candidates (diversity; higher is more spread out)."""
    if len(selected) < 2:
        return 0.0
    return float(pdist(np.asarray(features, np.float64)[selected]).mean())
