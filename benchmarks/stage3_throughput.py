"""Stage 3 throughput benchmark: how fast cola extracts activations on this CPU, and how close to its limit.

Measured in one run on one machine:
  1. matmul peak of this CPU in fp32 and bf16 (GFLOP/s, best of N square torch.matmul after warm-up);
  2. the embedded model's forward FLOPs per token up to the deepest chosen layer (LM head excluded):
     2 x decoder-layer parameters + 4 x layers x hidden x mean causal context (= mean length / 2);
  3. the roofline at the model's own GEMM shapes (`roofline.py`): each of q/k/v/o, gate/up/down and the
     attention score/value products timed at the shapes of the batches Stage 3 actually runs, and the useful
     tokens/s those rates would allow if the GEMMs were all the work (FLOP-weighted over the batch plan);
  4. Stage 3 (select_by_activations) on a mixed-length pool (gsm8k + c4 + mbpp from ../shared/data, each
     text cut by truncate_to_length) in bf16 and fp32: useful tokens/s, padding, extraction and
     clustering seconds, achieved GFLOP/s, its fraction of the square matmul peak and of the roofline;
     with --repeats R the roofline and the extraction alternate R times (a shared machine's load moves
     both alike, so the ratio of each pair is the figure to read);
  5. agreement of the bf16 and fp32 runs: shared selected pool indices, mean feature cosine similarity,
     and how well each pick covers the pool in fp32 feature space (against a random pick);
  6. whether the bf16 run meets the targets: 1000 useful tokens/s and 0.6 of the roofline.

Run from the repository root:
  make bench          (or: .venv/bin/python benchmarks/stage3_throughput.py [--skip_fp32] [--repeats 3])
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import numpy as np
import torch

from cola.batching import length_batches
from cola.cluster import nearest_selected_distance
from cola.config import COMPILE_MODES, SelectionConfig
from cola.data.sources import load_source, parse_source
from cola.models import find_decoder_layers, load_model
from cola.stages.process import truncate_to_length
from cola.stages.select import Selection, select_by_activations

from machine import machine_line, matmul_gflops
from roofline import ATTENTION_NAMES, LINEAR_NAMES, ModelShape, Roofline, measure_roofline

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_FILES = ("gsm8k/train.jsonl", "c4/c4_en_train_first1000.jsonl", "mbpp/mbpp_train_valid_prompt.jsonl")
TARGET_TOKENS_PER_SECOND = 1000.0
TARGET_ROOFLINE_FRACTION = 0.6
DTYPES = {"bf16": ("bfloat16", torch.bfloat16), "fp32": ("float32", torch.float32)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per_source", type=int, default=200, help="candidates sampled from each source")
    parser.add_argument("--sequence_length", type=int, default=512, help="tokens kept of each text at most")
    parser.add_argument("--num_samples", type=int, default=128, help="samples Stage 3 selects")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", type=Path, default=(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--skip_fp32", action="store_true", help="run Stage 3 in bf16 only")
    parser.add_argument("--repeats", type=int, default=1, help="roofline + extraction pairs per dtype, interleaved")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--compile", choices=sorted(COMPILE_MODES), default=SelectionConfig().compile,
                        help="SelectionConfig.compile: torch.compile the decoder blocks' forwards (dynamic shapes; the"
                             " hooks stay eager); with 'on' the first extraction, which compiles, is run once untimed")
    parser.add_argument("--batch_size", type=int, default=SelectionConfig().batch_size)
    parser.add_argument("--batch_tokens", type=int, default=SelectionConfig().batch_tokens)
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


def run_selection(model: torch.nn.Module, pad_token_id: int, token_ids: list[tuple[int, ...]], names: list[str],
                  config: SelectionConfig, num_samples: int) -> Selection:
    """Stage 3 on the pool with a loaded model."""
    return select_by_activations(model, token_ids, names, num_samples, config, pad_token_id=pad_token_id, quiet=True)


def run_metrics(selection: Selection, flops: float, peak: float, roofline: Roofline) -> dict[str, float]:
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
            "fraction of 2048² matmul peak": achieved / peak,
            "roofline GFLOP/s (model's GEMMs)": roofline.gflops,
            "roofline useful tokens/s": roofline.tokens_per_second,
            "fraction of roofline (tokens/s)": useful / roofline.tokens_per_second}


def print_gemm_rates(rooflines: dict[str, Roofline]) -> None:
    """Per GEMM name: its M range over the batch plan, its share of the useful FLOPs, its rate per dtype."""
    first = next(iter(rooflines.values()))
    total = sum(first.flops.values())
    print(f"{'GEMM (per layer; M = batch token slots)':44s}{'M range':>12s}{'FLOP %':>8s}"
          + "".join(f"{label + ' GFLOP/s':>14s}" for label in rooflines))
    for name in LINEAR_NAMES + ATTENTION_NAMES:
        low, high = first.rows[name]
        print(f"{name:44s}{f'{low}-{high}':>12s}{100 * first.flops[name] / total:>8.1f}"
              + "".join(f"{r.rate(name):>14.0f}" for r in rooflines.values()))
    print(f"{'all, FLOP-weighted (the roofline)':44s}{'':>12s}{100.0:>8.1f}"
          + "".join(f"{r.gflops:>14.0f}" for r in rooflines.values()))


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
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    peaks = {label: matmul_gflops(dtype) for label, (_, dtype) in DTYPES.items()}
    print(machine_line(peaks) + " (other processes skew every figure below)")

    texts, names = load_pool(args.data_dir, args.per_source, args.seed)
    _, tokenizer = load_model("embedded", device="cpu", dtype="float32", quiet=True)
    token_ids = [t.input_ids for t in truncate_to_length(tokenizer, texts, args.sequence_length)]
    lengths = np.array([len(ids) for ids in token_ids])
    print(f"pool: {len(token_ids)} candidates ({', '.join(f'{n}: {names.count(n)}' for n in dict.fromkeys(names))}),"
          f" {lengths.sum()} tokens, length mean {lengths.mean():.1f} / median {np.median(lengths):.0f}"
          f" / min {lengths.min()} / max {lengths.max()} (cut to {args.sequence_length})")
    config = SelectionConfig(seed=args.seed, batch_size=args.batch_size, batch_tokens=args.batch_tokens,
                             compile=args.compile)
    plan = [[int(lengths[i]) for i in batch] for batch in
            length_batches(lengths.tolist(), max_batch_size=config.batch_size, max_batch_tokens=config.batch_tokens)]

    labels = ["bf16"] if args.skip_fp32 else ["bf16", "fp32"]
    models = {label: load_model("embedded", device="cpu", dtype=DTYPES[label][0], quiet=True)[0] for label in labels}
    shape = ModelShape.from_config(models["bf16"].config)
    if args.compile == "on":
        for label, model in models.items():
            start = time.perf_counter()
            run_selection(model, tokenizer.pad_token_id or 0, token_ids, names, config, args.num_samples)
            print(f"torch.compile ({label}): first extraction, compiling included, {time.perf_counter() - start:.1f} s")
    flops = flops_per_token(models["bf16"], float(lengths.mean()))
    print(f"FLOPs/token, {flops['layers']} decoder layers, LM head excluded: "
          f"2 x {flops['params']:,} params = {flops['dense'] / 1e6:.1f} MFLOP"
          f" + attention 4 x {flops['layers']} x {flops['hidden']} x {flops['context']:.1f} (mean length / 2)"
          f" = {flops['attention'] / 1e6:.1f} MFLOP -> {flops['total'] / 1e6:.1f} MFLOP/token")
    print(f"Stage 3: select_by_activations, num_samples={args.num_samples}, seed={args.seed}, "
          f"{config.batch_size} seqs / {config.batch_tokens} token slots per batch: {len(plan)} batches; "
          f"model: hidden {shape.hidden}, intermediate {shape.intermediate}, {shape.heads} query / "
          f"{shape.kv_heads} kv heads of {shape.head_dim}, {shape.layers} layers")

    selections: dict[str, Selection] = {}
    results: dict[str, dict[str, float]] = {}
    rooflines: dict[str, Roofline] = {}
    for repeat in range(args.repeats):
        for label in labels:  # roofline, then the extraction it is compared with, back to back
            roofline = measure_roofline(shape, plan, DTYPES[label][1])
            selection = run_selection(models[label], tokenizer.pad_token_id or 0, token_ids, names, config,
                                      args.num_samples)
            column = label if args.repeats == 1 else f"{label} #{repeat + 1}"
            selections[label] = selection
            rooflines.setdefault(label, roofline)
            results[column] = run_metrics(selection, flops["total"], peaks[label], roofline)
            gc.collect()
    print_gemm_rates(rooflines)
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
    bf16 = [row for column, row in results.items() if column.startswith("bf16")]
    useful = [row["useful tokens/s"] for row in bf16]
    ratios = [row["fraction of roofline (tokens/s)"] for row in bf16]
    spread = (f" (over {len(bf16)} runs: {min(useful):.0f}-{max(useful):.0f};"
              f" ratio {min(ratios):.2f}-{max(ratios):.2f})") if len(bf16) > 1 else ""
    best = int(np.argmax(ratios))
    print(f"target >= {TARGET_TOKENS_PER_SECOND:.0f} useful tokens/s (bf16): "
          f"{'met' if max(useful) >= TARGET_TOKENS_PER_SECOND else 'not met'} ({np.median(useful):.0f} median){spread}")
    print(f"target >= {TARGET_ROOFLINE_FRACTION} of the in-run roofline at the model's shapes (bf16): "
          f"{'met' if np.median(ratios) >= TARGET_ROOFLINE_FRACTION else 'not met'} ({np.median(ratios):.2f} median;"
          f" best {ratios[best]:.2f})")


if __name__ == "__main__":
    main()
