"""Atomic file writes: a reader (another run included) sees the old file or the new one, never half of one.

Every file cola rewrites in place that others may read while it does (experiment records, the feature cache,
a scored manifest, CALDERA's factors) goes through `atomic_path`: written under a temporary name in the same
folder, then renamed over the target (`os.replace`, atomic on one file system); a failure leaves the old file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block ends without an error,
    removed when it raises. The folder is created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would hide outputs from the user's group
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process's umask, read once (by setting it, then restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    """`text` as UTF-8 at `path`, atomically (`atomic_path`); newlines written as given."""
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as stream:
        stream.write(text)


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON, written atomically (`write_text`)."""
    write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
