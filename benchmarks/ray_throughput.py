"""Stage 3's extraction in one process against a local Ray cluster of `--workers` replicas (`--executor ray`,
cola.executors), on the embedded model (SmolLM2-135M) and a synthetic pool of `--candidates` x `--length`
seeded random token ids, cut into chunks of `--chunk` candidates.

One process: `embed_pool` over the chunks in turn, torch's own threads (all cores). Ray: a local cluster of all
cores started first (its start-up printed apart), then the actor pool, each replica loading the model from the
same ModelConfig with cores / workers torch threads, fills the same chunks (`cola.executors.ray_fill`); its
time includes the replicas' model load, printed apart as the time to the first chunk. The two alternate for
`--rounds` rounds (load from other work then falls on both); prints each round's useful tokens/s, load average
and largest feature difference between the two (same chunks, same batching), then the medians and their ratio.

    cd benchmarks && ../.venv/bin/python ray_throughput.py         # 2 workers, 96 x 256 tokens, chunks of 8, 3 rounds
    cd benchmarks && ../.venv/bin/python ray_throughput.py --workers 2 --candidates 192
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
import torch

from machine import machine_line

from cola.config import ModelConfig, SelectionConfig
from cola.executors import ray_cluster, ray_fill
from cola.feature_cache import model_digest
from cola.stages.select import embed_pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=96)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="the one process's torch threads (default: torch's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    config = ModelConfig(model="embedded", device="cpu", dtype=args.dtype)
    model, tokenizer = config.load(quiet=True)
    rng = np.random.default_rng(0)
    pool = [rng.integers(1, len(tokenizer), args.length).astype(np.int32) for _ in range(args.candidates)]
    chunks = [pool[i:i + args.chunk] for i in range(0, len(pool), args.chunk)]
    selection = SelectionConfig(method="activations")
    tokens = args.candidates * args.length
    print(f"pool: {args.candidates} x {args.length} tokens = {tokens} tokens in {len(chunks)} chunks; {args.dtype}")

    threads = max(1, (os.cpu_count() or 1) // args.workers)
    key = model_digest(model)
    start = time.perf_counter()
    with ray_cluster(None, quiet=True):
        print(f"local Ray cluster started in {time.perf_counter() - start:.1f} s (not counted below)")
        rates: dict[str, list[float]] = {"one": [], "ray": []}
        for round_ in range(args.rounds):  # alternated, so that load from other work falls on both alike
            start = time.perf_counter()
            local = [embed_pool(model, chunk, selection, pad_token_id=0, quiet=True).features for chunk in chunks]
            one = time.perf_counter() - start
            found: dict[int, np.ndarray] = {}
            start, first = time.perf_counter(), 0.0
            for index, extraction in ray_fill(chunks, model=model, model_config=config, model_key=key,
                                              selection=selection, pad_token_id=0, sketches=False, maxima=False,
                                              address=None, workers=args.workers, quiet=True):
                first = first or time.perf_counter() - start
                found[index] = extraction.features
            ray_seconds = time.perf_counter() - start
            rates["one"].append(tokens / one)
            rates["ray"].append(tokens / ray_seconds)
            difference = max(float(np.abs(found[i] - local[i]).max()) for i in range(len(chunks)))
            scale = max(float(np.abs(f).max()) for f in local)
            print(f"round {round_ + 1}: one process ({torch.get_num_threads()} threads) {one:.1f} s, "
                  f"{tokens / one:.0f} tokens/s; ray {args.workers} workers x {threads} threads {ray_seconds:.1f} s, "
                  f"{tokens / ray_seconds:.0f} tokens/s (first chunk after {first:.1f} s: the replicas load the "
                  f"model); load average {os.getloadavg()[0]:.2f}; largest feature difference {difference:.3g} "
                  f"(features up to {scale:.3g})")
    one, ray = float(np.median(rates["one"])), float(np.median(rates["ray"]))
    print(f"median of {args.rounds}: one process {one:.0f} tokens/s, ray {ray:.0f} tokens/s, ray / one process "
          f"{ray / one:.2f}x")


if __name__ == "__main__":
    main()
