"""Stage 3's selection at pool sizes users curate from: `cola.cluster.select_medoids` from 10^4 to 10^6 candidates.

Prints, for each (N, k): the seconds of the scalable path (mini-batch k-means, Lloyd refinement, the matching on
each centroid's k nearest candidates) and, where it finishes in reasonable time (N <= --exact_limit), of the
full-batch method cola used before (`kmeans="full"`, the same exact matching), with both results' k-means
inertia and mean distance of a candidate to its nearest pick, over seeds. Peak RSS is the process's own. Where
faiss-cpu is installed, faiss's k-means (with the same matching) is measured beside them.

    .venv/bin/python benchmarks/selection_scale.py                     # 100k and 1M x 64, k = 128; 1M, k = 1024
    .venv/bin/python benchmarks/selection_scale.py --sizes 100000 --ks 128 --seeds 0 1 2

The features are a Gaussian mixture of 400 components of different spreads (64 dims, like Stage 3's projection),
drawn from a fixed seed: many more modes than k, so k-means has many local optima, as on real activations.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import time

import numpy as np
from machine import machine_line

from cola.cluster import Medoids, _match_centroids, nearest_selected_distance, select_medoids


def mixture(n: int, dim: int = 64, components: int = 400, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 points of a Gaussian mixture with `components` means and spreads."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(components, dim))
    spreads = rng.uniform(0.3, 2.0, size=components)
    out = np.empty((n, dim), dtype=np.float32)
    step = 1 << 18
    for start in range(0, n, step):  # drawn in pieces: no float64 copy of the whole set
        part = rng.integers(0, components, size=min(step, n - start))
        out[start:start + len(part)] = means[part] + rng.normal(size=(len(part), dim)) * spreads[part, None]
    return out


def inertia(features: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances of the candidates to their cluster's centroid (float64, in chunks)."""
    total, step = 0.0, 1 << 16
    for start in range(0, len(features), step):
        diff = features[start:start + step].astype(np.float64) - centroids[labels[start:start + step]]
        total += float((diff * diff).sum())
    return total


def faiss_medoids(features: np.ndarray, k: int, seed: int) -> Medoids:
    """faiss's k-means (3 restarts, 100 iterations, its default 256 sampled points per centroid) with cola's
    matching: the alternative library the selection was measured against."""
    import faiss

    km = faiss.Kmeans(features.shape[1], k, niter=100, nredo=3, seed=seed + 1, max_points_per_centroid=256)
    km.train(np.ascontiguousarray(features, dtype=np.float32))
    labels = km.index.search(np.ascontiguousarray(features, dtype=np.float32), 1)[1][:, 0]
    centroids = km.centroids.astype(np.float64)
    return Medoids(indices=_match_centroids(features, centroids), labels=labels.astype(np.int64), centroids=centroids)


def run(features: np.ndarray, k: int, seed: int, kmeans: str) -> dict[str, float]:
    start = time.perf_counter()
    found = (faiss_medoids(features, k, seed) if kmeans == "faiss"
             else select_medoids(features, k, seed=seed, kmeans=kmeans))
    seconds = time.perf_counter() - start
    assert len(set(found.indices.tolist())) == k
    return {"seconds": seconds, "inertia": inertia(features, found.labels, found.centroids),
            "nearest": float(nearest_selected_distance(features, found.indices).mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--exact_limit", type=int, default=100_000,
                        help="largest N the full-batch method also runs at (it takes minutes beyond)")
    parser.add_argument("--max_cells", type=int, default=2_000_000_000,
                        help="skip (N, k) with N x k above this (k = 1024 only at the largest N by default)")
    args = parser.parse_args()
    print(machine_line())
    has_faiss = importlib.util.find_spec("faiss") is not None
    print("faiss: " + ("installed, measured beside" if has_faiss else "not installed (pip install faiss-cpu to "
                                                                        "compare its k-means)"))
    print("| N | k | method | seeds | seconds (mean) | inertia (mean) | mean distance to nearest pick | "
          "vs full-batch |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        features = mixture(n)
        for k in args.ks:
            if n * k > args.max_cells or (k > 128 and n < max(args.sizes)):
                continue
            methods = (["minibatch"] + (["faiss"] if has_faiss else [])
                       + (["full"] if n <= args.exact_limit else []))
            results = {m: [run(features, k, seed, m) for seed in args.seeds] for m in methods}
            means = {m: {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} for m, rows in results.items()}
            for m in methods:
                versus = ""
                if "full" in means and m != "full":
                    versus = (f"inertia {means[m]['inertia'] / means['full']['inertia'] - 1:+.2%}, nearest "
                              f"{means[m]['nearest'] / means['full']['nearest'] - 1:+.2%}, "
                              f"{means['full']['seconds'] / means[m]['seconds']:.1f}x faster")
                print(f"| {n:,} | {k} | {m} | {len(args.seeds)} | {means[m]['seconds']:.1f} | "
                      f"{means[m]['inertia']:.5g} | {means[m]['nearest']:.4f} | {versus} |", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
