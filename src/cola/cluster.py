"""Random projection, k-means and medoid picking: pure functions on arrays (COLA Stage 3, arXiv 2510.10618 Sec. 4.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
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


@dataclass(frozen=True)
class Medoids:
    """The result of clustering: picked candidate per cluster, every candidate's cluster, the centroids."""

    indices: np.ndarray    # (k,) candidate index picked for each cluster, all distinct
    labels: np.ndarray     # (N,) cluster of each candidate
    centroids: np.ndarray  # (k, D)


def select_medoids(features: np.ndarray, k: int, seed: int, n_init: int = 3,
                   on_restart: Callable[[], None] | None = None) -> Medoids:
    """k-means with k clusters, then one distinct candidate per centroid, as close to it as possible.

    k-means runs `n_init` times from k-means++ seeds `seed, seed+1, …` and keeps the lowest inertia
    (`on_restart` is called after each run, for progress). The candidate-to-centroid matching is an optimal
    assignment (Hungarian), so exactly k different candidates come back even when centroids coincide
    (duplicate candidates) or a cluster is empty.
    """
    from sklearn.cluster import KMeans

    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of candidates ({n}), got {k}")
    x = np.asarray(features, dtype=np.float64)  # (N, D)
    best = None
    for restart in range(n_init):
        with warnings.catch_warnings():  # fewer distinct points than k: handled by the assignment below
            warnings.filterwarnings("ignore", message="Number of distinct clusters")
            km = KMeans(n_clusters=k, n_init=1, random_state=seed + restart).fit(x)
        if best is None or km.inertia_ < best.inertia_:
            best = km
        if on_restart is not None:
            on_restart()
    distances = cdist(best.cluster_centers_, x)  # (k, N)
    rows, cols = linear_sum_assignment(distances)
    picks = np.empty(k, dtype=np.int64)
    picks[rows] = cols
    return Medoids(indices=picks, labels=best.labels_.astype(np.int64), centroids=best.cluster_centers_)


def nearest_selected_distance(features: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """(N,) distance of every candidate to its nearest selected candidate (representativeness; lower is better)."""
    return cdist(np.asarray(features, np.float64), np.asarray(features, np.float64)[selected]).min(axis=1)


def mean_pairwise_distance(features: np.ndarray, selected: np.ndarray) -> float:
    """Mean Euclidean distance between the selected candidates (diversity; higher is more spread out)."""
    if len(selected) < 2:
        return 0.0
    return float(pdist(np.asarray(features, np.float64)[selected]).mean())
