"""The export step: a curated set's typed records (`SampleRecord`, `PoolTable`, `Manifest`, used by every writer),
and every command's outputs written as one set that switches at once (`write_outputs`, `staged_outputs`).

A set (`cola curate`: calibration_samples.json, calibration_dataset/, two parquet files, manifest.json; `cola
compress`: a model directory with compression_summary.json) is written whole into a staging directory beside the
output directory NAME, `.NAME.cola-staging-PID-XXXXXXXX`, and then swapped in by one rename: on Linux
renameat2(RENAME_EXCHANGE) exchanges the two directories atomically, so a reader sees the complete old set or
the complete new set at every instant. Where that call is missing (other systems, some network filesystems)
the old directory is first renamed aside to `.NAME.cola-old-...`, then the new one into place: a reader in
between finds no directory, and a process killed in between leaves the old set aside, which the next run puts
back before anything else.

Each staging or set-aside directory is locked (flock) while its writer lives, so the next run can tell a killed
run's leftovers from a live writer's and removes them. Files a user put beside a set are carried into the new
directory (as hard links), and a non-empty directory that holds no set of that command is refused, never
replaced. The index file (manifest.json, compression_summary.json) is written last and records every other
file's sha256; readers check it with `verify_outputs` (`cola.output_dir`) and refuse a set that does not match.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cola.environment import cpu_model as cpu_model, run_environment
from cola.errors import ColaError
from cola.spill import write_columns
from cola.output_dir import OLD_MARK, STAGING_MARK, file_sha256, index_names, visible_entries
from cola.output_dir import check_output_dir as check_output_dir, ensure_writable as ensure_writable
from cola.output_dir import nearest_existing as nearest_existing, output_directory as output_directory
from cola.output_dir import read_index as read_index, verify_outputs as verify_outputs

SAMPLES_FILE = "calibration_samples.json"
DATASET_DIR = "calibration_dataset"
DATASET_PARQUET = "calibration_dataset.parquet"
POOL_PARQUET = "pool.parquet"
MANIFEST_FILE = "manifest.json"


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """Enough to tell later whether a calibration set was made with the same tokenizer."""
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()
    return {"name_or_path": getattr(tokenizer, "name_or_path", ""), "vocab_size": len(vocab),
            "vocab_sha256": digest}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")


def _token_table(input_ids: Sequence[np.ndarray]) -> pa.Table:
    """input_ids and an all-ones attention_mask (no padding) as list columns, built from flat arrays."""
    lengths = np.array([len(x) for x in input_ids], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat = np.concatenate([np.asarray(x, dtype=np.int32) for x in input_ids])  # (sum T,)
    ids = pa.ListArray.from_arrays(offsets, pa.array(flat))
    mask = pa.ListArray.from_arrays(offsets, pa.array(np.ones(len(flat), dtype=np.int8)))
    return pa.table({"input_ids": ids, "attention_mask": mask})


def _tokens_digest(input_ids: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for ids in input_ids:
        digest.update(np.int64(len(ids)).tobytes())
        digest.update(np.asarray(ids, dtype=np.int32).tobytes())
    return digest.hexdigest()


PLOTS_DIR = "cola_plots"  # `--plots` draws the run's figures here (cola.plots): part of the set, a later run drops them
CURATE_NAMES = frozenset({SAMPLES_FILE, DATASET_DIR, DATASET_PARQUET, POOL_PARQUET, MANIFEST_FILE, PLOTS_DIR})


def holds_curate_set(directory: Path) -> bool:
    """Whether `directory` holds a `cola curate` output (whole, damaged or half-replaced by an older cola)."""
    return (any((directory / name).exists() for name in CURATE_NAMES - {MANIFEST_FILE})
            or index_names(directory / MANIFEST_FILE) is not None)


def check_curate_output(output_dir: Path) -> None:
    """`check_output_dir` for `cola curate`: an empty, new or earlier curate output directory."""
    check_output_dir(output_dir, holds_set=holds_curate_set, what="a `cola curate` output")


def curate_set_names(directory: Path) -> set[str]:
    """The entries of a curate output directory that belong to its set (the rest is the user's)."""
    return set(CURATE_NAMES) | (index_names(directory / MANIFEST_FILE) or set())


# --- the swap ------------------------------------------------------------------------------------------------

AT_FDCWD, RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Exchange two existing paths in one atomic step (Linux renameat2); False where the system or the
    filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc before 2.28, musl
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _lock(path: Path) -> int | None:
    """An open descriptor of directory `path` holding an exclusive flock, or None when another process holds
    it (a live writer) or the directory is gone. Closing the descriptor (or dying) releases it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): every leftover counts as stale
        return os.open(path, os.O_RDONLY) if path.is_dir() else None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _temp_name(output_dir: Path, mark: str) -> Path:
    return output_dir.parent / f".{output_dir.name}{mark}{os.getpid()}-{secrets.token_hex(4)}"


def _locked_staging(output_dir: Path) -> tuple[Path, int]:
    """A new empty staging directory beside `output_dir`, locked by this process."""
    for _ in range(5):
        staging = _temp_name(output_dir, STAGING_MARK)
        staging.mkdir()
        fd = _lock(staging)
        # a cleaner may have taken it for a leftover between mkdir and lock: then take another name
        if fd is not None and staging.is_dir() and os.path.samestat(os.fstat(fd), os.stat(staging)):
            return staging, fd
        if fd is not None:
            os.close(fd)
    raise ColaError(f"cannot stage outputs beside {output_dir}: another process keeps removing them")


def clean_stale(output_dir: Path) -> None:
    """Remove what killed runs left beside `output_dir` (unlocked staging and set-aside folders), after putting
    back a set-aside old set when `output_dir` itself is missing (a run killed between its two renames)."""
    parent, name = output_dir.parent, output_dir.name
    if not parent.is_dir():
        return
    leftovers = [p for p in parent.iterdir() if p.name.startswith((f".{name}{STAGING_MARK}", f".{name}{OLD_MARK}"))]
    for path in sorted(leftovers, key=lambda p: p.name.startswith(f".{name}{OLD_MARK}"), reverse=True):
        fd = _lock(path)
        if fd is None:
            continue  # a live writer's, or gone
        try:
            if path.name.startswith(f".{name}{OLD_MARK}") and not output_dir.exists():
                os.rename(path, output_dir)
            else:
                shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _carry_over(output_dir: Path, staging: Path, set_names: Callable[[Path], set[str] | None]) -> None:
    """Hard-link into `staging` the entries of `output_dir` that its set does not claim (`set_names` returns
    None when it cannot tell them apart: then nothing is carried)."""
    claimed = set_names(output_dir)
    if claimed is None:
        return
    for entry in visible_entries(output_dir):
        target = staging / entry.name
        if entry.name in claimed or target.exists() or target.is_symlink():
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(target))


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to disk, so that a power cut after the swap cannot leave the
    new names pointing at unwritten data."""
    for folder, _dirs, files in os.walk(root):
        for name in [*files, "."]:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                _fsync(Path(path))


def _swap_in(staging: Path, output_dir: Path) -> Path | None:
    """Make `staging` the directory `output_dir`; return where the old directory now is (None: there was none)."""
    if not output_dir.exists():
        os.rename(staging, output_dir)
        return None
    if _exchange(staging, output_dir):
        return staging  # the old set now lies under the staging name
    aside = _temp_name(output_dir, OLD_MARK)
    fd = _lock(output_dir)  # the set aside stays locked while this process lives, so no cleaner puts it back
    try:
        os.rename(output_dir, aside)
        try:
            os.rename(staging, output_dir)
        except OSError:
            os.rename(aside, output_dir)
            raise
        garbage = _temp_name(output_dir, STAGING_MARK)
        os.rename(aside, garbage)  # from here a next run removes it instead of putting it back
    finally:
        if fd is not None:
            os.close(fd)
    return garbage


def _fsync(path: Path) -> None:
    """Flush one file or folder to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_outputs(output_dir: Path, *, set_names: Callable[[Path], set[str] | None] = curate_set_names,
                   ) -> Iterator[Path]:
    """Yield an empty staging directory beside `output_dir`; when the block ends without error, make it
    `output_dir` in one swap (see the module docstring), carrying over the old directory's entries that
    `set_names` does not claim. On an error the staging directory is removed, with any parent made for it,
    and `output_dir` is left as it was. A symlinked `output_dir` keeps its link: the directory it names is
    replaced. Leftovers of killed runs beside `output_dir` are removed first."""
    output_dir = output_dir.resolve()
    made = [p for p in [output_dir.parent, *output_dir.parent.parents] if not p.exists()]  # innermost first
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(output_dir)
    staging, fd = _locked_staging(output_dir)
    try:
        yield staging
        if output_dir.is_dir():
            _carry_over(output_dir, staging, set_names)
        _fsync_tree(staging)
        old = _swap_in(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        _fsync(output_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def tree_hashes(root: Path) -> dict[str, str]:
    """{path relative to `root`: sha256} of every file under it, sorted."""
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


# --- the curate set's records ---------------------------------------------------------------------------------

def model_record(model: Any, tokenizer: Any, name: str) -> dict[str, Any]:
    """The manifest's account of the model and tokenizer a calibration set was made with."""
    return {"model": name, "model_class": type(model).__name__, "model_dtype": str(next(model.parameters()).dtype),
            "tokenizer": tokenizer_fingerprint(tokenizer)}


@dataclass(frozen=True, kw_only=True)
class SampleRecord:
    """One entry of calibration_samples.json (the seed's format), in its key order."""

    text: str
    dataset_name: str
    capability_scores: dict[str, float]  # Stage 1's score per target capability ({} when none applies)
    format_enhanced: bool                # a reasoning chain was added to one of its documents
    selection_index: int                 # its row in pool.parquet
    selection_method: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class PoolTable:
    """pool.parquet: one row per candidate the set was chosen from; `extra` holds the columns a selection
    method adds after the common ones (clusters, features, perplexities); columns: `cola.spill.arrow_column`."""

    dataset_name: Sequence[str]
    capability: Sequence[str]
    num_tokens: Sequence[int] | np.ndarray
    selected: Sequence[bool] | np.ndarray
    extra: dict[str, Sequence[Any] | np.ndarray] = field(default_factory=dict)

    def columns(self) -> dict[str, Sequence[Any] | np.ndarray]:
        """The table's columns in file order, pool_index first; a column of another length is a ValueError."""
        columns = {"pool_index": np.arange(rows := len(self.dataset_name), dtype=np.int64),
                   "dataset_name": self.dataset_name, "capability": self.capability, "num_tokens": self.num_tokens,
                   "selected": self.selected, **self.extra}
        uneven = [name for name, values in columns.items() if len(values) != rows]
        if uneven:
            raise ValueError(f"pool columns {uneven} do not have one value for each of the {rows} rows")
        return columns


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """manifest.json of a curated set: what made it and how (the `outputs` hashes are added when written).

    The optional entries (None: left out) are those only some writers have: `cola curate` gives
    target_capabilities, stage1 and diagnostics, self-generation gives generation_settings and generation.
    Keys come out in one fixed order, so the same run writes the same bytes.
    """

    command: str                          # "curate", "curate_strategy"
    model: dict[str, Any]                 # `model_record`
    seed: int
    settings: dict[str, Any]              # CurateConfig.as_dict()
    stages: dict[str, Any]                # what each stage did (`cola.api.stages_run`)
    sources: list[dict[str, Any]]         # Source.describe() of each dataset
    stage2: dict[str, Any]                # Stage 2's report
    num_samples: int
    sample_tokens: int
    timings: dict[str, float]             # seconds, rounded to ms when written
    target_capabilities: list[str] | None = None
    generation_settings: dict[str, Any] | None = None
    stage1: dict[str, Any] | None = None
    generation: dict[str, Any] | None = None
    diagnostics: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # added last (e.g. the experiment's strategy)

    def as_dict(self) -> dict[str, Any]:
        """The manifest as written, with the machine's `run_environment` read now."""
        def given(**entries: Any) -> dict[str, Any]:
            return {key: value for key, value in entries.items() if value is not None}

        return {"tool": "cola", "command": self.command, **self.model, "seed": self.seed, "settings": self.settings,
                **given(generation_settings=self.generation_settings, target_capabilities=self.target_capabilities),
                "stages": self.stages, "sources": self.sources,
                **given(stage1=self.stage1), "stage2": self.stage2, **given(generation=self.generation),
                "num_samples": self.num_samples, "sample_tokens": self.sample_tokens,
                **given(diagnostics=self.diagnostics), **run_environment(),
                "timings": {k: round(v, 3) for k, v in self.timings.items()}, **self.extra}


def write_outputs(output_dir: Path, *, samples: Sequence[SampleRecord | Mapping[str, Any]],
                  input_ids: Sequence[np.ndarray], pool: PoolTable | Mapping[str, list[Any]],
                  manifest: Manifest | Mapping[str, Any]) -> dict[str, str]:
    """Write all artefacts as one set that replaces the directory's earlier set at once (see the module
    docstring) and return {file name: sha256}; the manifest, written last, records the same hashes.

    cola's writers pass the typed records above; plain mappings are taken as they are (a hand-made set).
    """
    from datasets import Dataset

    records = [s.as_dict() if isinstance(s, SampleRecord) else dict(s) for s in samples]
    columns = pool.columns() if isinstance(pool, PoolTable) else dict(pool)
    index = manifest.as_dict() if isinstance(manifest, Manifest) else dict(manifest)
    check_curate_output(output_dir)
    with staged_outputs(output_dir, set_names=curate_set_names) as staging:
        _write_json(staging / SAMPLES_FILE, records)
        table = _token_table(input_ids)
        pq.write_table(table, staging / DATASET_PARQUET)
        # An explicit fingerprint keeps save_to_disk byte-identical between identical runs.
        Dataset(table, fingerprint=_tokens_digest(input_ids)[:16]).save_to_disk(str(staging / DATASET_DIR))
        write_columns(staging / POOL_PARQUET, columns)
        hashes = tree_hashes(staging)
        _write_json(staging / MANIFEST_FILE, {**index, "outputs": hashes})
    return hashes
