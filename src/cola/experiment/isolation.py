"""A cell in a process of its own: a fresh interpreter in its own process group, ended with its parent.

The child (spawned, not forked: no copied locks or CUDA state) leads a new process group, so the parent can
end it together with whatever it started (`end_group`). It dies with the parent however the parent ends:
- SIGTERM or SIGINT (Ctrl-C) of the parent: the parent ends the child's group before it exits
  (`sigterm_exits` turns SIGTERM into SystemExit, so the cleanup runs; SIGINT is KeyboardInterrupt);
- SIGKILL of the parent (or any other death): on Linux the kernel sends the child SIGTERM
  (prctl PR_SET_PDEATHSIG); everywhere, a thread of the child polls its parent's pid. Either way the child's
  thread kills the child's whole group with SIGKILL. A SIGTERM wakes that thread at once through the signal
  wakeup descriptor, so it acts even while the main thread is inside a long native call.
Without this, a killed `cola experiment` left its cell running for minutes, and a rerun started at once
worked on the same cell at the same time.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1          # <linux/prctl.h>
PARENT_POLL_SECONDS = 0.5


class InheritedFd:
    """A file descriptor handed to a spawned child: the child's copy shares the open file (and its flock)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Callable[[Any], int], tuple[Any]]:
        from multiprocessing import reduction

        # pickled while the child is spawned: the spawning Popen passes the descriptor to the new process
        return _adopt_fd, (reduction.DupFd(self.fd),)


def _adopt_fd(duplicate: Any) -> int:
    return duplicate.detach()


def run_in_process_group(target: Callable[..., None], args: tuple[Any, ...], *,
                         inherit: tuple[int, ...] = ()) -> int:
    """Run `target(*args)` in a spawned child that leads its own process group and dies with this process;
    wait for it and return its exit code. `inherit`: descriptors the child keeps open while it runs (a lock).
    An exception while waiting (KeyboardInterrupt, SystemExit from SIGTERM) ends the child's group first."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_group_entry, args=(target, os.getpid(),
                                                          tuple(InheritedFd(fd) for fd in inherit), *args))
    process.start()
    try:
        process.join()
    except BaseException:
        end_group(process)
        raise
    return process.exitcode if process.exitcode is not None else -1


def end_group(process: multiprocessing.process.BaseProcess) -> None:
    """SIGKILL the child's process group (the child and what it started), then reap the child."""
    alive = process.exitcode is None  # a live child is not reaped yet, so its pid cannot belong to another
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        if alive:  # it has not made its own group yet
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
    process.join()
    log.warning("ended the cell's process %s and its group", process.pid)


def _group_entry(target: Callable[..., None], parent_pid: int, inherited: tuple[int, ...], *args: Any) -> None:
    """The child's first code: its own group, bound to the parent's life. The `inherited` descriptors (already
    adopted when the arguments were unpickled) stay open until the process exits, releasing what they hold."""
    bind_to_parent(parent_pid)
    target(*args)


def bind_to_parent(parent_pid: int) -> None:
    """Lead a new process group, and kill it when `parent_pid` dies or this process gets SIGTERM."""
    os.setpgid(0, 0)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: end_own_group())
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %s; polling the parent only", ctypes.get_errno())
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        end_own_group()
    threading.Thread(target=_watch_parent, args=(parent_pid, read_end), name="cola-parent-watch",
                     daemon=True).start()


def _watch_parent(parent_pid: int, wakeup: int) -> None:
    while True:
        ready, _, _ = select.select([wakeup], [], [], PARENT_POLL_SECONDS)
        if ready and int(signal.SIGTERM) in os.read(wakeup, 256):
            end_own_group()
        if os.getppid() != parent_pid:
            end_own_group()


def end_own_group() -> None:
    """SIGKILL this process's group: this process and everything it started."""
    os.killpg(os.getpgrp(), signal.SIGKILL)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """While the block runs, SIGTERM raises SystemExit(143) so `finally` cleanups (ending a cell's group) run.

    Only in the main thread and only where SIGTERM still has its default action (an application's own
    handler is left alone).
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def exit_on_sigterm(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
