"""Output directories and their sets, apart from writing: the checks every command runs on its output directory
before heavy work (creating nothing: cola replaces a directory as a whole), the names of cola's temporary
folders beside it, and reading a set's index back (`verify_outputs`). `cola.export` writes and swaps a set in.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cola.errors import ColaError

STAGING_MARK = ".cola-staging-"  # a set being written, or an old set being removed after the swap
OLD_MARK = ".cola-old-"          # an old set renamed aside (only where the directories cannot be exchanged)
PROBE_MARK = ".cola-write-test-"
WORK_MARK = ".cola-work"         # what a run keeps while it works (to resume when killed); removed on success


def default_work_dir(output_dir: Path) -> Path:
    """`.NAME.cola-work` beside output directory NAME: a run's work folder unless it is given one. Not a
    temporary folder in `is_temporary`'s sense: a killed run leaves it on purpose, for the next run to resume."""
    output_dir = Path(output_dir)
    return output_dir.parent / f".{output_dir.name}{WORK_MARK}"


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


def ensure_writable(path: Path, *, output_dir: Path | None = None, what: str = "output directory") -> None:
    """Fail early, before any heavy work and without creating anything, when `path` (a directory to write
    into) cannot be written: it or its nearest existing parent is a file or refuses a new entry. Messages name
    `what` and `output_dir` (default: `path`)."""
    output_dir = path if output_dir is None else output_dir
    probe = nearest_existing(path.absolute())
    if not probe.is_dir():
        raise ColaError(f"{what} {output_dir} is not writable: {probe} is a file")
    try:
        with tempfile.TemporaryDirectory(prefix=PROBE_MARK, dir=probe):
            pass
    except OSError as exc:
        raise ColaError(f"{what} {output_dir} is not writable: {exc.strerror or exc}") from exc


def check_folder(path: str | os.PathLike[str] | None, name: str) -> None:
    """A folder a run keeps things in (a feature cache, a work folder), checked before any heavy work: None
    passes; a file there, or a place that cannot be written, is a one-line ColaError naming `name`."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ColaError(f"{name} {path} is a file, not a folder")
    ensure_writable(path, what=name)


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def index_names(index_file: Path) -> set[str] | None:
    """The top-level names of the set whose index (manifest.json, compression_summary.json) is `index_file`,
    itself included; None when the file is missing or lists no outputs."""
    try:
        outputs = json.loads(index_file.read_text(encoding="utf-8"))["outputs"]
        return {index_file.name, *(str(name).split("/")[0] for name in outputs)}
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
