"""Second-moment sketches of linear-layer inputs, and calibration sets chosen by matching them.

GPTQ, SparseGPT, CALDERA (LDLQ) and Wanda see calibration data only through each linear layer's input
statistics: the Hessian H = sum_t x_t x_t^T over calibration tokens (GPTQ, Frantar et al. 2023 Sec. 3; SparseGPT
Sec. 3), or its diagonal, the column norms ||X_j||^2 (Wanda, Sun et al. 2024 Eq. 1). A candidate i with n_i real
tokens X_i (n_i, d) adds H_i = X_i^T X_i; a set S gives the per-token Hessian H_S = sum_S H_i / sum_S n_i.
cola's `moments` selection picks the k candidates whose H_S best matches a target's (the pool's, by default):
the calibration set then hands the method the statistics it would have seen on the whole pool.

Exact H_i is d x d per site per candidate (too big), so each candidate keeps a sketch per *site* (one distinct
linear-layer input: q/k/v share one, gate/up another, o_proj and down_proj their own):
- C_i = G^T H_i G / n_i for one seeded Gaussian G (d, m): its upper triangle, off-diagonals times sqrt 2, so the
  Euclidean distance of two sketches is the Frobenius distance of the m x m matrices. For Gaussian G and
  symmetric A, E ||G^T A G||_F^2 = m(m+1) ||A||_F^2 + m (tr A)^2: matching C matches H in Frobenius norm and trace.
- the per-channel mean squares diag(H_i) / n_i (what Wanda and AWQ-style scales use), seeded-projected to 2m
  dimensions (Johnson-Lindenstrauss: distances kept within about 1/sqrt(2m)).
`MomentSketches.blocks` says which columns hold which site's part; `match_moments` is the selection (pure numpy).

SmoothQuant (Xiao et al. 2023, Eq. 4) and AWQ-style scales read activation *ranges*, the per-channel max|x|,
which second moments do not pin down: a set matching H can still miss the pool's outlier tokens. With
`maxima`, each candidate also keeps its per-channel max|x| of every site, and `cover_maxima` (the
`outlier_coverage` selection) picks the set reaching the largest share of the pool's per-channel maxima.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cola.errors import ColaError, check_pick

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Site:
    """One distinct linear-layer input: its decoder layer, the linear modules reading it, its width d."""

    layer: int
    modules: tuple[str, ...]   # module names inside the decoder layer, e.g. ("self_attn.q_proj", "self_attn.k_proj")
    width: int

    @property
    def name(self) -> str:
        return f"{self.layer}:{'+'.join(m.rsplit('.', 1)[-1] for m in self.modules)}"


def triangle_size(m: int) -> int:
    return m * (m + 1) // 2


@dataclass(frozen=True)
class MomentSketches:
    """Per-candidate sketches: `values` (N, D) float32 per-token means, `tokens` (N,) real tokens of each,
    and per site its columns: the covariance sketch C (m(m+1)/2 columns) then the projected diagonal (2m).
    `maxima` (N, sum of the sites' widths) float32, when extracted: each candidate's max|x| per channel, site
    after site (None otherwise)."""

    values: np.ndarray                 # (N, D)
    tokens: np.ndarray                 # (N,) int64
    sites: tuple[Site, ...]
    sketch_dim: int                    # m
    maxima: np.ndarray | None = None   # (N, C) with C = sum of site widths

    @property
    def site_width(self) -> int:
        return triangle_size(self.sketch_dim) + 2 * self.sketch_dim

    def blocks(self) -> list[slice]:
        """Column slices normalised separately when matching: per site, its covariance part and its diagonal part."""
        tri, step = triangle_size(self.sketch_dim), self.site_width
        out = []
        for s in range(len(self.sites)):
            out += [slice(s * step, s * step + tri), slice(s * step + tri, (s + 1) * step)]
        return out

    def subset(self, rows: np.ndarray) -> MomentSketches:
        return MomentSketches(values=self.values[rows], tokens=self.tokens[rows], sites=self.sites,
                              sketch_dim=self.sketch_dim, maxima=None if self.maxima is None else self.maxima[rows])

    def site_columns(self) -> list[slice]:
        """Per site, its columns in `maxima`."""
        ends = np.cumsum([0] + [site.width for site in self.sites])
        return [slice(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]


def triangle_weights(m: int) -> np.ndarray:
    """(m(m+1)/2,) weights of the upper triangle, row-major: 1 on the diagonal, sqrt 2 off it."""
    rows, cols = np.triu_indices(m)
    return np.where(rows == cols, 1.0, np.sqrt(2.0))


def site_maps(width: int, sketch_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A site's seeded maps: G (d, m) with N(0, 1) entries and the diagonal's projection (d, 2m), N(0, 1/2m)."""
    from cola.cluster import gaussian_projection

    return (gaussian_projection(width, sketch_dim, seed) * sketch_dim ** 0.5,
            gaussian_projection(width, 2 * sketch_dim, seed + 1))


def sketch_tokens(x: torch.Tensor, mask: torch.Tensor, directions: torch.Tensor, diagonal: torch.Tensor,
                  ) -> torch.Tensor:
    """(B, m(m+1)/2 + 2m) float32 sketches of B candidates' inputs to one site: x (B, T, d), mask (B, T) of 0/1
    (1 = a real token), directions G (d, m), diagonal projection (d, 2m). Row b: the upper triangle of
    G^T (X_b^T X_b / n_b) G, off-diagonals times sqrt 2, then (sum_t x_t^2 / n_b) projected; padding ignored."""
    import torch

    m = directions.shape[1]
    weights = mask.to(torch.float32).unsqueeze(-1)                    # (B, T, 1)
    counts = weights.sum(dim=1).clamp_min(1.0)                        # (B, 1)
    real = x.to(torch.float32) * weights                              # (B, T, d)
    y = real @ directions.to(real.device)                             # (B, T, m)
    cov = torch.einsum("btm,btn->bmn", y, y) / counts.unsqueeze(-1)   # (B, m, m)
    rows, cols = np.triu_indices(m)
    scale = torch.as_tensor(triangle_weights(m), dtype=torch.float32, device=real.device)
    tri = cov[:, torch.as_tensor(rows), torch.as_tensor(cols)] * scale
    squares = (real * real).sum(dim=1) / counts                       # (B, d)
    return torch.cat([tri, squares @ diagonal.to(real.device)], dim=1)


def token_weighted_mean(values: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """(D,) the per-token mean of a set: sum_i n_i v_i / sum_i n_i. values (N, D), tokens (N,)."""
    weights = np.asarray(tokens, np.float64)
    return (weights @ np.asarray(values, np.float64)) / max(weights.sum(), 1.0)


def _normalised(values: np.ndarray, target: np.ndarray, blocks: Sequence[slice]) -> tuple[np.ndarray, np.ndarray]:
    """Values and target with every block divided by the target block's norm (each block weighs the same)."""
    scale = np.ones(target.shape[0])
    for block in blocks:
        norm = np.linalg.norm(target[block])
        scale[block] = 1.0 / norm if norm > 0 else 1.0
    return np.asarray(values, np.float64) * scale, target * scale


def match_moments(sketches: MomentSketches, k: int, *, target: np.ndarray | None = None) -> np.ndarray:
    """(k,) distinct candidate rows, in the order picked, whose token-weighted mean sketch best matches `target`.

    target: (D,) a sketch of the statistics to reproduce; None = the token-weighted mean of all candidates. Each
    block (per site: covariance part, diagonal part) is divided by the target's norm in it, so every site counts
    the same, whatever its scale. Greedy forward selection (kernel herding with the linear kernel on sketches,
    Chen, Welling & Smola 2010): each step adds the candidate that brings the running token-weighted mean
    closest to the target; the error of such greedy mean matching falls as O(1/k). Ties go to the lower row,
    so the result is deterministic; identical candidates are still picked at most once each.
    Raises ColaError if k is not between 1 and N or the target's length is not D.
    """
    n = sketches.values.shape[0]
    check_pick(k, n)
    tokens = np.asarray(sketches.tokens, np.float64)
    target = token_weighted_mean(sketches.values, tokens) if target is None else np.asarray(target, np.float64)
    if target.shape != (sketches.values.shape[1],):
        raise ColaError(f"the target sketch has shape {target.shape}; the candidates' sketches have "
                        f"{sketches.values.shape[1]} columns")
    values, target = _normalised(sketches.values, target, sketches.blocks())
    offsets = values - target                    # (N, D): each candidate's own error
    own = np.einsum("nd,nd->n", offsets, offsets)  # (N,)
    chosen = np.zeros(n, dtype=bool)
    picks = np.empty(k, dtype=np.int64)
    error = np.zeros_like(target)                # running mean minus target
    total = 0.0                                  # tokens picked so far
    for step in range(k):
        # mean after adding c: (total * mean + n_c v_c) / (total + n_c); its error = a * error + b * offsets[c]
        a = total / (total + tokens)
        b = tokens / (total + tokens)
        cost = a * a * (error @ error) + b * b * own + 2 * a * b * (offsets @ error)
        cost[chosen] = np.inf
        pick = int(np.argmin(cost))
        picks[step], chosen[pick] = pick, True
        error = (total * error + tokens[pick] * offsets[pick]) / (total + tokens[pick])
        total += tokens[pick]
    return picks


def relative_errors(sketches: MomentSketches, rows: np.ndarray, target: np.ndarray | None = None,
                    ) -> dict[str, list[float]]:
    """Per site, ||mean_S - target|| / ||target|| of the covariance sketch ("covariance") and of the projected
    diagonal ("diagonal") for the set `rows`; target None = the token-weighted mean of all candidates."""
    target = token_weighted_mean(sketches.values, sketches.tokens) if target is None else np.asarray(target)
    mean = token_weighted_mean(sketches.values[rows], sketches.tokens[rows])
    blocks = sketches.blocks()
    errors = [float(np.linalg.norm(mean[b] - target[b]) / max(np.linalg.norm(target[b]), 1e-30)) for b in blocks]
    return {"covariance": errors[0::2], "diagonal": errors[1::2]}


def summarise_errors(errors: dict[str, list[float]]) -> dict[str, float]:
    """Mean and max over sites of each part's relative error, rounded for the manifest."""
    return {f"{part}_{stat}": round(float(fn(values)), 6) for part, values in errors.items()
            for stat, fn in (("mean", np.mean), ("max", np.max))}


def channel_weights(target: np.ndarray, columns: Sequence[slice]) -> np.ndarray:
    """(C,) weight of each channel in the range coverage: 1 / (target max x channels of its site x sites), so
    every site counts the same and a channel's share is its reached fraction of the target; 0 where the
    target's max is 0 (a channel nothing reaches)."""
    weights = np.zeros(target.shape[0])
    for block in columns:
        part = np.asarray(target[block], np.float64)
        weights[block] = np.divide(1.0, part * (block.stop - block.start) * len(columns),
                                   out=np.zeros_like(part), where=part > 0)
    return weights


def range_coverage(sketches: MomentSketches, rows: np.ndarray, target: np.ndarray | None = None) -> list[float]:
    """Per site, the mean over its channels of min(1, max|x| over the set `rows` / the target's max|x|): 1 when
    the set reaches every channel's range. target (C,) None = the maxima over all candidates.
    Raises ColaError if the sketches hold no maxima."""
    if sketches.maxima is None:
        raise ColaError("range coverage needs per-channel maxima: extract with channel_maxima=True")
    target = sketches.maxima.max(axis=0) if target is None else np.asarray(target)
    reached = sketches.maxima[np.asarray(rows)].max(axis=0)
    return [float(np.mean(np.minimum(1.0, np.divide(reached[b], target[b], out=np.ones(b.stop - b.start),
                                                     where=target[b] > 0))))
            for b in sketches.site_columns()]


def cover_maxima(sketches: MomentSketches, k: int, *, target: np.ndarray | None = None) -> np.ndarray:
    """(k,) distinct candidate rows, in the order picked, that together reach the largest share of the target's
    per-channel activation ranges: maximise f(S) = sum_c w_c min(max_{i in S} a_ic, t_c) with a_ic the
    candidate's max|x| in channel c, t the target (None = the maxima over all candidates) and w
    (`channel_weights`) making every site count the same.

    f is monotone submodular (a weighted sum of capped maxima), so greedy forward selection reaches at least
    1 - 1/e of the best k-set (Nemhauser, Wolsey & Fisher 1978), and a lazy greedy (Minoux 1978) re-scores
    only candidates whose stale gain still leads. Ties go to the lower row, so the result is deterministic;
    once nothing adds coverage the rest follow in row order. Identical candidates are picked at most once each.
    Raises ColaError if k is not between 1 and N, the sketches hold no maxima or the target's length is wrong.
    """
    if sketches.maxima is None:
        raise ColaError("outlier_coverage selection needs per-channel maxima: extract with channel_maxima=True")
    maxima = np.asarray(sketches.maxima, np.float32)  # (N, C); float32 keeps a big pool's copy small
    n, width = maxima.shape
    check_pick(k, n)
    target = maxima.max(axis=0) if target is None else np.asarray(target, np.float32)
    if target.shape != (width,):
        raise ColaError(f"the target maxima have shape {target.shape}; the candidates' maxima have {width} columns")
    weights = channel_weights(target, sketches.site_columns())
    capped = np.minimum(maxima, target)              # (N, C): what each candidate can add per channel
    reached = np.zeros(width, dtype=np.float32)
    bounds = np.concatenate([capped[start:start + 256].astype(np.float64) @ weights for start in range(0, n, 256)])
    heap = [(-float(bound), i) for i, bound in enumerate(bounds)]  # (-gain upper bound, row)
    heapq.heapify(heap)
    picks: list[int] = []
    while len(picks) < k:
        _, row = heapq.heappop(heap)
        key = (-float(np.maximum(capped[row] - reached, 0.0).astype(np.float64) @ weights), row)
        if heap and key > heap[0]:   # a stale bound: another candidate may now add more
            heapq.heappush(heap, key)
            continue
        picks.append(row)
        reached = np.maximum(reached, capped[row])
    return np.asarray(picks, dtype=np.int64)
