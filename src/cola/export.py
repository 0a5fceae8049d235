"""Write a command's outputs as one set that switches at once, and check a set when reading it back.

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
file's sha256; readers check it with `verify_outputs` and refuse a set that does not match.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cola.errors import ColaError

SAMPLES_FILE = "calibration_samples.json"
DATASET_DIR = "calibration_dataset"
DATASET_PARQUET = "calibration_dataset.parquet"
POOL_PARQUET = "pool.parquet"
MANIFEST_FILE = "manifest.json"
LIBRARIES = ("cola", "torch", "transformers", "datasets", "scikit-learn", "numpy", "scipy", "safetensors",
             "gguf", "pyarrow")


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape the result."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def cpu_model() -> str:
    """The CPU's `model name` from /proc/cpuinfo (Linux), else platform.processor(), else 'unknown'.

    Results depend on it: bf16 matmuls run about 2,500 GFLOP/s on Intel Xeons with AMX and about 430 on AMD EPYC,
    and the two take different kernels, so floats differ in their last bits between them."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run_environment() -> dict[str, Any]:
    """What shapes a result besides its inputs: library versions, the CPU model, and torch's CPU thread count (bf16
    sums run in a thread-dependent order: GPTQ W3 g64 of SmolLM2 on one calibration set gave wikitext-2 perplexity
    178.9 at 1 thread and 164.8 at 2)."""
    import torch

    return {"libraries": library_versions(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads()}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


STAGING_MARK = ".cola-staging-"  # a set being written, or an old set being removed after the swap
OLD_MARK = ".cola-old-"          # an old set renamed aside (only where the directories cannot be exchanged)
PROBE_MARK = ".cola-write-test-"
CURATE_NAMES = frozenset({SAMPLES_FILE, DATASET_DIR, DATASET_PARQUET, POOL_PARQUET, MANIFEST_FILE})


def output_directory(value: str | os.PathLike[str], flag: str = "--output_dir") -> Path:
    """`value` as a Path; an empty value is refused (Path('') would be the current directory)."""
    if not str(value).strip():
        raise ColaError(f"{flag} is empty: name the directory to write to (an empty name would mean the current "
                        "directory)")
    return Path(value).expanduser()


def is_temporary(name: str) -> bool:
    """A name cola gives its staging, set-aside and probe folders (also inside an output directory, where cola
    versions before the set swap staged)."""
    return any(mark in name for mark in (STAGING_MARK, OLD_MARK, PROBE_MARK)) and name.startswith(".")


def visible_entries(directory: Path) -> list[Path]:
    """The entries of `directory` other than cola's temporary folders, sorted by name."""
    return sorted(p for p in directory.iterdir() if not is_temporary(p.name))


def nearest_existing(path: Path) -> Path:
    """`path` itself, or its closest ancestor that exists: where a directory about to be made would go."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def ensure_writable(path: Path, *, output_dir: Path | None = None) -> None:
    """Fail early, before any heavy work and without creating anything, when `path` (a directory to write
    into) cannot be written: it or its nearest existing parent is a file or refuses a new entry. Messages name
    `output_dir` (default: `path`)."""
    output_dir = path if output_dir is None else output_dir
    probe = nearest_existing(path.absolute())
    if not probe.is_dir():
        raise ColaError(f"output directory {output_dir} is not writable: {probe} is a file")
    try:
        with tempfile.TemporaryDirectory(prefix=PROBE_MARK, dir=probe):
            pass
    except OSError as exc:
        raise ColaError(f"output directory {output_dir} is not writable: {exc.strerror or exc}") from exc


def check_output_dir(output_dir: Path, *, holds_set: Callable[[Path], bool], what: str) -> None:
    """Fail early, creating nothing, when `output_dir` cannot take a set: it is a file, it is or contains the
    current directory (the swap would pull it from under the shell), it is a mount point or its parent is not
    writable (the swap renames it), it holds files but no set (`what`, as `holds_set` tells), or it cannot be
    written."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ColaError(f"output directory {output_dir} is a file, not a directory")
    real, cwd = output_dir.resolve(), Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise ColaError(f"output directory {output_dir} is or contains the current directory, and cola replaces "
                        "its output directory as a whole; name a subdirectory")
    if not output_dir.is_dir():
        ensure_writable(real.parent, output_dir=output_dir)
        return
    if os.path.ismount(real):
        raise ColaError(f"output directory {output_dir} is a mount point, and cola replaces its output directory "
                        "as a whole by renaming it; name a subdirectory of it")
    entries = visible_entries(output_dir)
    if entries and not holds_set(output_dir):
        names = ", ".join(p.name for p in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ColaError(f"output directory {output_dir} holds files that are not {what} ({names}); cola "
                        "replaces its output directory as a whole: name an empty or new directory")
    ensure_writable(output_dir)
    try:
        ensure_writable(real.parent)
    except ColaError as exc:
        raise ColaError(f"output directory {output_dir} cannot be replaced: its parent {real.parent} is not "
                        f"writable, and cola writes the new set beside the old one; name a subdirectory of it "
                        f"({exc})") from exc


def holds_curate_set(directory: Path) -> bool:
    """Whether `directory` holds a `cola curate` output (whole, damaged or half-replaced by an older cola)."""
    return (any((directory / name).exists() for name in CURATE_NAMES - {MANIFEST_FILE})
            or index_names(directory / MANIFEST_FILE) is not None)


def check_curate_output(output_dir: Path) -> None:
    """`check_output_dir` for `cola curate`: an empty, new or earlier curate output directory."""
    check_output_dir(output_dir, holds_set=holds_curate_set, what="a `cola curate` output")


def index_names(index_file: Path) -> set[str] | None:
    """The top-level names of the set whose index (manifest.json, compression_summary.json) is `index_file`,
    itself included; None when the file is missing or lists no outputs."""
    try:
        outputs = json.loads(index_file.read_text(encoding="utf-8"))["outputs"]
        return {index_file.name, *(str(name).split("/")[0] for name in outputs)}
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


# --- reading a set back --------------------------------------------------------------------------------------

def read_index(index_file: Path, *, what: str, remedy: str) -> dict[str, Any]:
    """The JSON object in a set's index file; a missing, unreadable or malformed one is a one-line ColaError
    naming `what` was being read and the `remedy`."""
    from cola.io import read_mapping

    return read_mapping(index_file, what=what, remedy=remedy)


def verify_outputs(directory: Path, index: dict[str, Any], *, index_name: str, what: str, remedy: str) -> None:
    """Refuse (one line naming the first bad file) a set whose files are missing or differ from the sha256
    its index recorded under "outputs"."""
    outputs = index.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        raise ColaError(f"{what} {directory}: {index_name} lists no output hashes, so the set cannot be "
                        f"checked; {remedy}")
    for name, digest in sorted(outputs.items()):
        path = directory / name
        if not path.is_file():
            raise ColaError(f"{what} {directory} is incomplete: {name}, listed in its {index_name}, is missing; "
                            f"{remedy}")
        if file_sha256(path) != digest:
            raise ColaError(f"{what} {directory} does not match its {index_name}: {name} changed after it was "
                            f"written (sha256 differs); {remedy}")


def write_outputs(output_dir: Path, *, samples: list[dict[str, Any]], input_ids: Sequence[np.ndarray],
                  pool: dict[str, list[Any]], manifest: dict[str, Any]) -> dict[str, str]:
    """Write all artefacts as one set that replaces the directory's earlier set at once (see the module
    docstring) and return {file name: sha256}; the manifest, written last, records the same hashes."""
    from datasets import Dataset

    check_curate_output(output_dir)
    with staged_outputs(output_dir, set_names=curate_set_names) as staging:
        _write_json(staging / SAMPLES_FILE, samples)
        table = _token_table(input_ids)
        pq.write_table(table, staging / DATASET_PARQUET)
        # An explicit fingerprint keeps save_to_disk byte-identical between identical runs.
        Dataset(table, fingerprint=_tokens_digest(input_ids)[:16]).save_to_disk(str(staging / DATASET_DIR))
        pq.write_table(pa.table(pool), staging / POOL_PARQUET)
        hashes = tree_hashes(staging)
        _write_json(staging / MANIFEST_FILE, {**manifest, "outputs": hashes})
    return hashes
