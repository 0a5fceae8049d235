"""Every compression method on SmolLM2 with one curated calibration set: time, memory, bits, perplexity, NLLs.

Each method runs as its own `cola compress` process (so its peak memory is its own); every saved model
is then reloaded as a user would (`cola.compress.api.load_compressed`) and scored on wikitext-2 test
perplexity over non-overlapping windows and on the math and code answer NLLs (gsm8k_nll, humaneval_nll),
next to the dense model.

    .venv/bin/python benchmarks/compress_methods.py --calibration CURATE_DIR [--methods caldera gptq-w2 ...]

Without --calibration it first curates 128 x 512-token samples from ../shared/data. The CALDERA rows share one
Hessian cache (work_dir/hessians): the first of them computes it, the others read it, and
`caldera-e8p-r16-ft-again` repeats `caldera-e8p-r16-ft` to print the time a run with a complete cache takes;
`caldera-e8p-r24-ft2` is the defaults (the 2.4 preset) spelled out, and `caldera` the defaults without a cache,
as a user runs it. With --speed, the first CALDERA row's forward is timed three ways (dense checkpoint,
CalderaLinear with its dense weight cached, CalderaLinear from its factors).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from machine import machine_line

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
WIKITEXT = DATA / "wikitext2" / "wiki.test.raw.txt"

# name -> `cola compress` arguments
RUNS: dict[str, list[str]] = {
    "rtn-w4": ["--method", "rtn", "--bits", "4"],
    "gptq-w4": ["--method", "gptq", "--bits", "4"],
    "gptq-w3": ["--method", "gptq", "--bits", "3"],
    "gptq-w2": ["--method", "gptq", "--bits", "2"],
    # bf16 models store bf16 scales: 2 + 16/64 = 2.25 bits, the budget CALDERA is compared at
    "gptq-w2-bf16": ["--method", "gptq", "--bits", "2", "--dtype", "bfloat16"],
    "gptq-w3-bf16": ["--method", "gptq", "--bits", "3", "--dtype", "bfloat16"],
    "awq-w4": ["--method", "awq", "--bits", "4"],
    "smoothquant-w8a8": ["--method", "smoothquant"],
    "sparsegpt-50": ["--method", "sparsegpt", "--sparsity", "0.5"],
    "sparsegpt-2:4": ["--method", "sparsegpt", "--pattern", "2:4"],
    "wanda-50": ["--method", "wanda", "--sparsity", "0.5"],
    "ria-50": ["--method", "ria", "--sparsity", "0.5"],
    "ria-2:4": ["--method", "ria", "--pattern", "2:4"],
    # `cola compress --method caldera` as a user runs it: the defaults (the 2.4 preset), no Hessian cache
    "caldera": ["--method", "caldera"],
}
# CALDERA as its authors built it (issue 21): E8P backbone, rotation, float16 components fine-tuned; each piece
# on and off, every setting spelled out. "{hessians}" is the shared Hessian cache.
_CALDERA = ["--method", "caldera", "--hadamard", "--lr_bits", "4", "--iters", "5", "--hessian_cache", "{hessians}"]
_FT = ["--finetune_rank", "4", "--finetune_steps", "16"]
_NO_FT = ["--finetune_rank", "0", "--finetune_steps", "0"]
RUNS |= {
    "e8p-only": [*_CALDERA, "--quantizer", "e8p", "--rank", "0"],
    "caldera-uniform-r16": [*_CALDERA, "--quantizer", "uniform", "--rank", "16", *_NO_FT],
    "caldera-e8p-r16": [*_CALDERA, "--quantizer", "e8p", "--rank", "16", *_NO_FT],
    "caldera-e8p-r24": [*_CALDERA, "--quantizer", "e8p", "--rank", "24", *_NO_FT],
    # rank 24 with 2 of its components fine-tuned: 2.39 bits/param, the most rank and fine-tuning 2.4 bits allow
    "caldera-e8p-r24-ft2": [*_CALDERA, "--quantizer", "e8p", "--rank", "24", "--finetune_rank", "2",
                            "--finetune_steps", "16"],
    "caldera-e8p-r32": [*_CALDERA, "--quantizer", "e8p", "--rank", "32", *_NO_FT],
    "caldera-e8p-r64": [*_CALDERA, "--quantizer", "e8p", "--rank", "64", *_NO_FT],
    "caldera-uniform-r16-ft": [*_CALDERA, "--quantizer", "uniform", "--rank", "16", *_FT],
    "caldera-e8p-r16-ft": [*_CALDERA, "--quantizer", "e8p", "--rank", "16", *_FT],
    "caldera-e8p-r16-ft-again": [*_CALDERA, "--quantizer", "e8p", "--rank", "16", *_FT],
    "caldera-e8p-r32-ft": [*_CALDERA, "--quantizer", "e8p", "--rank", "32", *_FT],
    "caldera-e8p-r64-ft": [*_CALDERA, "--quantizer", "e8p", "--rank", "64", *_FT],
    # the presets (`--preset`: the rank; a quarter of it in float16, fine-tuned), on the shared cache
    "caldera-2.1": ["--method", "caldera", "--preset", "2.1", "--hessian_cache", "{hessians}"],
    "caldera-2.2": ["--method", "caldera", "--preset", "2.2", "--hessian_cache", "{hessians}"],
}
# issue 22: LLM-Pruner at 20 % of the pruned blocks' parameters (blocks 4-27 of 30), without and with LoRA recovery
# on the calibration set; FlatQuant W4A4 at its default epochs, beside the same fake quantization untrained (RTN)
RUNS |= {
    "llm-pruner-20": ["--method", "llm-pruner", "--pruning_ratio", "0.2"],
    "llm-pruner-20-lora": ["--method", "llm-pruner", "--pruning_ratio", "0.2", "--recovery_steps", "16",
                           "--recovery_lr", "5e-4"],
    "flatquant-w4a4": ["--method", "flatquant", "--w_bits", "4", "--a_bits", "4"],
    "flatquant-w4a4-kv4": ["--method", "flatquant", "--w_bits", "4", "--a_bits", "4", "--kv_bits", "4"],
    "rtn-w4a4": ["--method", "flatquant", "--w_bits", "4", "--a_bits", "4", "--epochs", "0"],
}
NLL_TASKS = ("gsm8k_nll", "humaneval_nll")
EVAL_FILE = "benchmark_scores.json"  # beside each compressed model: its scores and the settings they were taken with


def curate_default(out: Path) -> Path:
    cmd = [str(REPO / ".venv" / "bin" / "cola"), "curate", "--output_dir", str(out), "--num_samples", "128",
           "--sequence_length", "512", "--candidates_per_source", "300", "--quiet",
           "--reference", f"commonsense={DATA / 'commonsenseqa' / 'validation.jsonl'}",
           "--datasets", str(DATA / "c4" / "c4_en_train_first1000.jsonl"), str(DATA / "gsm8k" / "train.jsonl"),
           str(DATA / "mbpp" / "mbpp_train_valid_prompt.jsonl"),
           str(DATA / "commonsense_llm_adapters" / "arc_challenge_train.parsed.jsonl")]
    subprocess.run(cmd, check=True)
    return out


def generate(model, tokenizer, prompt: str = "The capital of France is") -> str:
    """Greedy continuation: the reloaded model still generates (and how well)."""
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def nlls(model, tokenizer, limit: int) -> dict[str, float]:
    """Mean answer NLL (nats per token) of the math and code proxies on their first `limit` items."""
    from cola.evaluate import evaluate

    return {r.task: r.value for r in evaluate(model, tokenizer, list(NLL_TASKS), limit=limit, data_dir=DATA)}


def forward_speed(out: Path, tokens: int = 512, repeats: int = 3) -> dict[str, float]:
    """Tokens/s of one (1, tokens) forward (best of `repeats`) of the saved model: the dense Q + L R checkpoint,
    CalderaLinear with its dense weight cached, CalderaLinear computing from its factors."""
    import torch

    from cola.compress.api import load_compressed

    ids = torch.randint(0, 1000, (1, tokens), generator=torch.Generator().manual_seed(0))
    speeds = {}
    for label, options in (("dense", {"caldera_layers": False}), ("cached", {"caldera_forward": "cached"}),
                           ("factors", {"caldera_forward": "factors"})):
        model, _ = load_compressed(out, dtype="float32", **options)
        best = float("inf")
        with torch.no_grad():
            model(ids)  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                model(ids)
                best = min(best, time.perf_counter() - start)
        speeds[label] = tokens / best
        del model
    return speeds


def weights_figure(summary: dict) -> str:
    """What the saved weights hold, in one cell: sparsity, bits per parameter (with the activation and KV bits of a
    method that quantizes them) or, for structured pruning, the parameters removed from the pruned blocks."""
    total, details = summary["weights"]["total"], summary.get("details") or {}
    if "removed_share" in details:
        return f"-{100 * details['removed_share']['pruned_blocks']:.1f} % params"
    if summary["kind"] == "pruning":
        return f"{100 * total['sparsity']:.2f} % sparse"
    figure = f"{total['bits_per_parameter']:.3f} bits/param"
    if "activation_bits" in details:
        figure += f" A{details['activation_bits']} KV{details['kv_bits']}"
    return figure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=Path, help="a `cola curate` output directory (default: curate one)")
    parser.add_argument("--methods", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--work_dir", type=Path, default=REPO / "outputs" / "bench-compress")
    parser.add_argument("--window", type=int, default=512, help="perplexity window (tokens)")
    parser.add_argument("--max_windows", type=int, default=64, help="wikitext-2 windows scored (64 x 512 = 32k)")
    parser.add_argument("--skip_existing", action="store_true",
                        help="reuse models already compressed (and their scores, taken with the same settings)")
    parser.add_argument("--nll_limit", type=int, default=64, help="items of each NLL task scored")
    parser.add_argument("--speed", action="store_true", help="time the first CALDERA row's three forwards")
    args = parser.parse_args()
    print(machine_line())
    if not WIKITEXT.is_file():
        print(f"skipped: {WIKITEXT} not found (the shared data folder is needed)")
        return 0
    args.work_dir.mkdir(parents=True, exist_ok=True)
    calibration = args.calibration or curate_default(args.work_dir / "calibration")

    import torch

    from cola.compress.api import load_compressed
    from cola.evaluate import perplexity
    from cola.models import load_model

    torch.manual_seed(0)
    text = WIKITEXT.read_text(encoding="utf-8")
    rows = []
    model, tokenizer = load_model("embedded", dtype="float32", quiet=True)
    dense = perplexity(model, tokenizer, text, window=args.window, max_windows=args.max_windows)
    rows.append({"run": "dense", "seconds": 0.0, "peak_rss_mb": None, "figure": "fp32",
                 "ppl": dense.perplexity, **nlls(model, tokenizer, args.nll_limit),
                 "generated": generate(model, tokenizer)})
    del model
    for name in args.methods:
        out = args.work_dir / name
        summary_path = out / "compression_summary.json"
        if not (args.skip_existing and summary_path.is_file()):
            cmd = [str(REPO / ".venv" / "bin" / "cola"), "compress", "--model", "embedded",
                   "--calibration", str(calibration), "--output_dir", str(out), "--overwrite", "--quiet",
                   *[a.replace("{hessians}", str(args.work_dir / "hessians")) for a in RUNS[name]]]
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode:
                lines = done.stderr.strip().splitlines()
                rows.append({"run": name, "error": lines[-1] if lines else f"exit code {done.returncode}"})
                print(f"{name}: failed: {rows[-1]['error']}", file=sys.stderr)
                continue
            print(f"{name}: {wall:.0f} s wall", file=sys.stderr)
        summary = json.loads(summary_path.read_text())
        figure = weights_figure(summary)
        # a model reused with --skip_existing keeps its scores too, when they were taken with the same settings
        scored, settings = out / EVAL_FILE, {"window": args.window, "max_windows": args.max_windows,
                                             "nll_limit": args.nll_limit, "sha256": summary.get("outputs")}
        kept = json.loads(scored.read_text()) if args.skip_existing and scored.is_file() else {}
        if kept.get("settings") != settings:
            compressed, tok = load_compressed(out, dtype="float32")
            ppl = perplexity(compressed, tok, text, window=args.window, max_windows=args.max_windows)
            kept = {"settings": settings, "ppl": ppl.perplexity, **nlls(compressed, tok, args.nll_limit),
                    "generated": generate(compressed, tok)}
            scored.write_text(json.dumps(kept, indent=2) + "\n")
            del compressed
        rows.append({"run": name, "seconds": summary["seconds"], "peak_rss_mb": summary["peak_rss_mb"],
                     "figure": figure, **{k: v for k, v in kept.items() if k != "settings"},
                     "hessians": summary["details"].get("hessians", "")})
        print(f"{name}: {figure}, perplexity {kept['ppl']:.2f}", file=sys.stderr)
        (args.work_dir / "results.json").write_text(json.dumps(rows, indent=2) + "\n")  # partial results survive
    print(f"\nSmolLM2-135M, calibration {calibration} ; wikitext-2 test perplexity over "
          f"{dense.windows} x {args.window} tokens ({dense.tokens} scored)")
    print(f"| {'run':24} | {'compress s':>10} | {'peak RSS MB':>11} | {'weights':26} | {'wikitext-2 ppl':>14} | "
          f"{'gsm8k_nll':>9} | {'humaneval_nll':>13} | Hessians")
    print(f"|{'-' * 26}|{'-' * 12}|{'-' * 13}|{'-' * 28}|{'-' * 16}|{'-' * 11}|{'-' * 15}|{'-' * 10}")
    for row in rows:
        if "error" in row:
            print(f"| {row['run']:24} | failed: {row['error'][:80]}")
            continue
        rss = f"{row['peak_rss_mb']:.0f}" if row["peak_rss_mb"] else "-"
        print(f"| {row['run']:24} | {row['seconds']:10.1f} | {rss:>11} | {row['figure']:26} | {row['ppl']:14.2f} | "
              f"{row['gsm8k_nll']:9.4f} | {row['humaneval_nll']:13.4f} | {row.get('hessians', '')}")
    caldera = [r["run"] for r in rows if r["run"].startswith("caldera") and "error" not in r]
    if args.speed and caldera:
        speeds = forward_speed(args.work_dir / caldera[0])
        print(f"\nforward of 1 x 512 tokens, {caldera[0]} (tokens/s, best of 3): "
              + ", ".join(f"{k} {v:.0f}" for k, v in speeds.items()))
    print("\ngreedy continuations of 'The capital of France is' after reloading each saved model:")
    for row in rows:
        if "generated" in row:
            print(f"  {row['run']:18} {row['generated']!r}")
    (args.work_dir / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
