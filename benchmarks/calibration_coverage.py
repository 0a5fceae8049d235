"""How close does each calibration set come to the texts a model is evaluated on, in the model's activation space?

For every evaluation text (wikitext-2 windows, gsm8k test and HumanEval prompt + reference solution) this
prints the distance to its nearest calibration sample, using the features Stage 3 clusters on (mean-pooled
activations of every decoder layer, normalised, randomly projected to 64 dimensions, one projection for all).
A calibration set far from a task's texts gives the compression method no activations like the task's.

    python benchmarks/calibration_coverage.py --data_dir ../shared/data \
        --calibration random_c4=../exp/smollm2_cpu/calibration/random_c4/seed0 \
                      cola=../exp/smollm2_cpu/calibration/cola/seed0
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from cola.activations import extract_features
from cola.cluster import nearest_selected_distance
from cola.compress.calibration import load_calibration
from cola.errors import ColaError
from cola.evaluate.tasks import load_items, parse_task, read_text
from cola.models import load_model

from machine import machine_line


def evaluation_texts(tokenizer, data_dir: str, items: int, window: int) -> dict[str, list[np.ndarray]]:
    """task -> token ids of its first `items` texts (wikitext-2: consecutive windows of `window` tokens)."""
    wiki = tokenizer(read_text(parse_task("wikitext2", data_dir).path), verbose=False)["input_ids"]
    texts = {"wikitext2": [np.asarray(wiki[i * window:(i + 1) * window]) for i in range(items)]}
    for task in ("gsm8k", "humaneval"):
        found, _ = load_items(parse_task(task, data_dir), items)
        texts[task] = [np.asarray(tokenizer(x.prompt + x.answer, verbose=False)["input_ids"][:window])
                       for x in found]
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--calibration", nargs="+", required=True, metavar="LABEL=DIR")
    parser.add_argument("--items", type=int, default=64, help="texts per evaluation task")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--projection_dim", type=int, default=64)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    print(machine_line())
    try:
        sets = dict(spec.split("=", 1) for spec in args.calibration)
    except ValueError:
        print(f"calibration_coverage: give calibration sets as LABEL=DIR, got {args.calibration}", file=sys.stderr)
        return 2
    try:
        model, tokenizer = load_model(args.model, dtype=args.dtype, quiet=args.quiet)
        calibration = {label: [np.asarray(x) for x in load_calibration(path, tokenizer).input_ids]
                       for label, path in sets.items()}
        evaluation = evaluation_texts(tokenizer, args.data_dir, args.items, args.window)
    except ColaError as exc:
        print(f"calibration_coverage: {exc}", file=sys.stderr)
        return 2
    groups = {**{f"calibration:{k}": v for k, v in calibration.items()}, **evaluation}
    ids = [x for texts in groups.values() for x in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    features = extract_features(model, ids, layers=None, projection_dim=args.projection_dim, seed=0, batch_size=16,
                                batch_tokens=4096, pad_token_id=pad, quiet=args.quiet).features
    rows, start = {}, 0
    for name, texts in groups.items():
        rows[name] = np.arange(start, start + len(texts))
        start += len(texts)
    print(f"mean distance from each evaluation text to its nearest calibration sample ({args.projection_dim}-d "
          f"activation features; lower = the set covers the task better); {args.items} texts per task")
    print(f"{'calibration set':24}" + "".join(f"{task:>12}" for task in evaluation))
    for label in calibration:
        chosen = rows[f"calibration:{label}"]
        distance = nearest_selected_distance(features, chosen)
        print(f"{label:24}" + "".join(f"{distance[rows[task]].mean():12.4f}" for task in evaluation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
