"""Stage 3: sample selection in the uncompressed model's activation space (COLA, arXiv 2510.10618 Sec. 4.2).

`activations` (COLA's): candidates are embedded by the model (pooled, normalised, projected layer activations),
clustered with k-means (k = number of samples), and the candidate nearest each centroid is kept: the
selection covers the pool's activation space (representative) without piling up in one region (diverse).
`moments` (cola's compression-aware method, `cola.moments`): the candidates whose summed second moments of every
linear layer's input best match the pool's, the statistics GPTQ, SparseGPT and Wanda actually read.
`outlier_coverage`: the candidates that together reach the largest share of the pool's per-channel max|x| of
those inputs, the activation ranges SmoothQuant and AWQ-style scales read.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cola.activations import Extraction, ExtractionStats, extract_features
from cola.cluster import mean_pairwise_distance, nearest_selected_distance, select_medoids
from cola.config import SelectionConfig
from cola.moments import (MomentSketches, cover_maxima, match_moments, range_coverage, relative_errors,
                          summarise_errors, token_weighted_mean)
from cola.errors import unknown_choice
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


def embed_pool(model: torch.nn.Module, token_ids: Sequence[Sequence[int]], config: SelectionConfig, *,
               pad_token_id: int = 0, sketches: bool = False, maxima: bool = False, quiet: bool = False,
               progress: Any = None) -> Extraction:
    """(N, P) projected activation features of the pool: what Stage 1 scores and Stage 3 clusters; with
    `sketches`, the moment sketches `moments` selection matches, and with `maxima` also the per-channel
    maxima `outlier_coverage` covers, from the same forward pass."""
    return extract_features(
        model, token_ids, layers=config.layers, projection_dim=config.projection_dim, seed=config.seed,
        batch_size=config.batch_size, batch_tokens=config.batch_tokens, pad_token_id=pad_token_id,
        pooling=config.pooling, sketch_dim=config.sketch_dim if sketches or maxima else None,
        channel_maxima=maxima, compile=config.compile, quiet=quiet, progress=progress)


def _medoids_within_quotas(features: np.ndarray, sources: Sequence[str], num_samples: int,
                           quotas: Mapping[str, int] | None, config: SelectionConfig,
                           quiet: bool) -> tuple[np.ndarray, np.ndarray]:
    """k-means medoids (k = the count) over the pool or inside each source with its quota; (sorted picks,
    cluster labels). Cluster labels are numbered across sources (quota order), -1 for sources with no quota.
    """
    labels = np.full(len(features), -1, dtype=np.int64)
    offset = 0
    groups = len(quota_groups(sources, num_samples, quotas))
    with progress_bar(total=config.kmeans_init * groups, quiet=quiet, desc=f"k-means (k={num_samples})",
                      unit="restart") as bar:
        def medoids(rows: np.ndarray, count: int) -> np.ndarray:
            nonlocal offset
            found = select_medoids(features[rows], count, seed=config.seed, n_init=config.kmeans_init,
                                   on_restart=lambda: bar.update(1))
            labels[rows] = found.labels + offset
            offset += count
            return found.indices

        picks = pick_within_quotas(medoids, sources, num_samples, quotas)
    return picks, labels


def select_from_features(features: np.ndarray, sources: Sequence[str], num_samples: int, config: SelectionConfig,
                         *, quotas: Mapping[str, int] | None = None, quiet: bool = False) -> Selection:
    """Pick `num_samples` distinct candidates: k-means medoids in activation space, over the whole pool or,
    given Stage 1's `quotas` (source -> count), within each source."""
    start = time.perf_counter()
    indices, labels = _medoids_within_quotas(features, sources, num_samples, quotas, config, quiet)
    cluster_seconds = time.perf_counter() - start
    nearest = nearest_selected_distance(features, indices)
    # Reference point: the same measures for a seeded random pick of the same size.
    random_pick = np.sort(np.random.default_rng(config.seed).choice(len(features), num_samples, replace=False))
    sizes = np.bincount(labels[labels >= 0], minlength=num_samples)
    diagnostics = {
        "cluster_sizes": [int(sizes[labels[i]]) for i in indices],
        "empty_clusters": int((sizes == 0).sum()),
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
    return Selection(indices=indices, features=features, labels=labels, nearest_distance=nearest,
                     diagnostics=diagnostics, timings={"stage3_cluster": cluster_seconds})


def select_by_activations(model: torch.nn.Module, token_ids: Sequence[Sequence[int]], sources: Sequence[str],
                          num_samples: int, config: SelectionConfig, *, pad_token_id: int = 0,
                          quiet: bool = False) -> Selection:
    """Embed the pool and pick `num_samples` k-means medoids over all of it (Stage 3 without quotas)."""
    found = embed_pool(model, token_ids, config, pad_token_id=pad_token_id, quiet=quiet)
    selection = select_from_features(found.features, sources, num_samples, config, quiet=quiet)
    return with_extraction(selection, found.stats)


def quota_target(sketches: MomentSketches, sources: Sequence[str], num_samples: int,
                 quotas: Mapping[str, int] | None = None) -> np.ndarray:
    """(D,) the sketch a selection within `quotas` should reproduce: each quota group's token-weighted mean
    weighted by its share of the samples (the pool's mean when there are no quotas)."""
    groups = quota_groups(sources, num_samples, quotas)
    return sum(count / num_samples * token_weighted_mean(sketches.values[rows], sketches.tokens[rows])
               for rows, count in groups)


def _coverage_summary(values: list[float]) -> dict[str, float]:
    return {"mean": round(float(np.mean(values)), 6), "min": round(float(np.min(values)), 6)}


def select_by_moments(sketches: MomentSketches, features: np.ndarray, sources: Sequence[str], num_samples: int,
                      config: SelectionConfig, *, quotas: Mapping[str, int] | None = None) -> Selection:
    """Pick `num_samples` distinct candidates by their linear-layer input statistics, within each of Stage 1's
    quotas if any (each group against its own target): `config.method` "moments" matches the pool's
    token-weighted second-moment sketches (`cola.moments.match_moments`), "outlier_coverage" covers the pool's
    per-channel maxima (`cola.moments.cover_maxima`; the sketches must hold maxima).

    features: (N, P) the projected activation features, kept for the pool table and the distance diagnostics.
    The diagnostics give the sketch's relative error per site (mean and max over sites) of this pick and of a
    seeded random pick within the same quotas, against the quotas' target (`quota_target`), and with maxima the
    range coverage (`cola.moments.range_coverage`, mean and min over sites) of both.
    Raises ColaError for outlier_coverage on sketches without maxima.
    """
    coverage = config.method == "outlier_coverage"
    pick = cover_maxima if coverage else match_moments
    start = time.perf_counter()
    indices = pick_within_quotas(lambda rows, count: pick(sketches.subset(rows), count), sources, num_samples,
                                 quotas)
    seconds = time.perf_counter() - start
    random_pick = select_at_random(len(features), sources, num_samples, seed=config.seed, quotas=quotas).indices
    target = quota_target(sketches, sources, num_samples, quotas)
    errors = relative_errors(sketches, indices, target)
    nearest = nearest_selected_distance(features, indices)
    diagnostics: dict[str, Any] = {
        "moment_match": {"sites": len(sketches.sites), "sketch_dim": sketches.sketch_dim,
                         "relative_error": summarise_errors(errors),
                         "random_selection_same_size": summarise_errors(relative_errors(sketches, random_pick,
                                                                                        target))}}
    if sketches.maxima is not None:
        diagnostics["range_coverage"] = {"selected": _coverage_summary(range_coverage(sketches, indices)),
                                         "random_selection_same_size": _coverage_summary(
                                             range_coverage(sketches, random_pick))}
    diagnostics |= {
        "representativeness": {"distance_to_nearest_selected": _summary(nearest),
                               "random_selection_same_size": _summary(
                                   nearest_selected_distance(features, random_pick))},
        "candidates_per_source": dict(Counter(sources)),
        "selected_per_source": dict(Counter(sources[i] for i in indices)),
    }
    log.info("stage 3 (%s): %d of %d candidates selected; mean relative covariance error %.4f (random %.4f)",
             config.method, num_samples, len(features),
             diagnostics["moment_match"]["relative_error"]["covariance_mean"],
             diagnostics["moment_match"]["random_selection_same_size"]["covariance_mean"])
    if coverage:  # what this method optimises, beside the covariance error it does not
        log.info("stage 3 (%s): mean range coverage %.4f (random %.4f)", config.method,
                 diagnostics["range_coverage"]["selected"]["mean"],
                 diagnostics["range_coverage"]["random_selection_same_size"]["mean"])
    return Selection(indices=indices, features=features, labels=np.full(len(features), -1, dtype=np.int64),
                     nearest_distance=nearest, diagnostics=diagnostics, timings={"stage3_select": seconds},
                     method="channel_maxima_coverage" if coverage else "moment_matching")


def with_extraction(selection: Selection, stats: ExtractionStats) -> Selection:
    """The selection with the extraction's token counts (diagnostics) and wall time (timings) added."""
    tokens = {k: v for k, v in stats.as_dict().items() if k not in ("seconds", "useful_tokens_per_second")}
    return dataclasses.replace(
        selection, diagnostics={"extraction": tokens, **selection.diagnostics},
        timings={"stage3_extract": stats.seconds, "stage3_useful_tokens_per_second": stats.tokens_per_second,
                 **selection.timings})


def quota_groups(sources: Sequence[str], num_samples: int,
                 quotas: Mapping[str, int] | None = None) -> list[tuple[np.ndarray, int]]:
    """(pool rows, count) to pick from: the whole pool, or, given Stage 1's quotas (source -> count), each
    source with a positive quota, in the quotas' order."""
    names = np.asarray(sources)
    if not quotas:
        return [(np.arange(len(names)), num_samples)]
    return [(np.flatnonzero(names == name), quota) for name, quota in quotas.items() if quota > 0]


def pick_within_quotas(pick: Callable[[np.ndarray, int], np.ndarray], sources: Sequence[str], num_samples: int,
                       quotas: Mapping[str, int] | None = None) -> np.ndarray:
    """(k,) sorted pool indices: `pick(rows, count)` (positions into rows) in each of `quota_groups`."""
    groups = quota_groups(sources, num_samples, quotas)
    return np.sort(np.concatenate([rows[pick(rows, count)] for rows, count in groups]))


def _unselected(pool_size: int, sources: Sequence[str], indices: np.ndarray, diagnostics: dict[str, Any],
                method: str) -> Selection:
    """A Selection made without activation features: no features, clusters or distances."""
    diagnostics = {"candidates_per_source": dict(Counter(sources)),
                   "selected_per_source": dict(Counter(sources[i] for i in indices)), **diagnostics}
    return Selection(indices=indices, features=np.zeros((pool_size, 0), dtype=np.float32),
                     labels=np.full(pool_size, -1, dtype=np.int64), nearest_distance=np.full(pool_size, np.nan),
                     diagnostics=diagnostics, timings={}, method=method)


def with_pool_features(selection: Selection, features: np.ndarray) -> Selection:
    """A selection made without the model (random, text peers), given the (N, P) pool features Stage 1
    computed anyway, and each candidate's distance to its nearest pick in them (for the pool table and plots)."""
    return dataclasses.replace(selection, features=features,
                               nearest_distance=nearest_selected_distance(features, selection.indices))


def select_at_random(pool_size: int, sources: Sequence[str], num_samples: int, *, seed: int,
                     quotas: Mapping[str, int] | None = None) -> Selection:
    """The no-Stage-3 ablation: a seeded uniform pick from the processed pool (within Stage 1's quotas if any)."""
    rng = np.random.default_rng(seed)
    indices = pick_within_quotas(lambda rows, count: rng.choice(len(rows), count, replace=False), sources,
                                 num_samples, quotas)
    return _unselected(pool_size, sources, indices, {}, "random")


def distinct_tokens(token_ids: Sequence[Sequence[int]], indices: np.ndarray) -> int:
    """How many token types the selected sequences hold between them (lexical coverage)."""
    return len(np.unique(np.concatenate([np.asarray(token_ids[i]) for i in indices])))


def select_from_pool(method: str, texts: Sequence[str], token_ids: Sequence[Sequence[int]], sources: Sequence[str],
                     num_samples: int, *, seed: int, quotas: Mapping[str, int] | None = None) -> Selection:
    """A peer Stage 3 (`peers.POOL_SELECTORS`: text clusters, lexical diversity) on the processed pool,
    within Stage 1's quotas if any; no model runs."""
    from cola.stages.peers import POOL_SELECTORS, SELECTION_METHOD_NAMES

    if method not in POOL_SELECTORS:
        raise unknown_choice("pool selection method", method, POOL_SELECTORS)
    selector = POOL_SELECTORS[method]
    start = time.perf_counter()
    indices = pick_within_quotas(lambda rows, count: selector([texts[i] for i in rows],
                                                              [token_ids[i] for i in rows], count, seed),
                                 sources, num_samples, quotas)
    seconds = time.perf_counter() - start
    random_pick = np.random.default_rng(seed).choice(len(token_ids), len(indices), replace=False)
    coverage = {"distinct_tokens": {"selected": distinct_tokens(token_ids, indices),
                                    "random_selection_same_size": distinct_tokens(token_ids, random_pick)}}
    log.info("stage 3 (%s): %d of %d candidates selected", method, len(indices), len(token_ids))
    selection = _unselected(len(token_ids), sources, indices, coverage, SELECTION_METHOD_NAMES[method])
    return dataclasses.replace(selection, timings={"stage3_select": seconds})
