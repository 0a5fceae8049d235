"""Does the calibration-quality score (`cola score`) predict measured retention? Spearman correlation per
compression method and capability, over the finished cells of an experiment work directory.

For every calibration set of the work directory (`calibration/<strategy>/seed<k>/`, see
cola.experiment.store.WorkDir) whose cells finished, both scores (`cola.score`: the H-match error and the
activation-coverage distance) are computed against one reference set per capability, with one model load and
one forward pass per set; each cell's retention per capability comes from its record and dense.json
(`cola.evaluate.retention`). Printed per method and capability: n (cells), Spearman's rho between -score and
retention (positive: a better score goes with more retention) and its two-sided p-value.
Where the grid sweeps set sizes (variants' num_samples), each method and capability gets one row over every
size ("all": a smaller set scores and keeps worse, so size alone drives much of that rho) and one per size
(strategies of one size ranked against each other: the question selection asks).

Default references (from --data_dir; texts that the evaluation does not score):
  general      wikitext-2 validation paragraphs (the folder has no train split; the evaluation reads test)
  commonsense  hellaswag validation contexts with their gold ending, items after the first --skip_hellaswag
               (the evaluation scores the first 500)
  math         gsm8k train, answers without the calculator annotations <<...>> (as gsm8k_plain)
  code         mbpp prompts with their code (HumanEval is the evaluation)

    python benchmarks/score_validation.py ../exp/selection_smollm2 --data_dir ../shared/data \
        [--references math=FILE ...] [--output scores.json] [--results OTHER_RUN/results.csv ...]

--results adds the retention of cells that ran elsewhere (another run's results.csv, `cola experiment
--include_results`): a set curated in this work directory is correlated with every cell of its strategy and
seed, wherever the cell ran.

Every curated set is scored (finished cells or not); the correlations use the sets whose cells finished.
--output keeps every set's score (a rerun scores only sets not in it yet); --follow MINUTES keeps scoring sets
as a running experiment curates them, with one model load and one reference extraction.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from machine import machine_line

from cola.errors import ColaError
from cola.atomic import read_json, write_json
from cola.experiment.report import COLUMNS
from cola.experiment.store import WorkDir

if TYPE_CHECKING:
    import pandas as pd

FIGURES = ("h_match_error", "coverage_distance")


def default_references(data_dir: Path, folder: Path, skip_hellaswag: int) -> dict[str, str]:
    """capability -> a JSON-lines file written into `folder` from the shared data (see the module docstring)."""
    def write(name: str, records: list[dict[str, str]]) -> str:
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        return str(path)

    wiki = (data_dir / "wikitext2" / "wiki.valid.tokens.txt").read_text(encoding="utf-8").splitlines()
    general = [{"text": line.strip()} for line in wiki if len(line) > 200 and not line.lstrip().startswith("=")]
    lines = (data_dir / "hellaswag" / "hellaswag_val_full_preprocessed.jsonl").read_text().splitlines()
    hellaswag = [json.loads(line) for line in lines[skip_hellaswag:]]
    commonsense = [{"text": f"{r['query']} {r['endings'][int(r['label'])]}"} for r in hellaswag]
    gsm8k = [json.loads(line) for line in (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()]
    math = [{"question": r["question"], "answer": re.sub(r"<<[^>]*>>", "", r["answer"])} for r in gsm8k]
    return {"general": write("wikitext2_valid", general), "commonsense": write("hellaswag_unscored", commonsense),
            "math": write("gsm8k_train_plain", math),
            "code": str(data_dir / "mbpp" / "mbpp_train_valid_prompt.jsonl")}


def cell_retention(work_dir: Path, results: list[Path]) -> pd.DataFrame:
    """(strategy, method, seed, capability, retention) of every finished cell: the work directory's records
    against its dense.json, plus the cells of `results` files it lacks (`included_rows`), as the experiment's
    report counts them (`capability_retention`)."""
    import pandas as pd

    from cola.experiment.report import included_rows, result_rows
    from cola.experiment.tables import capability_retention

    records = [read_json(path) for path in sorted((work_dir / "cells").glob("*.json"))]
    dense = read_json(work_dir / "dense.json")
    rows = result_rows([r for r in records if r], dense if dense and dense.get("status") == "ok" else None)
    frame = pd.DataFrame(rows + included_rows(results, rows), columns=COLUMNS)
    frame["seed"] = pd.to_numeric(frame.seed, errors="coerce")
    frame["retention"] = pd.to_numeric(frame.retention, errors="coerce")
    ok = frame[(frame.status == "ok") & (frame.strategy != "dense") & frame.retention.notna()]
    return capability_retention(ok.astype({"seed": int}))


def spearman(scores: list[float], retentions: list[float]) -> tuple[float, float]:
    """(rho, two-sided p) of -score against retention; NaN when either side is constant or n < 3."""
    from scipy.stats import spearmanr

    if len(scores) < 3 or len(set(scores)) < 2 or len(set(retentions)) < 2:
        return float("nan"), float("nan")
    found = spearmanr(-np.asarray(scores), np.asarray(retentions))
    return float(found.statistic), float(found.pvalue)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--data_dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--references", nargs="*", default=[], metavar="CAPABILITY=SOURCE",
                        help="replace a default reference set (see the module docstring)")
    parser.add_argument("--reference_size", type=int, default=128)
    parser.add_argument("--skip_hellaswag", type=int, default=500, help="hellaswag items the evaluation scores")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--output", type=Path, help="JSON file of every set's score, reused on a rerun")
    parser.add_argument("--results", nargs="+", default=[], type=Path, metavar="RESULTS.csv",
                        help="other runs' results.csv: the retention of cells this work directory lacks")
    parser.add_argument("--sequence_length", type=int, default=512, help="reference texts are cut to this length")
    parser.add_argument("--follow", type=float, default=0.0, metavar="MINUTES",
                        help="keep scoring sets as the experiment curates them for this long, then correlate")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every cell's retention and scores")
    args = parser.parse_args(argv)
    print(machine_line())
    try:
        return _validate(args)
    except ColaError as exc:
        print(f"score_validation: error: {exc}", file=sys.stderr)
        return 2


def _validate(args: argparse.Namespace) -> int:
    from cola.config import SelectionConfig
    from cola.score import score_settings

    selection = SelectionConfig()
    layout = WorkDir(None, args.work_dir)  # type: ignore[arg-type]  # only its paths are used
    cached = (read_json(args.output) or {}) if args.output else {}
    deadline = time.monotonic() + 60 * args.follow
    with tempfile.TemporaryDirectory(prefix="score-references-") as folder:
        given = dict(spec.split("=", 1) for spec in args.references)
        references = {**default_references(args.data_dir, Path(folder), args.skip_hellaswag), **given}
        # keyed by the references' contents: the generated ones sit in a fresh temporary folder every run
        contents = {name: hashlib.sha256(Path(path).read_bytes()).hexdigest() for name, path in references.items()}
        key = json.dumps({"references": contents, "size": args.reference_size, "model": args.model,
                          "dtype": args.dtype, "settings": score_settings(selection)}, sort_keys=True)
        if cached.get("key") != key:
            cached = {"key": key, "sets": {}}
        scorer = _Scorer(args, references, selection) if args.follow else None  # ready when the first set is
        while True:
            # every curated set, finished cells or not (a set is whole once its manifest is there)
            todo = [f"{m.parent.parent.name}/{m.parent.name}" for m in sorted(layout.path("calibration").glob(
                "*/seed*/manifest.json")) if f"{m.parent.parent.name}/{m.parent.name}" not in cached["sets"]]
            for name in todo:
                scorer = scorer or _Scorer(args, references, selection)
                cached["sets"][name] = scorer.score(layout.path("calibration", name))
                if args.output:
                    write_json(args.output, cached)
            if time.monotonic() >= deadline:
                break
            time.sleep(min(120.0, max(deadline - time.monotonic(), 0.0)))
    kept = cell_retention(args.work_dir, args.results)
    if kept.empty:
        raise ColaError(f"{args.work_dir} (with --results) has no finished cell with a dense result yet")
    _print_correlations(kept, cached["sets"], args.verbose, set_sizes(args.work_dir))
    return 0


class _Scorer:
    """The model and the reference sets' extractions, made once; `score` takes one calibration set."""

    def __init__(self, args: argparse.Namespace, references: dict[str, str], selection: Any) -> None:
        from cola.models import load_model
        from cola.score import embed_for_score, read_references, reference_token_ids

        start = time.perf_counter()
        self.quiet, self.selection = args.quiet, selection
        self.model, self.tokenizer = load_model(args.model, dtype=args.dtype, quiet=args.quiet)
        self.pad = self.tokenizer.pad_token_id or 0
        probes = reference_token_ids(read_references(references, reference_size=args.reference_size),
                                     self.tokenizer, args.sequence_length)
        self.references = {cap: (references[cap], embed_for_score(self.model, ids, selection, pad_token_id=self.pad,
                                                                   quiet=args.quiet)) for cap, ids in probes.items()}
        print(f"references: {', '.join(f'{c} {len(ids)} texts' for c, ids in probes.items())} "
              f"({time.perf_counter() - start:.0f} s with the model load)", flush=True)

    def score(self, path: Path) -> dict[str, dict[str, float]]:
        from cola.compress.calibration import load_calibration
        from cola.score import embed_for_score, score_extractions

        start = time.perf_counter()
        calibration = load_calibration(path, self.tokenizer)
        found = embed_for_score(self.model, [x.numpy() for x in calibration.input_ids], self.selection,
                                pad_token_id=self.pad, quiet=self.quiet)
        scores = score_extractions(found, self.references)
        print(f"scored {path.parent.name}/{path.name} ({len(calibration)} samples) in "
              f"{time.perf_counter() - start:.0f} s: " + ", ".join(
                  f"{c} {s.h_match_error:.4f}/{s.coverage_distance:.4f}" for c, s in scores.items()), flush=True)
        return {cap: {f: getattr(s, f) for f in FIGURES} for cap, s in scores.items()}


def set_sizes(work_dir: Path) -> dict[str, int]:
    """strategy or variant label -> its calibration set size, from the grid's experiment_config.json."""
    config = read_json(work_dir / "experiment_config.json") or {}
    default = (config.get("calibration") or {}).get("num_samples")
    sizes = {name: default for name in config.get("strategies") or ()}
    for variant in config.get("variants") or ():
        sizes[variant["label"]] = variant.get("num_samples") or default
    return sizes


def _print_correlations(kept: pd.DataFrame, scores: dict[str, Any], verbose: bool, sizes: dict[str, int]) -> None:
    rows = []  # (method, capability, size, strategy, seed, retention, {figure: score})
    for cell in kept.itertuples():
        score = scores.get(f"{cell.strategy}/seed{cell.seed}", {}).get(cell.capability)
        if score is not None:
            rows.append((cell.method, cell.capability, sizes.get(cell.strategy), cell.strategy, cell.seed,
                         cell.retention, score))
    print(f"\nSpearman rho(-score, retention) per method and capability over finished cells "
          f"({len(scores)} calibration set(s) scored); positive = a better score goes with more retention. "
          "size 'all' pools every set size (size alone then drives much of rho); each size's own row ranks "
          "strategies of one size")
    print(f"{'method':12} {'capability':12} {'size':>5} {'n':>3}  " + "  ".join(f"{f:>24}" for f in FIGURES))
    groups = sorted({(r[0], r[1]) for r in rows})
    all_sizes = sorted({r[2] for r in rows if r[2] is not None})
    for method, capability in groups:
        for size in ["all", *all_sizes] if len(all_sizes) > 1 else ["all"]:
            group = [r for r in rows if r[0] == method and r[1] == capability and size in ("all", r[2])]
            cells_ = []
            for figure in FIGURES:
                rho, p = spearman([r[6][figure] for r in group], [r[5] for r in group])
                cells_.append(f"rho {rho:+.2f} (p {p:.2f})".rjust(24))
            print(f"{method:12} {capability:12} {size!s:>5} {len(group):3d}  " + "  ".join(cells_))
            for *_, strategy, seed, value, score in sorted(group, key=lambda r: r[5]) if verbose else ():
                print(f"    {strategy}/seed{seed}: retention {value:.4f}, " + ", ".join(
                    f"{f} {score[f]:.4f}" for f in FIGURES))


if __name__ == "__main__":
    sys.exit(main())
