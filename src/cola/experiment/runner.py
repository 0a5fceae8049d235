"""`cola experiment`: selection strategies × compression methods × seeds, end to end and resumable.

Work directory layout (everything a cell needs is found again from disk, so a stopped grid resumes):

    calibration/<strategy>/seed<k>/     the curated set (shared by every method of that strategy and seed)
    models/<strategy>/<method>/seed<k>/ the compressed model, removed once evaluated unless keep_models
    cells/<strategy>__<method>__seed<k>.json   one cell's record: status, error, figures, spectrum
    dense.json                          the uncompressed model's evaluation and spectrum
    results.csv · report.md · plots/    rebuilt after every cell from the records

A record with status "ok" is never run again; a failed cell keeps its error in its record and is tried
again on the next run. With `isolate_cells` every cell runs in a fresh process, so a crash (or memory
blow-up) in one cell is recorded as that cell's failure and the grid goes on.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola.errors import ColaError
from cola.experiment.config import ExperimentConfig, MethodSettings

log = logging.getLogger(__name__)

DENSE_FILE = "dense.json"
CURATE_TIME_FILE = "experiment_curate.json"


@dataclass(frozen=True)
class Cell:
    strategy: str
    method: str      # the method label of the config (e.g. wanda50)
    seed: int

    @property
    def key(self) -> str:
        return f"{self.strategy}__{self.method}__seed{self.seed}"


def grid(config: ExperimentConfig) -> list[Cell]:
    """Seeds outermost: a stopped grid has every strategy and method at the first seed before any second seed."""
    return [Cell(strategy, run.label, seed) for seed in config.seeds for strategy in config.strategies
            for run in config.methods]


def write_json(path: Path, data: Any) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                     encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    os.replace(fh.name, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


class Experiment:
    """One grid in one work directory."""

    def __init__(self, config: ExperimentConfig, work_dir: str | Path, *, quiet: bool = True) -> None:
        self.config = config
        self.work_dir = Path(work_dir)
        self.quiet = quiet

    # ------------------------------------------------------------------------------------------- paths
    def calibration_dir(self, strategy: str, seed: int) -> Path:
        return self.work_dir / "calibration" / strategy / f"seed{seed}"

    def model_dir(self, cell: Cell) -> Path:
        return self.work_dir / "models" / cell.strategy / cell.method / f"seed{cell.seed}"

    def cell_file(self, cell: Cell) -> Path:
        return self.work_dir / "cells" / f"{cell.key}.json"

    def method(self, label: str) -> MethodSettings:
        return next(run for run in self.config.methods if run.label == label)

    def records(self) -> list[dict[str, Any]]:
        """Every cell record on disk, in grid order (cells not run yet are absent). A record written before
        cells recorded their set's size gets it from the calibration set's manifest, if that is still there."""
        records = []
        for cell in grid(self.config):
            record = read_json(self.cell_file(cell))
            if record is None:
                continue
            if record.get("status") == "ok" and "calibration_tokens" not in record:
                record["calibration_tokens"] = calibration_tokens(self.calibration_dir(cell.strategy, cell.seed))
            records.append(record)
        return records

    # --------------------------------------------------------------------------------------------- run
    def run(self, *, on_cell: Callable[[Cell, dict[str, Any]], None] | None = None,
            only: Callable[[Cell], bool] | None = None) -> dict[str, int]:
        """Run every unfinished cell (of those `only` accepts); returns counts of cells done before, run now,
        and failed now."""
        from cola.export import ensure_writable

        ensure_writable(self.work_dir)
        write_json(self.work_dir / "experiment_config.json", self.config.as_dict())
        counts = {"skipped": 0, "ok": 0, "failed": 0}
        if (read_json(self.work_dir / DENSE_FILE) or {}).get("status") != "ok":
            record = self._execute(_dense_job, self.work_dir / DENSE_FILE, {"status": "failed"})
            if record.get("status") != "ok":
                raise ColaError(f"evaluating the dense model failed: {record.get('error')}")
        for cell in grid(self.config):
            if only is not None and not only(cell):
                continue
            previous = read_json(self.cell_file(cell))
            if previous and previous.get("status") == "ok":
                counts["skipped"] += 1
                continue
            log.info("cell %s", cell.key)
            base = {"strategy": cell.strategy, "method": cell.method, "seed": cell.seed, "status": "failed"}
            record = self._execute(_cell_job, self.cell_file(cell), base, cell)
            counts[record["status"]] += 1
            if on_cell:
                on_cell(cell, record)
        return counts

    def _execute(self, job: Callable[..., None], record_file: Path, base: dict[str, Any], *args: Any) -> dict:
        """Run `job` (which writes `record_file` itself on success), isolated if configured; a job that
        raises or dies leaves a failed record with its error instead."""
        record_file.unlink(missing_ok=True)
        start = time.perf_counter()
        if self.config.isolate_cells:
            context = multiprocessing.get_context("spawn")
            errors = context.Queue()
            process = context.Process(target=_child, args=(job, errors, self.config, self.work_dir, self.quiet,
                                                           *args))
            process.start()
            process.join()
            error = errors.get() if not errors.empty() else None
            if error is None and process.exitcode != 0:
                error = f"the cell's process died with exit code {process.exitcode}"
        else:
            error = _capture(job, self.config, self.work_dir, self.quiet, *args)
        record = read_json(record_file)
        if record is None or error is not None:
            record = {**base, "error": error or "the job wrote no record",
                      "seconds": round(time.perf_counter() - start, 1)}
            write_json(record_file, record)
            log.warning("%s failed: %s", record_file.stem, record["error"])
        return record


def _capture(job: Callable[..., None], *args: Any) -> str | None:
    """None on success, else the error in one line (a traceback is logged for unexpected ones)."""
    try:
        job(*args)
        return None
    except ColaError as exc:
        return str(exc)
    except Exception as exc:  # an unexpected failure is still this cell's alone; keep its cause
        log.debug("%s", traceback.format_exc())
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _child(job: Callable[..., None], errors: Any, *args: Any) -> None:
    """Entry point of an isolated cell's process."""
    logging.basicConfig(level=logging.WARNING, format="cola: %(message)s", force=True)
    error = _capture(job, *args)
    if error is not None:
        errors.put(error)


# ------------------------------------------------------------------------------------------------ jobs
def _load_dense(config: ExperimentConfig, quiet: bool) -> tuple[Any, Any]:
    from cola.models import load_model

    return load_model(config.model, device=config.device, dtype=config.dtype, quiet=quiet)


def _evaluate(model: Any, tokenizer: Any, config: ExperimentConfig, quiet: bool) -> list[dict[str, Any]]:
    from cola.evaluate import evaluate

    settings = config.evaluation
    results = evaluate(model, tokenizer, list(settings.tasks), limit=dict(settings.limits) or None,
                       data_dir=config.data_dir, window=settings.window, quiet=quiet)
    return [r.as_dict() for r in results]


def _dense_job(config: ExperimentConfig, work_dir: Path, quiet: bool) -> None:
    from cola.experiment.spectrum import ffn_spectrum

    start = time.perf_counter()
    model, tokenizer = _load_dense(config, quiet)
    results = _evaluate(model, tokenizer, config, quiet)
    name, values = ffn_spectrum(model, config.plots.spectrum_module)
    write_json(work_dir / DENSE_FILE, {"status": "ok", "model": config.model, "results": results,
                                       "spectrum": {"module": name, "singular_values": values},
                                       "seconds": round(time.perf_counter() - start, 1)})


def calibration_tokens(path: Path) -> int | None:
    """Tokens in the curated set at `path`, as its manifest counts them (None without a manifest); for cell
    records written before cells took the count from their compression summary."""
    from cola.export import MANIFEST_FILE

    manifest = read_json(path / MANIFEST_FILE)
    return None if manifest is None else manifest.get("sample_tokens")


def _ensure_calibration(experiment: Experiment, cell: Cell, model: Any, tokenizer: Any) -> tuple[Path, float]:
    """The strategy's curated set for this seed: made once, reused by every method; (path, curate seconds)."""
    from cola.export import MANIFEST_FILE
    from cola.strategies import curate_strategy

    config, path = experiment.config, experiment.calibration_dir(cell.strategy, cell.seed)
    timing = read_json(path / CURATE_TIME_FILE)
    if (path / MANIFEST_FILE).is_file() and timing is not None:
        return path, timing["seconds"]
    start = time.perf_counter()
    settings = config.calibration
    strategy, variant_settings, generation = config.recipe(cell.strategy)
    curate_strategy(strategy, model=model, tokenizer=tokenizer, datasets=list(settings.datasets),
                    num_samples=settings.num_samples, sequence_length=settings.sequence_length, seed=cell.seed,
                    output_dir=path, random_source=settings.random_source,
                    candidates_per_source=settings.candidates_per_source,
                    references=tuple(settings.references.items()), quiet=experiment.quiet,
                    generation=generation or None, label=cell.strategy, **variant_settings)
    seconds = round(time.perf_counter() - start, 1)
    write_json(path / CURATE_TIME_FILE, {"seconds": seconds})
    return path, seconds


def _cell_job(config: ExperimentConfig, work_dir: Path, quiet: bool, cell: Cell) -> None:
    """Curate (if not yet), compress, evaluate, measure the FFN spectrum, write the record."""
    from cola.compress.api import compress, load_compressed
    from cola.experiment.spectrum import ffn_spectrum

    experiment = Experiment(config, work_dir, quiet=quiet)
    run = experiment.method(cell.method)
    model, tokenizer = _load_dense(config, quiet)
    calibration, curate_seconds = _ensure_calibration(experiment, cell, model, tokenizer)
    out = experiment.model_dir(cell)
    summary = compress(model, calibration, run.method, out, tokenizer=tokenizer, overwrite=True, quiet=quiet,
                       dtype=config.dtype, device=config.device, **run.options)
    del model
    gc.collect()
    start = time.perf_counter()
    # CALDERA is evaluated from its dense Q + LR checkpoint: the same function as CalderaLinear, 9x faster
    model, tokenizer = load_compressed(out, dtype=config.dtype, device=config.device, quiet=quiet,
                                       caldera_layers=False)
    results = _evaluate(model, tokenizer, config, quiet)
    eval_seconds = time.perf_counter() - start
    name, values = ffn_spectrum(model, config.plots.spectrum_module)
    total = summary["weights"]["total"]
    write_json(experiment.cell_file(cell), {
        "strategy": cell.strategy, "method": cell.method, "seed": cell.seed, "status": "ok",
        "compress_method": run.method, "options": run.options,
        "bits_per_parameter": total.get("bits_per_parameter"), "sparsity": total.get("sparsity"),
        "calibration_tokens": summary["calibration"]["num_tokens"],
        "curate_seconds": curate_seconds, "compress_seconds": round(summary["seconds"], 1),
        "eval_seconds": round(eval_seconds, 1), "results": results,
        "spectrum": {"module": name, "singular_values": values}})
    if not config.keep_models:
        shutil.rmtree(out, ignore_errors=True)


def subset(config: ExperimentConfig, *, strategies: list[str] | None = None, methods: list[str] | None = None,
           seeds: list[int] | None = None) -> Callable[[Cell], bool]:
    """A filter for part of the grid (e.g. the baseline and cola first); names must be in the config."""
    from cola.errors import unknown_choice

    chosen = {"strategy": strategies, "method": methods, "seed": seeds}
    valid = {"strategy": list(config.strategies), "method": [m.label for m in config.methods],
             "seed": list(config.seeds)}
    for kind, values in chosen.items():
        for value in values or ():
            if value not in valid[kind]:
                raise unknown_choice(f"{kind} (not in the config)", str(value), map(str, valid[kind]))
    return lambda cell: all(values is None or getattr(cell, kind) in values for kind, values in chosen.items())


def run_experiment(config: ExperimentConfig, work_dir: str | Path, *, report_dir: str | Path | None = None,
                   quiet: bool = True, command: str | None = None,
                   only: Callable[[Cell], bool] | None = None) -> dict[str, Any]:
    """Run (or resume) the grid (or the part `only` accepts), then write results.csv, report.md and the
    plots; returns a summary."""
    from cola.experiment.report import write_report

    experiment = Experiment(config, work_dir, quiet=quiet)
    start = time.perf_counter()

    def refresh(_cell: Cell, _record: dict[str, Any]) -> None:  # partial results are always on disk
        write_report(experiment, report_dir or work_dir, command=command, plots=False)

    counts = experiment.run(on_cell=refresh, only=only)
    paths = write_report(experiment, report_dir or work_dir, command=command)
    return {**counts, "seconds": round(time.perf_counter() - start, 1), **{k: str(v) for k, v in paths.items()}}
