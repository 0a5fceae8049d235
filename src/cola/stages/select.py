"""Stage 3: activation-space sample selection (COLA, arXiv 2510.10618 Sec. 4.2).

Candidates are embedded by the uncompressed model (pooled, normalised, projected layer activations),
clustered with k-means (k = number of samples), and the candidate nearest each centroid is kept: the
selection covers the pool's activation space (representative) without piling up in one region (diverse).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cola.activations import extract_projected_features
from cola.cluster import mean_pairwise_distance, nearest_selected_distance, select_medoids
from cola.config import SelectionConfig
from cola.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """The chosen candidates (sorted pool indices) and everything measured on the way."""

    indices: np.ndarray                 # (k,) pool indices, ascending
    features: np.ndarray                # (N, P) projected activation features of the whole pool
    labels: np.ndarray                  # (N,) k-means cluster of each candidate
    nearest_distance: np.ndarray        # (N,) distance of each candidate to its nearest selected one
    diagnostics: dict[str, Any]         # deterministic for a given seed
    timings: dict[str, float]           # wall-clock figures, kept apart so diagnostics stay reproducible
    method: str = "activation_kmeans_medoid"


def _summary(values: np.ndarray) -> dict[str, float]:
    return {"mean": round(float(values.mean()), 6), "median": round(float(np.median(values)), 6),
            "max": round(float(values.max()), 6)}


def select_by_activations(model: torch.nn.Module, token_ids: Sequence[Sequence[int]], sources: Sequence[str],
                          num_samples: int, config: SelectionConfig, *, pad_token_id: int = 0,
                          quiet: bool = False) -> Selection:
    """Pick `num_samples` distinct candidates: k-means medoids in the model's projected activation space."""
    features, stats = extract_projected_features(
        model, token_ids, layers=config.layers, projection_dim=config.projection_dim, seed=config.seed,
        batch_size=config.batch_size, batch_tokens=config.batch_tokens, pad_token_id=pad_token_id, quiet=quiet)
    start = time.perf_counter()
    with progress_bar(total=config.kmeans_init, quiet=quiet, desc=f"k-means (k={num_samples})",
                      unit="restart") as bar:
        medoids = select_medoids(features, num_samples, seed=config.seed, n_init=config.kmeans_init,
                                 on_restart=lambda: bar.update(1))
    cluster_seconds = time.perf_counter() - start
    order = np.argsort(medoids.indices, kind="stable")
    indices = medoids.indices[order]
    nearest = nearest_selected_distance(features, indices)
    # Reference point: the same measures for a seeded random pick of the same size.
    random_pick = np.sort(np.random.default_rng(config.seed).choice(len(features), num_samples, replace=False))
    diagnostics = {
        "extraction": {k: v for k, v in stats.as_dict().items()
                       if k not in ("seconds", "useful_tokens_per_second")},
        "cluster_sizes": [int(n) for n in np.bincount(medoids.labels, minlength=num_samples)[order]],
        "empty_clusters": int((np.bincount(medoids.labels, minlength=num_samples) == 0).sum()),
        "representativeness": {"distance_to_nearest_selected": _summary(nearest),
                               "random_selection_same_size": _summary(
                                   nearest_selected_distance(features, random_pick))},
        "diversity": {"mean_pairwise_distance_selected": round(mean_pairwise_distance(features, indices), 6),
                      "random_selection_same_size": round(mean_pairwise_distance(features, random_pick), 6)},
        "candidates_per_source": dict(Counter(sources)),
        "selected_per_source": dict(Counter(sources[i] for i in indices)),
    }
    log.info("stage 3: %d of %d candidates selected; mean distance to nearest selected %.4f (random %.4f)",
             num_samples, len(features), nearest.mean(),
             diagnostics["representativeness"]["random_selection_same_size"]["mean"])
    return Selection(indices=indices, features=features, labels=medoids.labels, nearest_distance=nearest,
                     diagnostics=diagnostics,
                     timings={"stage3_extract": stats.seconds, "stage3_cluster": cluster_seconds,
                              "stage3_useful_tokens_per_second": stats.tokens_per_second})


def select_at_random(pool_size: int, sources: Sequence[str], num_samples: int, *, seed: int) -> Selection:
    """The no-Stage-3 ablation: a seeded uniform pick from the processed pool, no model forward at all."""
    indices = np.sort(np.random.default_rng(seed).choice(pool_size, num_samples, replace=False))
    diagnostics = {"candidates_per_source": dict(Counter(sources)),
                   "selected_per_source": dict(Counter(sources[i] for i in indices))}
    return Selection(indices=indices, features=np.zeros((pool_size, 0), dtype=np.float32),
                     labels=np.full(pool_size, -1, dtype=np.int64),
                     nearest_distance=np.full(pool_size, np.nan), diagnostics=diagnostics, timings={},
                     method="random")
