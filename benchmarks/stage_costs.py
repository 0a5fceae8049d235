"""What Stage 1 and Stage 2 cost next to Stage 3, on the demo and on a ~2,000-candidate pool, with SmolLM2.

Runs the real `cola curate` pipeline (Python API) twice and prints seconds per stage, documents per second,
and each stage's share of the curation time (model load excluded). The issue's target: Stage 2 without
reasoning generation stays under 10 % of the total.

Run from the repository root: `.venv/bin/python benchmarks/stage_costs.py` (needs ../shared/data for the
large pool; the demo pool is the embedded one).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cola.api import COLA
from cola.config import CurateConfig, SelectionConfig
from cola.models import load_model

from machine import machine_line

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LARGE = ("gsm8k/train.jsonl", "c4/c4_en_train_first1000.jsonl", "mbpp/mbpp_train_valid_prompt.jsonl",
         "commonsense_llm_adapters/arc_challenge_train.parsed.jsonl")
STAGES = (("stage 1 (probes + coverage + quotas)", ("load_references", "stage1_mixture")),
          ("stage 2 (format, filters, packing)", ("stage2_process",)),
          ("stage 3 (activations + k-means)", ("stage3_extract", "stage3_cluster")))


def run(name: str, config: CurateConfig, model, tokenizer) -> None:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        COLA.from_config(config, model=model, tokenizer=tokenizer, output_dir=out, quiet=True).run(
            config.num_samples, config.sequence_length)
        wall = time.perf_counter() - start
        manifest = json.loads((Path(out) / "manifest.json").read_text())
    timings, docs = manifest["timings"], manifest["stage2"]["filters"]["before"]
    print(f"\n{name}: {docs} documents -> {manifest['diagnostics']['candidates_per_source']} windows of "
          f"{config.sequence_length} tokens -> {config.num_samples} samples; curation {wall:.1f} s")
    print(f"  {'stage':40} {'seconds':>8} {'share':>7} {'documents/s':>12}")
    for label, keys in STAGES:
        seconds = sum(timings.get(k, 0.0) for k in keys)
        print(f"  {label:40} {seconds:8.2f} {seconds / wall:7.1%} {docs / seconds if seconds else 0:12.0f}")
    print(f"  {'loading sources':40} {timings['load_sources']:8.2f} {timings['load_sources'] / wall:7.1%}")
    share = timings["stage2_process"] / wall
    print(f"  target: stage 2 < 10 % of curation time: {'met' if share < 0.10 else 'not met'} ({share:.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per_source", type=int, default=500)
    args = parser.parse_args()
    print(machine_line())
    model, tokenizer = load_model("embedded", quiet=True)
    full = {"stage1": True, "selection": SelectionConfig(method="activations")}  # every stage runs: each one's cost
    run("demo pool (embedded, `make demo`'s sizes)", CurateConfig(num_samples=32, sequence_length=256,
        candidates_per_source=128, **full), model, tokenizer)
    if not all((DATA / f).is_file() for f in LARGE):
        print(f"\nlarge pool skipped: {DATA} not found")
        return
    references = (("commonsense", str(DATA / "commonsenseqa/validation.jsonl")),)
    run(f"large pool ({len(LARGE)} sources x up to {args.per_source})", CurateConfig(
        datasets=tuple(str(DATA / f) for f in LARGE), num_samples=128, sequence_length=512,
        candidates_per_source=args.per_source, references=references, **full), model, tokenizer)


if __name__ == "__main__":
    main()
