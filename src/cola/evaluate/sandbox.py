"""Run model-generated Python programs (HumanEval pass@1) in a child process with limits and, where the
operating system allows it, namespaces. Nothing runs unless the caller opted in (`--confirm_run_unsafe_code`).

Each program gets a fresh process (`python -I` running `sandbox_child.py`, which imports nothing of cola) in its
own session, a scrubbed environment, its own temporary working directory, a wall-clock timeout after which
its whole process group is killed, and resource limits (CPU seconds, address space, file size, processes, open
files). On Linux, where `unshare` is permitted (as root, or as any user where unprivileged user namespaces are
on), it also runs without network (a new network namespace), as PID 1 of a new PID namespace (every process
it starts dies with it), on a read-only view of the file system with a private tmpfs as its working directory,
with /root, /home and the user's home hidden, and as nobody (when cola runs as root). What applied is
reported per task (`TaskResult.execution["isolation"]`) and a weaker fallback is logged as a warning.

What is not isolated: the program can read every file the user (nobody, when cola runs as root) can read
outside the hidden home directories, it shares the kernel with everything else (a kernel exploit escapes),
and a program written to inspect its own harness could fake a pass. For untrusted models use a container
or a VM as well.

>>> sandbox = Sandbox.prepare()                                             # doctest: +SKIP
>>> sandbox.run("def f():\\n    return 1\\nassert f() == 1\\n").passed       # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from cola.errors import ColaError

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("sandbox_child.py")
PREFIX = "cola-sandbox:"  # the child's own status lines on stderr
CONFIRM_FLAG = "--confirm_run_unsafe_code"
# A trivial HumanEval-like program: if it does not pass, nothing would (an unreadable interpreter, say).
CANARY = ("import collections, functools, hashlib, heapq, itertools, math, re, string, typing\n"
          "def square(x: int) -> int:\n    return x * x\n"
          "def check(candidate):\n    assert candidate(3) == 9\n"
          "check(square)\n")


@dataclass(frozen=True)
class ExecutionLimits:
    """Limits on each program: wall-clock and CPU seconds, address space, largest file written, processes,
    open files, and the size of its private scratch tmpfs (MiB)."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 1024
    file_size_mb: int = 16
    processes: int = 32
    open_files: int = 64
    scratch_mb: int = 64

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            kinds = (int, float) if field.type == "float" else (int,)
            if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
                raise ColaError(f"execution limit {field.name} must be a positive "
                                f"{'number' if field.type == 'float' else 'whole number'}, got {value!r}")

    def as_child_limits(self) -> dict[str, int]:
        return {"cpu_seconds": self.cpu_seconds, "memory_mb": self.memory_mb, "file_size_mb": self.file_size_mb,
                "processes": self.processes, "open_files": self.open_files}


@dataclass(frozen=True)
class Outcome:
    """One program's result: passed only when it ran to its end without an exception."""

    passed: bool
    status: str                  # passed · failed: <exception> · timed out · killed by SIGXCPU · …
    isolation: dict[str, str]    # what applied, in words (network, filesystem, processes, limits, user)


def _python_folders() -> list[str]:
    """The interpreter's folders, bound back into the sandbox when they sit under a hidden home directory."""
    paths = {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.realpath(sys.executable))}
    return sorted({os.path.realpath(p) for p in paths if p})


def _hidden_folders() -> list[str]:
    import pwd

    homes = {"/root", "/home"}
    try:
        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass  # a uid without a passwd entry has no home to hide
    return sorted(os.path.realpath(h) for h in homes if h and h != "/")


def _environment(workdir: Path) -> dict[str, str]:
    """Nothing of the parent's environment (tokens, proxies, paths): only what Python needs."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir),
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1"}


def _read_available(fd: int) -> str:
    """What the child wrote to the result pipe, without waiting for writers that escaped the kill."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc; none elsewhere). The launcher forks once, so its only
    child is the program as PID 1 of its namespace: a fact the program cannot forge, unlike what it writes."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[1] == str(pid):
            found.append(int(entry.parent.name))
    return found


def _kill(pid: int, *, group: bool) -> None:
    try:
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def _messages(lines: list[str]) -> list[dict]:
    """The JSON lines on the result pipe (the child's isolation report first); anything else is ignored."""
    found = []
    for line in lines:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            found.append(message)
    return found


def _status(stderr_tail: str, returncode: int) -> str:
    reported = [line.removeprefix(PREFIX).strip() for line in stderr_tail.splitlines() if line.startswith(PREFIX)]
    if reported:
        return reported[-1]
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited before its end (status {returncode})"


def run_program(program: str, limits: ExecutionLimits, *, drop_user: bool = True,
                namespaces: bool = True) -> Outcome:
    """Run `program` once under `limits` in a fresh child (see the module docstring); never raises for what the
    program does. `namespaces=False` skips them (the fallback where the OS refuses them, for tests)."""
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="cola-exec-") as tmp:
        os.chmod(tmp, 0o711)  # nobody must reach its working directory, not list the folder
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        os.chmod(workdir, 0o777)
        config = {"program": program, "nonce": nonce, "workdir": str(workdir), "scratch_mb": limits.scratch_mb,
                  "limits": limits.as_child_limits(), "drop_user": drop_user, "namespaces": namespaces,
                  "uid": os.getuid(), "hide": _hidden_folders(), "keep": _python_folders()}
        read_fd, write_fd = os.pipe()
        with open(Path(tmp) / "stderr", "w+b") as err:
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-B", str(CHILD), str(write_fd)],
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                                        pass_fds=(write_fd,), cwd=workdir, env=_environment(workdir),
                                        start_new_session=True)
            except BaseException:
                os.close(read_fd)
                raise
            finally:
                os.close(write_fd)
            timed_out = False
            try:
                proc.communicate(json.dumps(config).encode(), timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
                for child in _children(proc.pid):
                    _kill(child, group=False)  # PID 1 of the program's namespace: everything in it dies
            finally:
                lines = _read_available(read_fd).splitlines()
                os.close(read_fd)
            _kill(proc.pid, group=True)  # the process group, and whatever of it is left after a normal exit
            proc.wait()
            err.seek(max(0, err.seek(0, os.SEEK_END) - 4000))
            tail = err.read().decode("utf-8", errors="replace")
    isolation = next((m["isolation"] for m in _messages(lines) if isinstance(m.get("isolation"), dict)), {})
    passed = not timed_out and nonce in lines
    status = "passed" if passed else "timed out" if timed_out else _status(tail, proc.returncode)
    return Outcome(passed, status, isolation)


def weak_isolation(isolation: dict[str, str]) -> list[str]:
    """The parts of `isolation` that fell back to less than cola sets up where the OS allows it."""
    strong = {"network": "none", "filesystem": "read-only; working directory: a private",
              "processes": "own PID namespace:", "user": ("nobody", "uid")}
    weak = []
    for key, start in strong.items():
        text = isolation.get(key, "unknown")
        if not text.startswith(start) or any(sign in text for sign in ("(root", "root of its own", "visible (")):
            weak.append(f"{key}: {text}")
    return weak


@dataclass(frozen=True)
class Sandbox:
    """How programs run here, found once by running a trivial program: `Sandbox.prepare()`, then `run(program)`."""

    limits: ExecutionLimits
    drop_user: bool
    isolation: dict[str, str]

    @classmethod
    def prepare(cls, limits: ExecutionLimits | None = None) -> Sandbox:
        """Run the canary program (as nobody when root, else as root if nobody cannot read the interpreter);
        ColaError when it cannot pass, since every program would then fail and pass@1 would read 0."""
        if os.name != "posix":
            raise ColaError(f"running generated code needs Linux or macOS (resource limits); this is {sys.platform}")
        limits = limits or ExecutionLimits()
        outcome, drop_user = run_program(CANARY, limits), True
        if not outcome.passed and os.geteuid() == 0:
            retry = run_program(CANARY, limits, drop_user=False)
            if retry.passed:
                outcome, drop_user = retry, False
        if not outcome.passed:
            raise ColaError(f"generated code cannot run here: a trivial test program failed in the sandbox "
                            f"({outcome.status})")
        weak = weak_isolation(outcome.isolation)
        if weak:
            log.warning("generated code runs with weaker isolation than cola sets up where the OS allows it: %s",
                        "; ".join(weak))
        return cls(limits, drop_user, outcome.isolation)

    def run(self, program: str) -> Outcome:
        return run_program(program, self.limits, drop_user=self.drop_user)
