"""Peer calibration-data strategies, as baselines beside COLA's activation-space Stage 3.

Three published alternatives, each a pure function of the pool (or, for self-generation, of the model):
- text clusters (COLA-Zero style): k-means on TF-IDF features of the texts, the sample nearest each centroid;
- lexical diversity (ZipCal style): greedy maximisation of the distinct token types covered;
- self-generated data (Ji et al., "Beware of Calibration Data for Pruning Large Language Models",
  ICLR 2025): the model writes its own calibration text from short prompts, and the highest-perplexity
  share of what it wrote is dropped.
Each returns exactly k samples and is deterministic for a seed.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cola.errors import ColaError
from cola.models import single_threaded
from cola.progress import progress_bar

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TFIDF_SVD_DIMS = 128  # LSA dimensions for k-means on TF-IDF (sklearn's text-clustering example uses 100)


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise ColaError(f"cannot select {k} samples from a pool of {n}: k must be between 1 and the pool size")


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

    _check_k(k, len(texts))
    return np.sort(select_medoids(tfidf_features(texts, seed=seed), k, seed=seed).indices)


def select_lexical_diversity(token_ids: Sequence[Sequence[int]], k: int, seed: int) -> np.ndarray:
    """(k,) sorted pool indices: greedily the candidate adding the most token types not yet covered (ZipCal style).

    Coverage of a set of types is monotone submodular, so a candidate's gain only shrinks as the selection
    grows: a lazy greedy keeps stale gains in a heap as upper bounds and re-scores only the top. Ties go to
    a seeded random order of the candidates. Once every type is covered, the rest follow that order.
    """
    _check_k(k, len(token_ids))
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


def _summary(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    return {"min": round(float(values.min()), 4), "mean": round(float(values.mean()), 4),
            "median": round(float(np.median(values)), 4), "max": round(float(values.max()), 4)}


def prompt_ids(tokenizer: Any, prompts: Sequence[str] | Sequence[Sequence[int]],
               prompt_tokens: int) -> tuple[list[list[int]], list[int]]:
    """The first `prompt_tokens` token ids of each prompt long enough to have them (equal lengths: no padding),
    and the index of each such prompt. Prompts are texts (tokenized as the model reads them, with exactly one
    BOS where it has one: `cola.tokenization.encode`) or token ids already (Stage 2's samples, which have it)."""
    from cola.tokenization import encode, model_bos_id

    texts = bool(prompts) and isinstance(prompts[0], str)
    encoded = encode(tokenizer, prompts, bos_id=model_bos_id(tokenizer)) if texts else prompts
    usable = [i for i, ids in enumerate(encoded) if len(ids) >= prompt_tokens]
    return [[int(t) for t in encoded[i][:prompt_tokens]] for i in usable], usable


def generate_self_calibration(model: torch.nn.Module, tokenizer: Any,
                              prompts: Sequence[str] | Sequence[Sequence[int]], k: int, sequence_length: int, *,
                              seed: int, prompt_tokens: int = 8,
                              drop_fraction: float = 0.2, temperature: float = 0.6, top_p: float = 0.95,
                              top_k: int = 50, repetition_penalty: float = 1.2, batch_size: int = 32,
                              quiet: bool = False) -> tuple[list[list[int]], dict[str, Any]]:
    """k self-generated sequences of exactly `sequence_length` tokens, and a report (Ji et al., ICLR 2025).

    The model continues the first `prompt_tokens` tokens of each prompt (texts or token ids; used in order,
    cycled if there are too few) with top-k / nucleus sampling and a repetition penalty; EOS is suppressed
    until the length is reached, and equal-length prompts need no padding. n = ceil(k / (1 - drop_fraction))
    sequences are generated, each is scored by its perplexity under the same model, and the n - k highest
    are dropped (generated text that even its author finds unlikely is degenerate). The kept sequences come
    back in generation order. Sampling runs under a forked RNG seeded with `seed`, so the result depends only
    on the seed and batch_size, and the caller's RNG state is untouched. The report's wall-clock figures are
    under "seconds".
    """
    import torch

    from cola.models import context_length
    from cola.stages.filters import sequence_perplexities

    if not 0 <= drop_fraction < 1:
        raise ColaError(f"drop_fraction must be in [0, 1), got {drop_fraction!r}")
    if not 1 <= prompt_tokens < sequence_length:
        raise ColaError(f"prompt_tokens must be between 1 and sequence_length - 1, got {prompt_tokens}")
    limit = context_length(model)
    if limit is not None and sequence_length > limit:
        raise ColaError(f"sequence_length {sequence_length} is beyond the model's context of {limit} tokens")
    if k < 1:
        raise ColaError(f"k must be at least 1, got {k}")
    usable, usable_index = prompt_ids(tokenizer, prompts, prompt_tokens)
    if not usable:
        raise ColaError(f"no prompt has {prompt_tokens} tokens: give longer prompts or lower prompt_tokens")
    n = math.ceil(round(k / (1 - drop_fraction), 9))
    starts = torch.tensor([usable[i % len(usable)] for i in range(n)], dtype=torch.long)  # (n, P)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    new_tokens = sequence_length - prompt_tokens
    start = time.perf_counter()
    chunks: list[torch.Tensor] = []
    with (torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode(),
          single_threaded(), progress_bar(total=n, quiet=quiet, desc="self-generating", unit="seq") as bar):
        torch.manual_seed(seed)
        for begin in range(0, n, batch_size):
            batch = starts[begin : begin + batch_size].to(device)  # (B, P)
            out = model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), do_sample=True,
                                 temperature=temperature, top_p=top_p, top_k=top_k,
                                 repetition_penalty=repetition_penalty, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, pad_token_id=pad)  # (B, L)
            chunks.append(out.cpu())
            bar.update(len(batch))
    sequences = torch.cat(chunks)  # (n, L)
    if sequences.shape[1] != sequence_length:  # generation stopped early despite min_new_tokens
        raise ColaError(f"generation returned {sequences.shape[1]} tokens instead of {sequence_length}")
    generate_seconds = time.perf_counter() - start
    ids = sequences.tolist()
    start = time.perf_counter()
    perplexity = sequence_perplexities(model, ids, batch_size=batch_size, pad_token_id=pad or 0, quiet=quiet)
    order = np.lexsort((np.arange(n), perplexity))  # lowest perplexity first; ties: generation order
    kept = np.sort(order[:k])
    dropped = np.sort(order[k:])
    report = {"generated": n, "kept": k, "dropped": n - k, "drop_fraction": drop_fraction,
              "prompt_tokens": prompt_tokens, "distinct_prompts": min(len(usable), n),
              "prompt_index": [usable_index[i % len(usable)] for i in range(n)], "batch_size": batch_size,
              "sampling": {"temperature": temperature, "top_p": top_p, "top_k": top_k,
                           "repetition_penalty": repetition_penalty},
              "perplexity_kept": _summary(perplexity[kept]), "perplexity_dropped": _summary(perplexity[dropped]),
              "kept_indices": kept.tolist(), "perplexities": perplexity.round(4).tolist(),
              "seconds": {"generate": round(generate_seconds, 3),
                          "score": round(time.perf_counter() - start, 3)}}
    log.info("self-generated %d sequences of %d tokens, kept %d (perplexity %.2f kept vs %.2f dropped)", n,
             sequence_length, k, perplexity[kept].mean(), perplexity[dropped].mean() if n > k else math.nan)
    return [ids[i] for i in kept], report
