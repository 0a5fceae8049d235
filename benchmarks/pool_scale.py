"""How `cola curate`'s peak memory and wall time grow with the candidate pool (issue 23: flat-memory pools).

For each pool size N (default 1k, 10k, 100k candidates) this runs a real `cola curate` in a child process on a
synthetic local JSONL file of N distinct documents, each one sample long, and prints the child's peak resident
memory (VmHWM) and wall time, then the ratios the issue's target reads: peak RSS at 100k over 10k (target
<= 1.10) and seconds per 1,000 candidates (linear time: about constant).

The model is a tiny random Llama (2 layers, hidden 64) with SmolLM2's tokenizer, built here and saved to a
temporary folder, so the model's own cost stays small and what grows with N is the pipeline's: Stage 2's
format, filters (exact and MinHash near-duplicate dedup across the whole pool) and packing, Stage 1's
scoring (the source has no capability label: Stage 1 scores it against the embedded reference sets), Stage 3's
activation extraction and k-means medoids, and the export of the pool table. num_samples is the same at every N.
Extraction runs eager (`--compile_blocks off`): compiling is a fixed cost of its own, not the pipeline's growth.

Run from the repository root:
  .venv/bin/python benchmarks/pool_scale.py [--sizes 1000,10000,100000] [--sequence_length 64]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_line

WORDS = ("alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river mountain forest ocean city "
         "engine signal matrix vector tensor prime number proof lemma theorem function return value string list "
         "window garden market winter summer autumn spring morning evening light shadow stone metal glass paper "
         "north south east west red green blue yellow black white small large quick slow early late").split()


def write_pool(path: Path, count: int, seed: int, words: int) -> None:
    """`count` distinct documents of `words` random words (plus a unique number, so none is a near duplicate)."""
    rng = random.Random(seed)
    with path.open("w") as stream:
        for index in range(count):
            text = " ".join(rng.choice(WORDS) for _ in range(words))
            stream.write(json.dumps({"text": f"Document {index}: {text}."}) + "\n")


def save_tiny_model(folder: Path) -> None:
    """A random 2-layer Llama with SmolLM2-135M's tokenizer, saved as a plain checkpoint."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cola.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("embedded", quiet=True))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def run_one(pool: Path, model: Path, out: Path, args: argparse.Namespace, count: int) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one `cola curate` child over `pool`."""
    report = out.parent / f"{out.name}.status"
    # the child's own high-water mark (VmHWM), read as it exits: ru_maxrss of a child counts the parent's memory
    # at the fork too (Linux keeps the larger), and the parent holds torch
    wrapper = ("import atexit, sys; from pathlib import Path; "
               f"atexit.register(lambda: Path({str(report)!r}).write_text(Path('/proc/self/status').read_text())); "
               "from cola.cli import main; sys.argv = sys.argv[1:]; sys.exit(main())")
    command = [sys.executable, "-c", wrapper, "cola", "curate", "--model", str(model), "--datasets", str(pool),
               "--stage1", "--selection_method", "activations", "--batch_size", "64", "--batch_tokens", "8192",
               "--candidates_per_source", str(count), "--num_samples", str(args.num_samples),
               "--sequence_length", str(args.sequence_length), "--length", "truncate", "--dtype", "float32",
               "--compile_blocks", "off",
               "--output_dir", str(out), "--quiet"]
    start = time.perf_counter()
    status = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}).returncode
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"cola curate failed at {count} candidates (status {status})")
    line = next(line for line in report.read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024, seconds  # kB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="pool sizes (candidates), comma-separated")
    parser.add_argument("--sequence_length", type=int, default=64)
    parser.add_argument("--words", type=int, default=30, help="words per synthetic document")
    parser.add_argument("--num_samples", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(machine_line())
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        save_tiny_model(root / "model")
        for count in sizes:
            pool = root / f"pool{count}.jsonl"
            write_pool(pool, count, args.seed, args.words)
            mib, seconds = run_one(pool, root / "model", root / f"out{count}", args, count)
            candidates = json.loads((root / f"out{count}" / "manifest.json").read_text())["stage2"]["filters"]["after"]
            rows.append((count, candidates, mib, seconds))
            print(f"{count:>8} documents  {candidates:>8} after filters  peak RSS {mib:8.1f} MiB  "
                  f"{seconds:8.1f} s  {1000 * seconds / count:7.2f} s per 1k", flush=True)
    by_size = {count: (mib, seconds) for count, _, mib, seconds in rows}
    for small, large in ((10_000, 100_000), (1_000, 10_000)):
        if small in by_size and large in by_size:
            print(f"{small // 1000}k -> {large // 1000}k: peak RSS x{by_size[large][0] / by_size[small][0]:.3f} "
                  f"(target <= 1.10), wall time x{by_size[large][1] / by_size[small][1]:.2f} (linear: x10)")


if __name__ == "__main__":
    main()
