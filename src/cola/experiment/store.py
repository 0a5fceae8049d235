"""The work directory's safety rules: plain names, paths confined to the directory, atomic writes, OS locks.

Every path the experiment writes or deletes comes from `inside(root, ...)`, which resolves it (following
symbolic links) and refuses anything outside `root`; labels that become folder and file names must be plain
names (`plain_name`), so a label such as `../../victim` is an error when the config loads, before anything
runs. Locks are `flock` locks on files under `locks/`: the kernel drops them when their holder dies, so a lock
left by a killed run never blocks the next one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cola.errors import ColaError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not protected against each other there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

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


def write_text(path: Path, text: str) -> None:
    """Atomic: a reader (another run included) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                     encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(fh.name, path)


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON, written atomically (`write_text`)."""
    write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


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
