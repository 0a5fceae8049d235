"""Peer calibration-data strategies, as baselines beside COLA's activation-space Stage 3.

Two published alternatives, each a pure function of the pool:
- text clusters (COLA-Zero style): k-means on TF-IDF features of the texts, the sample nearest each centroid;
- lexical diversity (ZipCal style): greedy maximisation of the distinct token types covered.
Each returns exactly k samples and is deterministic for a seed. The third peer, self-generated data, writes
text instead of choosing it and lives with the experiment (`cola.experiment.self_generated`).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Sequence

import numpy as np

from cola.errors import ColaError, check_pick

log = logging.getLogger(__name__)

TFIDF_SVD_DIMS = 128  # LSA dimensions for k-means on TF-IDF (sklearn's text-clustering example uses 100)


def tfidf_features(texts: Sequence[str], *, seed: int, dims: int = TFIDF_SVD_DIMS) -> np.ndarray:
    """(N, D) L2-normalised LSA features: sublinear TF-IDF reduced by a seeded truncated SVD.

    Stop words are kept on purpose: calibration pools mix prose with code and math, where `if`, `for`,
    `not`, `return` or `each` carry the content, and IDF already discounts words common to every text.
    sublinear_tf (1 + log tf) keeps a word repeated by packing or boilerplate from dominating a text.
    The SVD is there because k-means (and the medoid matching) need dense rows, and N x vocabulary dense
    would not fit for real pools; normalising after it makes Euclidean k-means behave like cosine.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    try:
        tfidf = TfidfVectorizer(sublinear_tf=True, dtype=np.float32).fit_transform(texts)  # (N, V) sparse
    except ValueError as exc:  # only raised for an empty vocabulary
        raise ColaError("text_clusters found no words in the pool's texts (empty vocabulary)") from exc
    dims = min(dims, tfidf.shape[1] - 1, tfidf.shape[0] - 1)
    if dims < 2:  # too few texts or words for an SVD: cluster the TF-IDF rows themselves
        return tfidf.toarray()
    reduced = TruncatedSVD(n_components=dims, random_state=seed).fit_transform(tfidf)  # (N, D)
    return normalize(reduced)


def select_text_clusters(texts: Sequence[str], k: int, seed: int) -> np.ndarray:
    """(k,) sorted pool indices: k-means (k clusters) on TF-IDF features, the text nearest each centroid.

    COLA-Zero style selection without running the model. Uses `cluster.select_medoids`, whose optimal
    assignment returns k distinct texts even when clusters are empty or centroids coincide.
    """
    from cola.cluster import select_medoids

    check_pick(k, len(texts))
    return np.sort(select_medoids(tfidf_features(texts, seed=seed), k, seed=seed).indices)


def select_lexical_diversity(token_ids: Sequence[Sequence[int]], k: int, seed: int) -> np.ndarray:
    """(k,) sorted pool indices: greedily the candidate adding the most token types not yet covered (ZipCal style).

    Coverage of a set of types is monotone submodular, so a candidate's gain only shrinks as the selection
    grows: a lazy greedy keeps stale gains in a heap as upper bounds and re-scores only the top. Ties go to
    a seeded random order of the candidates. Once every type is covered, the rest follow that order.
    """
    check_pick(k, len(token_ids))
    types = [frozenset(np.unique(np.asarray(ids)).tolist()) for ids in token_ids]
    rank = np.random.default_rng(seed).permutation(len(types))  # tie-break order
    heap = [(-len(t), int(rank[i]), i) for i, t in enumerate(types)]  # (-gain upper bound, rank, index)
    heapq.heapify(heap)
    covered: set[int] = set()
    picks: list[int] = []
    while len(picks) < k:
        _, order, index = heapq.heappop(heap)
        key = (-len(types[index] - covered), order, index)
        if heap and key > heap[0]:  # a stale bound: someone else may now gain more
            heapq.heappush(heap, key)
            continue
        picks.append(index)
        covered |= types[index]
    return np.sort(np.asarray(picks, dtype=np.int64))


# Stage-3 methods that pick from the processed pool without activations: name -> (texts, token_ids, k, seed) -> indices
POOL_SELECTORS: dict[str, Callable[[Sequence[str], Sequence[Sequence[int]], int, int], np.ndarray]] = {
    "text_clusters": lambda texts, ids, k, seed: select_text_clusters(texts, k, seed),
    "lexical_diversity": lambda texts, ids, k, seed: select_lexical_diversity(ids, k, seed),
}
SELECTION_METHOD_NAMES = {"text_clusters": "tfidf_kmeans_medoid", "lexical_diversity": "greedy_token_coverage"}
