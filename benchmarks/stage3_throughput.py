"""Stage 3 throughput benchmark: how fast cola extracts activations on this CPU, and how close to its peak.

Measured in one run on one machine:
  1. matmul peak of this CPU in fp32 and bf16 (GFLOP/s, best of N square torch.matmul after warm-up);
  2. the embedded model's forward FLOPs per token up to the deepest chosen layer (LM head excluded):
     2 x decoder-layer parameters + 4 x layers x hidden x mean causal context (= mean length / 2);
  3. Stage 3 (select_by_activations) on a mixed-length pool (gsm8k + c4 + mbpp from ../shared/data, each
     text cut by truncate_to_length) in bf16 and fp32: useful tokens/s, padding, extraction and
     clustering seconds, achieved GFLOP/s and its fraction of the measured matmul peak;
  4. agreement of the bf16 and fp32 runs: shared selected pool indices, mean feature cosine similarity,
     and how well each pick covers the pool in fp32 feature space (against a random pick);
  5. whether the bf16 run meets the target of 1000 useful tokens/s.

Run from the repository root:
  make bench          (or: .venv/bin/python benchmarks/stage3_throughput.py [--skip_fp32])
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

import numpy as np
import torch

from cola.cluster import nearest_selected_distance
from cola.config import SelectionConfig
from cola.data.sources import load_source, parse_source
from cola.models import find_decoder_layers, load_model
from cola.stages.process import truncate_to_length
from cola.stages.select import Selection, select_by_activations

from machine import machine_line, matmul_gflops

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_FILES = ("gsm8k/train.jsonl", "c4/c4_en_train_first1000.jsonl", "mbpp/mbpp_train_valid_prompt.jsonl")
TARGET_TOKENS_PER_SECOND = 1000.0
DTYPES = {"bf16": ("bfloat16", torch.bfloat16), "fp32": ("float32", torch.float32)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per_source", type=int, default=200, help="candidates sampled from each source")
    parser.add_argument("--sequence_length", type=int, default=512, help="tokens kept of each text at most")
    parser.add_argument("--num_samples", type=int, default=128, help="samples Stage 3 selects")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", type=Path, default=(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--skip_fp32", action="store_true", help="run Stage 3 in bf16 only")
    return parser.parse_args()


def load_pool(data_dir: Path, per_source: int, seed: int) -> tuple[list[str], list[str]]:
    """(texts, source name of each) from the benchmark's source files, `per_source` texts each."""
    texts: list[str] = []
    names: list[str] = []
    for relative in SOURCE_FILES:
        source = load_source(parse_source(str(data_dir / relative)), max_candidates=per_source, seed=seed)
        texts.extend(source.texts)
        names.extend([relative.split("/")[0]] * len(source.texts))
    return texts, names


def flops_per_token(model: torch.nn.Module, mean_length: float, layers: int | None = None) -> dict[str, float]:
    """Forward FLOPs per token through the first `layers` decoder blocks (all by default), LM head excluded."""
    _, blocks = find_decoder_layers(model)
    used = blocks[: layers or len(blocks)]
    params = sum(p.numel() for block in used for p in block.parameters())
    hidden = model.config.hidden_size
    context = mean_length / 2  # mean causal prefix a token attends to
    attention = 4 * len(used) * hidden * context  # QK^T scores + attention-weighted V
    return {"layers": len(used), "params": params, "hidden": hidden, "context": context,
            "dense": 2 * params, "attention": attention, "total": 2 * params + attention}


def run_selection(dtype_name: str, token_ids: list[tuple[int, ...]], names: list[str], num_samples: int,
                  seed: int) -> tuple[Selection, torch.nn.Module]:
    """Load the embedded model in `dtype_name` on the CPU and run Stage 3 on the pool."""
    model, tokenizer = load_model("embedded", device="cpu", dtype=dtype_name, quiet=True)
    selection = select_by_activations(model, token_ids, names, num_samples, SelectionConfig(seed=seed),
                                      pad_token_id=tokenizer.pad_token_id or 0, quiet=True)
    return selection, model


def run_metrics(selection: Selection, flops: float, peak: float) -> dict[str, float]:
    """Throughput, padding, timings and roofline figures of one Stage 3 run."""
    extraction = selection.diagnostics["extraction"]
    seconds = selection.timings["stage3_extract"]
    useful = extraction["real_tokens"] / seconds
    computed = extraction["computed_tokens"] / seconds
    achieved = useful * flops / 1e9
    return {"useful tokens/s": useful, "computed tokens/s (incl. padding)": computed,
            "padding fraction": extraction["padding_fraction"], "batches": extraction["batches"],
            "extraction s": seconds, "clustering s": selection.timings["stage3_cluster"],
            "achieved GFLOP/s (useful tokens)": achieved,
            "achieved GFLOP/s (computed tokens)": computed * flops / 1e9,
            "roofline fraction (useful / peak)": achieved / peak}


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean row-wise cosine similarity of two (N, D) feature matrices."""
    dot = (a * b).sum(axis=1)
    return float(np.mean(dot / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def print_table(results: dict[str, dict[str, float]]) -> None:
    columns = list(results)
    print(f"{'':38s}" + "".join(f"{c:>12s}" for c in columns))
    for key in results[columns[0]]:
        cells = [results[c][key] for c in columns]
        fmt = "{:>12d}" if all(isinstance(v, int) for v in cells) else "{:>12.3f}"
        print(f"{key:38s}" + "".join(fmt.format(v) for v in cells))


def main() -> None:
    args = parse_args()
    missing = [r for r in SOURCE_FILES if not (args.data_dir / r).is_file()]
    if missing:
        print(f"skipped: {args.data_dir / missing[0]} not found")
        return
    peaks = {label: matmul_gflops(dtype) for label, (_, dtype) in DTYPES.items()}
    print(machine_line(peaks) + " (other processes skew every figure below)")

    texts, names = load_pool(args.data_dir, args.per_source, args.seed)
    _, tokenizer = load_model("embedded", device="cpu", dtype="float32", quiet=True)
    token_ids = [t.input_ids for t in truncate_to_length(tokenizer, texts, args.sequence_length)]
    lengths = np.array([len(ids) for ids in token_ids])
    print(f"pool: {len(token_ids)} candidates ({', '.join(f'{n}: {names.count(n)}' for n in dict.fromkeys(names))}),"
          f" {lengths.sum()} tokens, length mean {lengths.mean():.1f} / median {np.median(lengths):.0f}"
          f" / min {lengths.min()} / max {lengths.max()} (cut to {args.sequence_length})")

    labels = ["bf16"] if args.skip_fp32 else ["bf16", "fp32"]
    selections: dict[str, Selection] = {}
    results: dict[str, dict[str, float]] = {}
    flops: dict[str, float] = {}
    for label in labels:
        selection, model = run_selection(DTYPES[label][0], token_ids, names, args.num_samples, args.seed)
        if not flops:
            flops = flops_per_token(model, float(lengths.mean()))
            print(f"FLOPs/token, {flops['layers']} decoder layers, LM head excluded: "
                  f"2 x {flops['params']:,} params = {flops['dense'] / 1e6:.1f} MFLOP"
                  f" + attention 4 x {flops['layers']} x {flops['hidden']} x {flops['context']:.1f} (mean length / 2)"
                  f" = {flops['attention'] / 1e6:.1f} MFLOP -> {flops['total'] / 1e6:.1f} MFLOP/token")
        selections[label], results[label] = selection, run_metrics(selection, flops["total"], peaks[label])
        del model
        gc.collect()
    print(f"Stage 3: select_by_activations, num_samples={args.num_samples}, seed={args.seed}, "
          f"{SelectionConfig().batch_size} seqs / {SelectionConfig().batch_tokens} token slots per batch")
    print_table(results)

    if "fp32" in selections:
        common = np.intersect1d(selections["bf16"].indices, selections["fp32"].indices).size
        cosine = mean_cosine(selections["bf16"].features, selections["fp32"].features)
        print(f"agreement bf16 vs fp32: {common}/{args.num_samples} selected pool indices shared, "
              f"mean feature cosine similarity {cosine:.6f} over {len(token_ids)} candidates")
        # Shared indices undersell agreement: k-means has many near-equal optima. Judge each pick instead by
        # how well it covers the pool in fp32 feature space (mean distance to nearest selected; lower is better).
        reference = selections["fp32"].features
        random_pick = np.random.default_rng(args.seed).choice(len(reference), args.num_samples, replace=False)
        coverage = {name: nearest_selected_distance(reference, picks).mean() for name, picks in (
            ("fp32 pick", selections["fp32"].indices), ("bf16 pick", selections["bf16"].indices),
            ("random pick", random_pick))}
        print("coverage in fp32 feature space (mean distance to nearest selected, lower is better): "
              + ", ".join(f"{name} {value:.4f}" for name, value in coverage.items()))
    met = results["bf16"]["useful tokens/s"] >= TARGET_TOKENS_PER_SECOND
    print(f"target >= {TARGET_TOKENS_PER_SECOND:.0f} useful tokens/s (bf16): {'met' if met else 'not met'}"
          f" ({results['bf16']['useful tokens/s']:.0f})")


if __name__ == "__main__":
    main()
