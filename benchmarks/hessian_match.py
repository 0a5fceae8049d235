"""How well does each Stage 3 method's set reproduce the pool's exact per-layer Hessians, and what does it cost?

Builds the processed mixed pool as `cola curate --no_stage1` does, then for each calibration size k picks k
candidates with `moments` (second-moment matching), `outlier_coverage` (covering the per-channel maxima),
`activations` (k-means medoids, COLA's) and seeded random picks (several draws), and in one more forward pass
accumulates the exact per-token Hessian H = sum x x^T / n of every linear-layer input (site) in a few decoder
layers, for the whole pool (the target) and for every pick. It
prints, per size, method and site, the relative Frobenius error ||H_set - H_pool||_F / ||H_pool||_F, the same for
the diagonal (Wanda's column norms), and the outlier coverage: the mean over channels of max|x| in the set over
max|x| in the pool (AWQ/SmoothQuant read activation ranges). It also times one extraction pass without the
moment sketches, with them, and with them and the per-channel maxima, and each method's selection step, in the
same run.

    python benchmarks/hessian_match.py --data_dir ../shared/data --sizes 8 32 128 --layers 0 15 -1
    python benchmarks/hessian_match.py --data_dir ../shared/data --model gemma3-270m --chat_template off \
        --layers 0 9 -1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cola.activations import extract_features, resolve_layers
from cola.api import COLA
from cola.batching import length_batches, pad_batch
from cola.cluster import select_medoids
from cola.config import ProcessConfig
from cola.errors import ColaError
from cola.models import find_decoder_layers, load_model
from cola.moments import cover_maxima, match_moments

from machine import machine_line

DATASETS = ["c4/c4_en_train_first1000.jsonl", "gsm8k/train.jsonl", "math/train.jsonl",
            "mbpp/mbpp_train_valid_prompt.jsonl", "commonsense_llm_adapters/arc_challenge_train.parsed.jsonl",
            "commonsense_llm_adapters/openbookqa_train.parsed.jsonl", "alpaca/alpaca_5000.json"]


class ExactStatistics:
    """Forward pre-hooks on the linear layers of some decoder layers: per site, the exact sum of x x^T, of x^2
    and the channel max |x| for the pool and for each named subset of candidates."""

    def __init__(self, model: torch.nn.Module, layers: Sequence[int], subsets: dict[str, np.ndarray]) -> None:
        self.subsets = {name: set(rows.tolist()) for name, rows in subsets.items()}
        self.sums: dict[str, dict[str, np.ndarray]] = {}   # site -> "name:kind" -> array
        self.tokens = {name: 0 for name in ["pool", *subsets]}
        self.rows: list[int] = []
        self.mask: torch.Tensor | None = None
        self.last: torch.Tensor | None = None
        _, blocks = find_decoder_layers(model)
        self.handles = [module.register_forward_pre_hook(self._hook(f"{layer}:{name.rsplit('.', 1)[-1]}"))
                        for layer in layers for name, module in blocks[layer].named_modules()
                        if isinstance(module, torch.nn.Linear)]

    def _hook(self, site: str):
        def hook(_module, inputs):
            x = inputs[0]
            if x is self.last:
                return
            self.last = x
            acc = self.sums.setdefault(site, {})
            for row, candidate in enumerate(self.rows):
                real = x[row, self.mask[row].bool()].to(torch.float64)     # (n, d)
                h, squares = real.T @ real, (real * real).sum(0)
                peak = real.abs().amax(0)
                for name in ["pool"] + [n for n, rows in self.subsets.items() if candidate in rows]:
                    for kind, value in (("h", h), ("diag", squares)):
                        key = f"{name}:{kind}"
                        acc[key] = acc[key] + value if key in acc else value.clone()
                    key = f"{name}:max"
                    acc[key] = torch.maximum(acc[key], peak) if key in acc else peak.clone()
        return hook

    def run(self, model: torch.nn.Module, token_ids: Sequence[np.ndarray], batch_tokens: int) -> None:
        lengths = [len(t) for t in token_ids]
        with torch.inference_mode():
            for batch in length_batches(lengths, max_batch_tokens=batch_tokens, max_batch_size=16):
                ids, mask = pad_batch([token_ids[i] for i in batch], 0)
                self.rows, self.mask, self.last = batch, mask, None
                model(input_ids=ids, attention_mask=mask, use_cache=False)
                for candidate in batch:
                    self.tokens["pool"] += lengths[candidate]
                    for name, rows in self.subsets.items():
                        if candidate in rows:
                            self.tokens[name] += lengths[candidate]
        for handle in self.handles:
            handle.remove()

    def errors(self, name: str) -> dict[str, tuple[float, float, float]]:
        """site -> (relative Frobenius error of H, relative error of its diagonal, mean channel max ratio)."""
        out = {}
        for site, acc in self.sums.items():
            target_h = acc["pool:h"] / self.tokens["pool"]
            target_d = acc["pool:diag"] / self.tokens["pool"]
            h = acc[f"{name}:h"] / self.tokens[name]
            d = acc[f"{name}:diag"] / self.tokens[name]
            out[site] = (float(torch.linalg.norm(h - target_h) / torch.linalg.norm(target_h)),
                         float(torch.linalg.norm(d - target_d) / torch.linalg.norm(target_d)),
                         float((acc[f"{name}:max"] / acc["pool:max"].clamp_min(1e-12)).mean()))
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--datasets", nargs="+", default=DATASETS, help="relative to --data_dir")
    parser.add_argument("--candidates_per_source", type=int, default=300)
    parser.add_argument("--sequence_length", type=int, default=512)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 15, -1], help="layers whose exact H is kept")
    parser.add_argument("--random_draws", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat_template", choices=["auto", "on", "off"], default="auto",
                        help="Stage 2's chat template mode (off for a pretrained model, as the Gemma grid curates)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    print(machine_line())
    try:
        model, tokenizer = load_model(args.model, dtype=args.dtype, quiet=args.quiet)
        datasets = [str(Path(args.data_dir) / d) for d in args.datasets]
        with tempfile.TemporaryDirectory() as out:
            cola = COLA(model=model, tokenizer=tokenizer, available_datasets=datasets, output_dir=out, stage1=False,
                        candidates_per_source=args.candidates_per_source, seed=args.seed, quiet=args.quiet,
                        process=ProcessConfig(chat_template=args.chat_template))
            config = cola.config(max(args.sizes), args.sequence_length)
            pool = cola.process(cola.load(config, out).sources, config, {})
        token_ids = pool.token_ids
        selection = config.selection
        kw = dict(layers=None, projection_dim=selection.projection_dim, seed=args.seed,
                  batch_size=selection.batch_size, batch_tokens=selection.batch_tokens, quiet=args.quiet)
        start = time.perf_counter()
        extract_features(model, token_ids, **kw)
        plain = time.perf_counter() - start
        start = time.perf_counter()
        extract_features(model, token_ids, sketch_dim=selection.sketch_dim, **kw)
        sketched = time.perf_counter() - start
        start = time.perf_counter()
        found = extract_features(model, token_ids, sketch_dim=selection.sketch_dim, channel_maxima=True, **kw)
        maxima = time.perf_counter() - start
        print(f"pool: {len(token_ids)} candidates, {sum(map(len, token_ids))} tokens; one extraction pass "
              f"{plain:.1f} s without sketches, {sketched:.1f} s with ({sketched / plain:.2f}x), {maxima:.1f} s "
              f"with sketches and channel maxima ({maxima / plain:.2f}x)")
        pickers = {"moments": lambda k: match_moments(found.sketches, k),
                   "outlier_coverage": lambda k: cover_maxima(found.sketches, k),
                   "activations": lambda k: select_medoids(found.features, k, seed=args.seed).indices}
        subsets, seconds = {}, {}
        for k in args.sizes:
            for name, pick in pickers.items():
                start = time.perf_counter()
                subsets[f"{name}_{k}"] = pick(k)
                seconds[f"{name}_{k}"] = time.perf_counter() - start
            rng = np.random.default_rng(args.seed)
            for draw in range(args.random_draws):
                subsets[f"random{draw}_{k}"] = rng.choice(len(token_ids), k, replace=False)
        layers = resolve_layers(args.layers, len(find_decoder_layers(model)[1]))
        exact = ExactStatistics(model, layers, subsets)
        start = time.perf_counter()
        exact.run(model, token_ids, selection.batch_tokens)
        print(f"exact statistics pass: {time.perf_counter() - start:.1f} s")
    except ColaError as exc:
        print(f"hessian_match: {exc}", file=sys.stderr)
        return 1
    methods = [*pickers, "random"]
    for k in args.sizes:
        print(f"\n## k = {k}: relative error of H (Frobenius), of diag(H), and channel-max coverage per site; "
              "selection seconds: " + ", ".join(f"{name} {seconds[f'{name}_{k}']:.2f}" for name in pickers))
        errors = {name: exact.errors(f"{name}_{k}") for name in pickers}
        draws = [exact.errors(f"random{d}_{k}") for d in range(args.random_draws)]
        for part, (label, digits) in enumerate((("H", 4), ("diag", 4), ("max", 3))):
            print("\n| site | " + " | ".join(f"{name} {label}" for name in methods) + " |")
            print("|---" * (len(methods) + 1) + "|")
            rows = []
            for site in draws[0]:
                randoms = np.array([d[site][part] for d in draws])
                rows.append([errors[name][site][part] for name in pickers] + [randoms.mean()])
                print(f"| {site} | " + " | ".join(f"{v:.{digits}f}" for v in rows[-1][:-1]) +
                      f" | {randoms.mean():.{digits}f} ± {randoms.std():.{digits}f} |")
            print("| **mean over sites** | " + " | ".join(f"{v:.{digits}f}" for v in np.mean(rows, axis=0)) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
