"""Stand-in jobs for `cola experiment` tests that run the grid in child processes (spawned children import
jobs by module name, so they live here rather than in a test module)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from cola.experiment import runner
from cola.experiment.config import ExperimentConfig, config_from_dict
from cola.atomic import write_json
from cola.experiment.runner import Cell, Experiment

RELEASE_FILE = "release"     # blocking_cell waits for this file in the work directory
STARTS_FILE = "starts.jsonl"  # one line per cell start: key, pid, process group, parent pid
STARTS_TIMEOUT = 120.0


def small_config(base_dir: Path, *, seeds: tuple[int, ...] = (0,), isolate: bool = True) -> ExperimentConfig:
    """One strategy x one method x `seeds`: as many cells as seeds."""
    return config_from_dict({"name": "t", "seeds": list(seeds), "strategies": ["random_c4"],
                             "baseline": "random_c4", "methods": {"rtn4": {"method": "rtn", "bits": 4}},
                             "evaluation": {"tasks": ["ppl:x.txt"]}, "isolate_cells": isolate},
                            base_dir=base_dir)


def dense_job(config: ExperimentConfig, work_dir: Path, quiet: bool) -> None:
    write_json(Experiment(config, work_dir).path(runner.DENSE_FILE), {"status": "ok", "results": []})


def _note_start(work_dir: Path, cell: Cell, **extra: Any) -> None:
    line = json.dumps({"cell": cell.key, "pid": os.getpid(), "pgid": os.getpgrp(), "ppid": os.getppid(), **extra})
    with open(work_dir / STARTS_FILE, "a", encoding="utf-8") as fh:  # one short append: atomic in practice
        fh.write(line + "\n")


def _finish(config: ExperimentConfig, work_dir: Path, cell: Cell) -> None:
    write_json(Experiment(config, work_dir).cell_file(cell), {"strategy": cell.strategy, "method": cell.method,
                                                              "seed": cell.seed, "status": "ok", "results": []})


def quick_cell(config: ExperimentConfig, work_dir: Path, quiet: bool, cell: Cell) -> None:
    _note_start(work_dir, cell)
    _finish(config, work_dir, cell)


def probe_lock_job(config: ExperimentConfig, work_dir: Path, quiet: bool, lock_path: str) -> None:
    """Record whether this process holds a descriptor of `lock_path` (Linux: /proc/self/fd)."""
    fds = os.listdir("/proc/self/fd")
    held = any(os.path.realpath(f"/proc/self/fd/{fd}") == os.path.realpath(lock_path) for fd in fds)
    write_json(Experiment(config, work_dir).path("probe.json"), {"status": "ok", "holds_lock": held})


def blocking_cell(config: ExperimentConfig, work_dir: Path, quiet: bool, cell: Cell) -> None:
    """Note the start, wait for the release file, finish."""
    _note_start(work_dir, cell)
    deadline = time.monotonic() + STARTS_TIMEOUT
    while not (work_dir / RELEASE_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    _finish(config, work_dir, cell)


def slow_cell_with_grandchild(config: ExperimentConfig, work_dir: Path, quiet: bool, cell: Cell) -> None:
    """Start a `sleep` grandchild (it joins this process's group), note both pids, then take 10 minutes."""
    grandchild = subprocess.Popen(["sleep", "600"])
    _note_start(work_dir, cell, grandchild=grandchild.pid)
    time.sleep(600)
    _finish(config, work_dir, cell)


def main(argv: list[str]) -> int:
    """`WORK_DIR JOB SEEDS`: run the small grid with `JOB` (a function of this module) as every cell's job,
    isolated, and print the counts as JSON; Ctrl-C (SIGINT) exits 130."""
    import signal
    import sys

    work_dir, job, seeds = Path(argv[0]), argv[1], tuple(int(s) for s in argv[2].split(","))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the test runner ignores SIGINT
    runner._cell_job = globals()[job]
    runner._dense_job = dense_job
    try:
        counts = Experiment(small_config(work_dir, seeds=seeds), work_dir).run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps(counts))
    return 0
