"""The experiment's work directory: its layout (`WorkDir`), and the rules every path in it follows (plain
names, paths confined to the directory, atomic writes, OS locks).

Layout (everything a cell needs is found again from disk, so a stopped grid resumes):

    calibration/<strategy>/seed<k>/     the curated set (shared by every method of that strategy and seed),
                                        with pool.parquet and experiment_curate.json (what curating took)
    models/<strategy>/<method>/seed<k>/ the compressed model, removed once evaluated unless keep_models
    cells/<strategy>__<method>__seed<k>.json   one cell's record: status, error, figures, spectrum
    dense.json                          the uncompressed model's evaluation and spectrum
    feature_cache/                      the pools' activation features (`cola.feature_cache`), read by every
                                        strategy curated from the same pool with the same model and settings
    experiment_config.json              the config the grid last ran with
    results.csv · report.md · plots/    rebuilt after every cell from the records (`report`, `plots`)
    locks/                              OS locks: one per cell, one per calibration set, one for dense.json

Every path the experiment writes or deletes comes from `inside(root, ...)`, which resolves it (following
symbolic links) and refuses anything outside `root`; labels that become folder and file names must be plain
names (`plain_name`), so a label such as `../../victim` is an error when the config loads, before anything
runs. Locks are `flock` locks on files under `locks/`: the kernel drops them when their holder dies, so a lock
left by a killed run never blocks the next one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cola.atomic import read_json
from cola.errors import ColaError

if TYPE_CHECKING:
    from cola.experiment.config import ExperimentConfig

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not protected against each other there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FOLDERS = ("calibration", "models", "cells", "locks")
DENSE_FILE = "dense.json"
CONFIG_FILE = "experiment_config.json"
FEATURE_CACHE = "feature_cache"  # the pools' activation features, shared by the strategies curated from them
CURATE_TIME_FILE = "experiment_curate.json"

NAME_CHARS = 64
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
PLAIN_NAME_RULE = (f"1 to {NAME_CHARS} letters, digits, '_', '-' or '.', starting with a letter or digit, "
                   "without '__' (it separates a cell's parts in file names)")


def plain_name(value: Any, what: str) -> str:
    """`value` if it can name a folder or file on its own; else a ColaError naming `what` and the rule.

    Refused: separators (`a/b`, `a\\b`), `.` and `..`, absolute paths, the empty string, NUL and other control
    characters, `__` (cell files are `<strategy>__<method>__seed<k>`, so `a__b` could make two cells share one).
    """
    if (not isinstance(value, str) or len(value) > NAME_CHARS or not PLAIN_NAME.fullmatch(value)
            or "__" in value):
        raise ColaError(f"{what} {value!r} is not a plain name: it names folders and files in the work directory, "
                        f"so it must be {PLAIN_NAME_RULE}")
    return value


def inside(root: str | os.PathLike[str], *parts: str | os.PathLike[str]) -> Path:
    """`root / parts`, resolved (symbolic links followed); a ColaError unless it lies inside `root`.

    `root` itself is resolved too, so a work directory reached through a link is fine; a part that is absolute,
    climbs out with `..`, or passes through a link that points elsewhere is refused.
    """
    base = Path(root).resolve()
    try:
        path = base.joinpath(*parts).resolve()
    except ValueError as exc:  # a NUL character
        raise ColaError(f"refusing the path {'/'.join(map(str, parts))!r} under {base}: {exc}") from None
    if not path.is_relative_to(base):
        shown = Path(root).joinpath(*parts)
        raise ColaError(f"refusing to write or delete {shown}: it resolves to {path}, outside the work directory "
                        f"{base} (through '..', an absolute path or a symbolic link)")
    return path


def remove_tree(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Delete the folder `path` (checked by `inside`; never `root` itself); a missing folder is fine."""
    target = inside(root, path)
    if target == Path(root).resolve():
        raise ColaError(f"refusing to delete the work directory {target} itself")
    shutil.rmtree(target, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(path: Path, *, what: str, wait: bool) -> Iterator[int | None]:
    """Hold an exclusive OS lock on `path` for the block; yield the lock file's descriptor.

    When another process holds it: with `wait`, log that and block until it is free; without, log that `what`
    is skipped and yield None. The holder's pid is written into the file for that log line. The kernel
    releases the lock when the holder's last descriptor closes, also when the holder is killed, so a stale
    lock file never blocks. A descriptor passed to a child process (`isolation.InheritedFd`) keeps the lock
    held while the child lives.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                if not wait:
                    log.warning("%s is running in another process (pid %s): skipped here", what, holder)
                    yield None
                    return
                log.warning("waiting for %s: another process (pid %s) is working on it", what, holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:  # e.g. ENOLCK: a file system without flock
                raise ColaError(f"cannot lock {path}: {exc.strerror or exc}; the work directory needs a file "
                                "system with flock locks (a local disk, NFSv4)") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield fd
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Cell:
    """One point of the grid: a strategy's calibration set, compressed by one method, at one seed."""

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


class WorkDir:
    """One grid's work directory: the one place that knows where each of its files lives (see the module
    docstring). Every path comes from `path`, so it is checked to stay inside the directory."""

    def __init__(self, config: ExperimentConfig, work_dir: str | Path) -> None:
        self.config = config
        self.work_dir = Path(work_dir)

    def path(self, *parts: str) -> Path:
        """The one way to a path the experiment writes or deletes: resolved, refused outside the work directory."""
        return inside(self.work_dir, *parts)

    def calibration_dir(self, strategy: str, seed: int) -> Path:
        return self.path("calibration", strategy, f"seed{seed}")

    def curate_time_file(self, strategy: str, seed: int) -> Path:
        return inside(self.calibration_dir(strategy, seed), CURATE_TIME_FILE)

    def pool_file(self, strategy: str, seed: int) -> Path:
        from cola.export import POOL_PARQUET

        return self.calibration_dir(strategy, seed) / POOL_PARQUET

    def model_dir(self, cell: Cell) -> Path:
        return self.path("models", cell.strategy, cell.method, f"seed{cell.seed}")

    def cell_file(self, cell: Cell) -> Path:
        return self.path("cells", f"{cell.key}.json")

    def lock_file(self, name: str) -> Path:
        return self.path("locks", f"{name}.lock")

    def dense_file(self) -> Path:
        return self.path(DENSE_FILE)

    def calibration_tokens(self, strategy: str, seed: int) -> int | None:
        """Tokens in a curated set, as its manifest counts them (None without a manifest)."""
        from cola.export import MANIFEST_FILE

        manifest = read_json(self.calibration_dir(strategy, seed) / MANIFEST_FILE)
        return None if manifest is None else manifest.get("sample_tokens")

    def records(self) -> list[dict[str, Any]]:
        """Every cell record on disk, in grid order (cells not run yet are absent). A record written before
        cells recorded their set's size gets it from the calibration set's manifest, if that is still there."""
        records = []
        for cell in grid(self.config):
            record = read_json(self.cell_file(cell))
            if record is None:
                continue
            if record.get("status") == "ok" and "calibration_tokens" not in record:
                record["calibration_tokens"] = self.calibration_tokens(cell.strategy, cell.seed)
            records.append(record)
        return records
