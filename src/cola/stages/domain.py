"""Stage 1: dataset selection by domain correspondence (COLA, arXiv 2510.10618 Sec. 4.1).

Each candidate dataset is compared with a small reference set per target capability on three signals —
semantic (activation centroids), token (unigram distributions) and activation-space coverage — and the
weighted score decides how many of the calibration samples each dataset contributes. Pure functions on
arrays: features come from `cola.activations.extract_features`, token ids from the tokenizer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import rel_entr

from cola.cluster import select_medoids
from cola.config import DomainConfig
from cola.errors import ColaError, unknown_choice

# Capability weight of the non-targeted capabilities, per deployment type (the seed CLI's 1.0 / 0.2).
DEPLOYMENT_OTHER_WEIGHT = {"general": 1.0, "targeted": 0.2}
TARGETED_SHARPNESS = 4.0     # targeted: within a capability, datasets share by score**4
COVERAGE_PERCENTILE = 90.0   # a reference cluster's radius: this percentile of its members' distances
_UNIGRAM_CHUNK = 4096        # sequences counted at a time
_REACH_CHUNK = 8192          # pool rows per distance block (cdist takes them in float64): flat memory
UNIGRAM_EPSILON = 0.01       # add-epsilon pseudo-count per vocabulary entry


@dataclass(frozen=True)
class DatasetStats:
    """What Stage 1 needs of one dataset (or reference set)."""

    features: np.ndarray   # (N, P) projected activation features, one row per text
    unigram: np.ndarray    # (V,) token probabilities (`unigram_distribution`)
    embeddings: np.ndarray | None = None  # (N, E) sentence embeddings; when given, semantic similarity uses them


def unigram_distribution(token_ids: Sequence[Sequence[int]], vocab_size: int,
                         epsilon: float = UNIGRAM_EPSILON) -> np.ndarray:
    """(V,) token frequencies with `epsilon` added to every count, so every probability is positive."""
    if vocab_size < 1:
        raise ColaError(f"vocab_size must be at least 1, got {vocab_size}")
    counts = np.zeros(vocab_size, dtype=np.float64)  # (V,) summed a chunk of sequences at a time: no (tokens,) copy
    for start in range(0, len(token_ids), _UNIGRAM_CHUNK):
        flat = np.concatenate([np.asarray(ids).ravel() for ids in token_ids[start:start + _UNIGRAM_CHUNK]]
                              or [np.zeros(0, np.int64)]).astype(np.int64, copy=False)
        if flat.size and (flat.min() < 0 or flat.max() >= vocab_size):
            raise ColaError(f"token id out of range [0, {vocab_size}): min {flat.min()}, max {flat.max()}")
        counts += np.bincount(flat, minlength=vocab_size)
    counts += epsilon
    return counts / counts.sum()


def token_similarity(p: np.ndarray, q: np.ndarray) -> float:
    """exp(-(KL(p||q) + KL(q||p)) / 2) in [0, 1]; 1 for identical distributions.

    The symmetric KL (nats) is unbounded; exp(-x) maps it to (0, 1] without a tuning constant and stays
    monotone, so the ranking of datasets is the KL ranking. Smoothed unigrams keep it finite.
    """
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)  # (V,), (V,)
    if p.shape != q.shape or p.ndim != 1:
        raise ColaError(f"unigram distributions must be 1-D of one vocabulary size, got {p.shape} and {q.shape}")
    sym_kl = (rel_entr(p, q).sum() + rel_entr(q, p).sum()) / 2
    return float(np.exp(-sym_kl))


def _features(*arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays, checked to be non-empty (N, P) feature arrays that share one width P (not copied: the means
    and distances taken of them are computed in float64)."""
    out = [np.asarray(a) for a in arrays]
    if any(a.ndim != 2 or not len(a) or a.shape[1] != out[0].shape[1] for a in out):
        raise ColaError(f"features must be non-empty (N, P) arrays of one width, got {[a.shape for a in out]}")
    return out


def semantic_similarity(dataset_features: np.ndarray, reference_features: np.ndarray) -> float:
    """(cos + 1) / 2 of the two centroids' cosine, in [0, 1]; 0.5 (undefined cosine) if a centroid is zero."""
    x, r = _features(dataset_features, reference_features)
    return _centroid_similarity(x.mean(axis=0, dtype=np.float64), r.mean(axis=0, dtype=np.float64))


def _centroid_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """`semantic_similarity` of two (P,) float64 centroids."""
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    cos = float(a @ b / norms) if norms > 0 else 0.0
    return float(np.clip((cos + 1) / 2, 0.0, 1.0))


def reference_balls(reference: np.ndarray, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means the reference set (k capped at its size); each non-empty cluster becomes a ball: (k', P) centroids
    and (k',) radii. The radius is the 90th percentile of its own members' distances to the centroid (robust to
    one outlier member); a cluster with no spread (a singleton) uses half the distance to the nearest other
    centroid instead."""
    medoids = select_medoids(reference, min(clusters, len(reference)), seed=seed)
    centroids, labels = medoids.centroids, medoids.labels  # (k, P), (N,)
    own = np.linalg.norm(reference - centroids[labels], axis=1)  # (N,) member-to-own-centroid distances
    present = np.unique(labels)  # an empty cluster (fewer distinct points than k) is not a target
    radii = np.array([np.percentile(own[labels == c], COVERAGE_PERCENTILE) for c in present])  # (k',)
    between = cdist(centroids, centroids)  # (k, k)
    np.fill_diagonal(between, np.inf)
    half_gap = between.min(axis=1)[present] / 2  # a cluster without spread: half the gap to its neighbour
    return centroids[present], np.where((radii == 0) & np.isfinite(half_gap), half_gap, radii)


def reference_reach(dataset: np.ndarray, centroids: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each reference cluster (`reference_balls`): the distance from its centroid to the dataset's closest
    sample, (k,), and whether that sample lies within the cluster's radius, (k,) bool: the absolute half of
    `coverage_table`'s coverage rule (a cluster is reached when some sample lies within its radius)."""
    nearest = np.full(len(centroids), np.inf)  # (k,) closest dataset sample to each centroid, a chunk of rows at a time
    for start in range(0, len(dataset), _REACH_CHUNK):
        nearest = np.minimum(nearest, cdist(dataset[start:start + _REACH_CHUNK], centroids).min(axis=0))
    return nearest, nearest <= radii + 1e-12


def coverage_table(datasets: Mapping[str, DatasetStats], references: Mapping[str, DatasetStats],
                   config: DomainConfig) -> dict[str, dict[str, dict[str, float]]]:
    """dataset -> capability -> {"semantic", "token", "coverage", "score"}; score = normalised weighted mean.

    Stage 1 asks which candidate dataset fits each capability best, so the signals are made comparable
    across the candidates (measured on SmolLM2: raw centroid cosines of mean-pooled activations all sat in
    0.98-0.99, raw exp(-KL) in 0.01-0.1, and absolute coverage was 0 for nearly every pair, so raw scores
    differed by < 0.05 and could not steer a mixture):
    - semantic: the centroid cosine after centring every feature on the pool's mean, which removes the
      component that all texts share;
    - token: exp(-(symKL_d - min over datasets of symKL)), i.e. token similarity relative to the best dataset;
    - coverage: the share of the reference set's clusters that the dataset reaches — lies within the
      cluster's radius, or has the sample closest to the centroid among all candidate datasets.
    """
    if not datasets or not references:
        raise ColaError("coverage_table needs at least one dataset and one reference set")
    w = np.array([config.semantic_weight, config.token_weight, config.coverage_weight])
    w = w / w.sum()
    names = list(datasets)
    feats = _features(*(datasets[n].features for n in names))
    embedded = all(datasets[n].embeddings is not None for n in names) and all(
        r.embeddings is not None for r in references.values())
    semantic = _features(*(datasets[n].embeddings for n in names)) if embedded else feats
    means = [x.mean(axis=0, dtype=np.float64) for x in semantic]  # (P,) each dataset's centroid
    center = sum(m * len(x) for m, x in zip(means, semantic)) / sum(len(x) for x in semantic)  # (P,) the pool's
    # common component; centring a centroid is centring its rows (mean(x - c) = mean(x) - c), with no (N, P) copy
    table: dict[str, dict[str, dict[str, float]]] = {n: {} for n in names}
    for cap, ref in references.items():
        r = _features(ref.features)[0].astype(np.float64)  # (M, P): the reference set is small; k-means in float64
        centroids, radii = reference_balls(r, config.reference_clusters, config.seed)
        reach = [reference_reach(x, centroids, radii) for x in feats]
        nearest = np.stack([n for n, _ in reach])  # (D, k) closest sample per centroid
        reached = np.stack([w for _, w in reach]) | (nearest <= nearest.min(axis=0) + 1e-12)  # (D, k)
        token = np.array([token_similarity(datasets[n].unigram, ref.unigram) for n in names])  # (D,)
        token_relative = token / token.max() if token.max() > 0 else np.ones_like(token)
        for d, name in enumerate(names):
            ref_semantic = _features(ref.embeddings)[0] if embedded else r
            ref_mean = ref_semantic.mean(axis=0, dtype=np.float64)
            signals = {"semantic": _centroid_similarity(means[d] - center, ref_mean - center),
                       "token": float(token_relative[d]), "coverage": float(reached[d].mean())}
            table[name][cap] = signals | {"score": float(w @ list(signals.values()))}
    return table


def capabilities_from_coverage(table: Mapping[str, Mapping[str, Mapping[str, float]]],
                               datasets: Sequence[str]) -> dict[str, str]:
    """Each of `datasets` (rows of a `coverage_table`) -> the capability it scores highest on (ties: the first
    capability of the row), i.e. the reference set its samples match best.

    This is how a source that carries no capability label gets one: from its content, not its name.
    """
    found = {}
    for name in datasets:
        if name not in table:
            raise unknown_choice("dataset (not in the coverage table)", name, table)
        row = table[name]
        if not row:
            raise ColaError(f"the coverage table scores dataset {name!r} on no capability")
        found[name] = max(row, key=lambda cap: row[cap]["score"])  # max keeps the first of equal scores
    return found


def capability_weights(targets: Sequence[str], deployment: str, targeted: str | None = None,
                       overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """general: every target 1.0; targeted: the targeted one 1.0, the others 0.2; `overrides` replace entries."""
    if deployment not in DEPLOYMENT_OTHER_WEIGHT:
        raise unknown_choice("deployment type", deployment, DEPLOYMENT_OTHER_WEIGHT)
    if not targets:
        raise ColaError("no target capabilities: name at least one")
    if deployment == "targeted" and not targeted:
        raise ColaError("a targeted deployment needs a targeted capability")
    if targeted and targeted not in targets:
        raise unknown_choice("targeted capability", targeted, targets)
    other = DEPLOYMENT_OTHER_WEIGHT[deployment]
    weights = {t: 1.0 if deployment == "general" or t == targeted else other for t in targets}
    return _checked_weights(weights | dict(overrides or {}), targets)


def _checked_weights(weights: Mapping[str, float], valid: Sequence[str]) -> dict[str, float]:
    """Known capabilities, finite weights >= 0, not all 0."""
    for cap, value in weights.items():
        if cap not in valid:
            raise unknown_choice("capability", cap, valid)
        if not math.isfinite(value) or value < 0:
            raise ColaError(f"capability weight for {cap!r} must be finite and >= 0, got {value}")
    if not any(weights.values()):
        raise ColaError(f"all capability weights are 0: {dict(weights)}")
    return {cap: float(value) for cap, value in weights.items()}


_ITEM = re.compile(r"^\s*([^=,\s]+)\s*=\s*([^=,]+?)\s*$")


def parse_capability_weights(spec: str, *, what: str = "capability",
                             example: str = "math=1,code=0.5") -> dict[str, float]:
    """'math=1,code=0.5' -> {'math': 1.0, 'code': 0.5}; bad syntax, duplicates or negatives -> ColaError, whose
    message calls the names `what` (also used for --signal_weights: what="signal") and shows `example`."""
    weights: dict[str, float] = {}
    for item in spec.split(","):
        match = _ITEM.match(item)
        try:
            value = float(match.group(2)) if match else math.nan
        except ValueError:
            value = math.nan
        if not match or not math.isfinite(value):
            raise ColaError(f"invalid {what} weight {item!r} in {spec!r}: use 'name=number,…', e.g. '{example}'")
        if value < 0:
            raise ColaError(f"{what} weight for {match.group(1)!r} must be >= 0, got {value}")
        if match.group(1) in weights:
            raise ColaError(f"{what} {match.group(1)!r} given twice in {spec!r}")
        weights[match.group(1)] = value
    return weights


def _largest_remainder(desire: np.ndarray, total: int, caps: np.ndarray) -> np.ndarray:
    """(D,) integers summing to `total`, proportional to `desire`, never above `caps` (water-filling)."""
    quota = np.zeros(len(caps), dtype=np.int64)
    active = caps > 0
    while total > 0:
        d = np.where(active, desire, 0.0)
        d = d if d.sum() > 0 else active.astype(np.float64)  # only zero-desire datasets left: share evenly
        ideal = total * d / d.sum()  # (D,)
        full = active & (ideal >= caps - 1e-9)
        if full.any():  # overflow: fill these to capacity, share the rest among the others by the same rule
            quota[full], total, active = caps[full], total - int(caps[full].sum()), active & ~full
            continue
        floors = np.floor(ideal).astype(np.int64)
        order = np.argsort(-(ideal - floors), kind="stable")  # ties: table order
        floors[order[: total - int(floors.sum())]] += 1
        return quota + floors
    return quota


def allocate_samples(table: Mapping[str, Mapping[str, Mapping[str, float]]], weights: Mapping[str, float],
                     num_samples: int, available: Mapping[str, int], deployment: str, *,
                     sharpness: float = TARGETED_SHARPNESS) -> dict[str, int]:
    """How many of `num_samples` each dataset contributes (Stage 3 then picks within each quota).

    Capability c gets the share weights[c] / sum(weights); within c, datasets share in proportion to
    score[d][c] (general) or score[d][c] ** sharpness (targeted, so domain-matched sources dominate); a
    dataset's desired share is its sum over capabilities. Integers come from the largest-remainder method,
    capped at `available[d]`: a capped dataset is filled and the overflow is shared among the others by the
    same rule. General deployments first reserve one sample per capability with weight > 0 (to its best
    available dataset) when num_samples >= that number, so every capability is represented.
    """
    if deployment not in DEPLOYMENT_OTHER_WEIGHT:
        raise unknown_choice("deployment type", deployment, DEPLOYMENT_OTHER_WEIGHT)
    if num_samples < 1:
        raise ColaError(f"num_samples must be at least 1, got {num_samples}")
    names = list(table)
    if missing := [d for d in names if d not in available]:
        raise ColaError(f"no available count for datasets {missing}")
    if unknown := [d for d in available if d not in table]:
        raise ColaError(f"available counts for datasets not in the table {unknown}: valid are {names}")
    caps = np.array([available[d] for d in names], dtype=np.int64)  # (D,)
    if (caps < 0).any():
        raise ColaError(f"available counts must be >= 0, got {dict(available)}")
    if caps.sum() < num_samples:
        raise ColaError(f"only {caps.sum()} samples available across {names}, {num_samples} requested "
                        f"(short by {num_samples - caps.sum()})")
    scored = [c for c in table[names[0]] if all(c in row for row in table.values())]
    live = [c for c, w in _checked_weights(weights, scored).items() if w > 0]
    share = np.array([weights[c] for c in live]) / sum(weights[c] for c in live)  # (C,)
    power = sharpness if deployment == "targeted" else 1.0
    s = np.array([[max(table[d][c]["score"], 0.0) for d in names] for c in live]) ** power  # (C, D)
    within = np.where(s.sum(1, keepdims=True) > 0, s, 1.0)  # a capability nobody scores on: share evenly
    desire = share @ (within / within.sum(1, keepdims=True))  # (D,)
    reserved = np.zeros(len(names), dtype=np.int64)
    if deployment == "general" and num_samples >= len(live):
        for row in s:  # one sample per capability, to its best-scoring dataset with room left
            reserved[int(np.argmax(np.where(caps - reserved > 0, row, -1.0)))] += 1
    quota = reserved + _largest_remainder(desire, num_samples - int(reserved.sum()), caps - reserved)
    return {d: int(q) for d, q in zip(names, quota)}
