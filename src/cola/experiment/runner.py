"""`cola experiment`: selection strategies × compression methods × seeds, end to end and resumable.

The work directory's layout is `store.WorkDir`'s (calibration sets, compressed models, cell records,
dense.json, locks).

A record with status "ok" is never run again; a failed cell keeps its error in its record and is tried
again on the next run. With `isolate_cells` every cell runs in a fresh process of its own process group that
dies with the runner (`isolation`), so a crash (or memory blow-up) in one cell is recorded as that cell's
failure and the grid goes on, and a killed runner leaves nothing running. A cell is locked while it runs:
a second runner on the same work directory skips it (and waits for a calibration set or the dense model's
evaluation that another run is making). Every path written or deleted is confined to the work directory
(`store.inside`).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cola.atomic import read_json, write_json
from cola.errors import ColaError
from cola.experiment.config import ExperimentConfig, MethodSettings
from cola.experiment.isolation import run_in_process_group, sigterm_exits
from cola.experiment.store import (CONFIG_FILE, DENSE_FILE, FEATURE_CACHE, FOLDERS, Cell, WorkDir, exclusive_lock,
                                   grid, remove_tree)

__all__ = ["DENSE_FILE", "Cell", "Experiment", "grid", "run_experiment", "subset"]

log = logging.getLogger(__name__)

class Experiment(WorkDir):
    """One grid in one work directory (its layout: `WorkDir`), run cell by cell."""

    def __init__(self, config: ExperimentConfig, work_dir: str | Path, *, quiet: bool = True) -> None:
        super().__init__(config, work_dir)
        self.quiet = quiet

    def method(self, label: str) -> MethodSettings:
        return next(run for run in self.config.methods if run.label == label)

    # --------------------------------------------------------------------------------------------- run
    def run(self, *, on_cell: Callable[[Cell, dict[str, Any]], None] | None = None,
            only: Callable[[Cell], bool] | None = None) -> dict[str, int]:
        """Run every unfinished cell (of those `only` accepts); returns counts of cells done before (skipped),
        run now (ok, failed) and left to another run working on them at the same time (busy).

        Raises ColaError before any work when a folder of the layout leads outside the work directory (a
        symbolic link), and when the dense model's evaluation fails.
        """
        from cola.export import ensure_writable

        ensure_writable(self.work_dir)
        for folder in FOLDERS:
            self.path(folder)  # a linked folder fails here, before any work
        write_json(self.path(CONFIG_FILE), self.config.as_dict())
        counts = {"skipped": 0, "ok": 0, "failed": 0, "busy": 0}
        with sigterm_exits():
            self._ensure_dense()
            for cell in grid(self.config):
                if only is not None and not only(cell):
                    continue
                if _finished(self.cell_file(cell)):
                    counts["skipped"] += 1
                    continue
                with exclusive_lock(self.lock_file(cell.key), what=f"cell {cell.key}", wait=False) as lock:
                    if lock is None:
                        counts["busy"] += 1
                        continue
                    if _finished(self.cell_file(cell)):  # another run finished it while this one looked
                        counts["skipped"] += 1
                        continue
                    log.info("cell %s", cell.key)
                    base = {"strategy": cell.strategy, "method": cell.method, "seed": cell.seed,
                            "status": "failed"}
                    record = self._execute(_cell_job, self.cell_file(cell), base, cell, lock=lock)
                counts[record["status"]] += 1
                if on_cell:
                    on_cell(cell, record)
        return counts

    def _ensure_dense(self) -> None:
        """dense.json, evaluated once (a run that finds another one evaluating it waits for that one)."""
        dense = self.dense_file()
        if _finished(dense):
            return
        with exclusive_lock(self.lock_file("dense"), what="the dense model's evaluation", wait=True) as lock:
            if _finished(dense):
                return
            record = self._execute(_dense_job, dense, {"status": "failed"}, lock=lock)
        if record.get("status") != "ok":
            raise ColaError(f"evaluating the dense model failed: {record.get('error')}")

    def _execute(self, job: Callable[..., None], record_file: Path, base: dict[str, Any], *args: Any,
                 lock: int | None = None) -> dict:
        """Run `job` (which writes `record_file` itself on success), isolated if configured; a job that
        raises or dies leaves a failed record with its error instead. An isolated job's process keeps `lock`
        (a held lock's descriptor) open, so the lock lasts as long as the job does."""
        record_file = self.path(record_file)
        record_file.unlink(missing_ok=True)
        start = time.perf_counter()
        if self.config.isolate_cells:
            errors = multiprocessing.get_context("spawn").Queue()
            exitcode = run_in_process_group(_child, (job, errors, self.config, self.work_dir, self.quiet, *args),
                                            inherit=() if lock is None else (lock,))
            error = errors.get() if not errors.empty() else None
            if error is None and exitcode != 0:
                error = f"the cell's process died with exit code {exitcode}"
        else:
            error = _capture(job, self.config, self.work_dir, self.quiet, *args)
        record = read_json(record_file)
        if record is None or error is not None:
            record = {**base, "error": error or "the job wrote no record",
                      "seconds": round(time.perf_counter() - start, 1)}
            write_json(record_file, record)
            log.warning("%s failed: %s", record_file.stem, record["error"])
        return record


def _finished(record_file: Path) -> bool:
    return (read_json(record_file) or {}).get("status") == "ok"


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
    """Entry point of an isolated cell's process (already in its own process group, bound to the parent)."""
    logging.basicConfig(level=logging.WARNING, format="cola: %(message)s", force=True)
    error = _capture(job, *args)
    if error is not None:
        errors.put(error)


# ------------------------------------------------------------------------------------------------ jobs
def _load_dense(config: ExperimentConfig, quiet: bool) -> tuple[Any, Any]:
    from cola.models import load_model

    return load_model(config.model, device=config.device, dtype=config.dtype,
                      trust_remote_code=config.trust_remote_code, quiet=quiet)


def _evaluate(model: Any, tokenizer: Any, config: ExperimentConfig, quiet: bool) -> list[dict[str, Any]]:
    from cola.evaluate import evaluate

    settings = config.evaluation
    results = evaluate(model, tokenizer, list(settings.tasks), limit=dict(settings.limits) or None,
                       data_dir=config.data_dir, window=settings.window, quiet=quiet,
                       confirm_run_unsafe_code=config.confirm_run_unsafe_code)
    return [r.as_dict() for r in results]


def _dense_job(config: ExperimentConfig, work_dir: Path, quiet: bool) -> None:
    from cola.experiment.spectrum import ffn_spectrum

    start = time.perf_counter()
    model, tokenizer = _load_dense(config, quiet)
    results = _evaluate(model, tokenizer, config, quiet)
    name, values = ffn_spectrum(model, config.plots.spectrum_module)
    write_json(WorkDir(config, work_dir).dense_file(), {
        "status": "ok", "model": config.model, "results": results,
        "spectrum": {"module": name, "singular_values": values}, "seconds": round(time.perf_counter() - start, 1)})


def _ensure_calibration(experiment: Experiment, cell: Cell, model: Any, tokenizer: Any) -> tuple[Path, float]:
    """The strategy's curated set for this seed: made once, reused by every method; (path, curate seconds)."""
    from cola.export import MANIFEST_FILE
    from cola.experiment.strategies import curate_strategy

    config, path = experiment.config, experiment.calibration_dir(cell.strategy, cell.seed)
    timing_file = experiment.curate_time_file(cell.strategy, cell.seed)
    name = f"calibration_{cell.strategy}_seed{cell.seed}"  # not a cell key: those hold '__'
    with exclusive_lock(experiment.lock_file(name), wait=True,
                        what=f"the calibration set of {cell.strategy}, seed {cell.seed}"):
        timing = read_json(timing_file)
        if (path / MANIFEST_FILE).is_file() and timing is not None:
            return path, timing["seconds"]
        start = time.perf_counter()
        settings = config.calibration
        strategy, variant_settings, generation = config.recipe(cell.strategy)
        curate_strategy(strategy, model=model, tokenizer=tokenizer, datasets=list(settings.datasets),
                        num_samples=config.num_samples(cell.strategy), sequence_length=settings.sequence_length,
                        seed=cell.seed, output_dir=path, random_source=settings.random_source,
                        candidates_per_source=settings.candidates_per_source,
                        references=tuple(settings.references.items()), quiet=experiment.quiet,
                        generation=generation or None, label=cell.strategy,
                        feature_cache=experiment.path(FEATURE_CACHE), **variant_settings)
        seconds = round(time.perf_counter() - start, 1)
        write_json(timing_file, {"seconds": seconds})
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
                       dtype=config.dtype, device=config.device, trust_remote_code=config.trust_remote_code,
                       **run.options)
    del model
    gc.collect()
    start = time.perf_counter()
    # CALDERA is evaluated from its dense Q + LR checkpoint: the same function as CalderaLinear, 9x faster
    model, tokenizer = load_compressed(out, dtype=config.dtype, device=config.device, quiet=quiet,
                                       caldera_layers=False, trust_remote_code=config.trust_remote_code)
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
        remove_tree(experiment.work_dir, out)


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
                   only: Callable[[Cell], bool] | None = None,
                   include: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Run (or resume) the grid (or the part `only` accepts), then write results.csv, report.md and the
    plots (with the cells of the `include` results.csv files the work directory lacks); returns a summary."""
    from cola.experiment.report import included_rows, write_report

    included_rows(include, [], config)  # a missing or foreign results.csv fails here, before any cell runs
    experiment = Experiment(config, work_dir, quiet=quiet)
    start = time.perf_counter()

    def refresh(_cell: Cell, _record: dict[str, Any]) -> None:  # partial results are always on disk
        write_report(experiment, report_dir or work_dir, command=command, plots=False, include=include)

    counts = experiment.run(on_cell=refresh, only=only)
    paths = write_report(experiment, report_dir or work_dir, command=command, include=include)
    return {**counts, "seconds": round(time.perf_counter() - start, 1), **{k: str(v) for k, v in paths.items()}}
