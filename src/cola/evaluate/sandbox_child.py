"""The child side of `cola.evaluate.sandbox`: isolate this process, then run one untrusted Python program.

Started as `python -I sandbox_child.py RESULT_FD`, never imported by cola. It reads its settings as one JSON
object on stdin, sets up what isolation the operating system permits, writes one JSON line describing it to
RESULT_FD, runs the program and writes the nonce it was given to RESULT_FD only if the program ran to its
end without an exception (so `exit(0)` or `os._exit(0)` is a failure, not a pass). Standard library only:
the untrusted program runs in this interpreter, which must not hold cola or anything of the parent's.

Order of the steps (Linux):
1. new mount, network, PID, IPC and UTS namespaces (as root), or the same inside a new user namespace
   (as any user, where the kernel allows unprivileged user namespaces);
2. mounts private to this namespace: tmpfs over /root, /home and the user's home directory (the Python
   installation's own folders bound back read-only), the whole tree read-only, a fresh tmpfs as the working
   directory and over /dev/shm;
3. fork: the program runs as PID 1 of the new PID namespace (with its own /proc), so every process it
   starts dies with it; this process waits and reports a death by signal;
4. resource limits (CPU seconds, address space, file size, processes, open files, no core files);
5. as root: drop to nobody (65534); in a user namespace: enter a nested one that owns none of the
   namespaces above, so the program cannot undo the mounts; no_new_privs in both cases;
6. run the program.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import traceback

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 442, -100, 0x8000, 1, 2
PR_SET_NO_NEW_PRIVS = 38
NOBODY = 65534
PREFIX = "cola-sandbox:"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _unshare(flags: int) -> None:
    if hasattr(os, "unshare"):  # Python >= 3.12
        os.unshare(flags)
    else:
        _check(_libc().unshare(flags))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def c(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    _check(_libc().mount(c(source), c(target), c(fstype), ctypes.c_ulong(flags), c(data)))


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _read_only_tree(path: str) -> None:
    """Every mount at or under `path` read-only and nosuid, recursively (mount_setattr, Linux >= 5.12)."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    _check(_libc().syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), os.fsencode(path),
                           ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))))


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as fh:
        fh.write(text)


def _enter_namespaces(root: bool) -> tuple[str, str | None]:
    """('root' | 'user', None) when the namespaces were made, else ('', why not)."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.getuid(), os.getgid()
    reason = None
    for how, extra in (("root", 0), ("user", CLONE_NEWUSER)) if root else (("user", CLONE_NEWUSER),):
        try:
            _unshare(flags | extra)
        except OSError as exc:
            reason = f"unshare: {exc.strerror}"
            continue
        if extra:
            try:
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/uid_map", f"0 {uid} 1")
                _write("/proc/self/gid_map", f"0 {gid} 1")
            except OSError:
                pass  # unmapped (e.g. a security module forbids it): the mounts below fail and say so
        return how, None
    return "", reason


def _outermost(paths: list[str]) -> list[str]:
    """Paths not inside another path of the list, sorted."""
    chosen: list[str] = []
    for path in sorted(set(paths)):
        if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in chosen):
            chosen.append(path)
    return chosen


def _hide_homes(hidden: list[str], keep: list[str], workdir: str) -> list[str]:
    """tmpfs over each folder in `hidden`, with the folders of `keep` under it bound back; returns what was hidden."""
    done = []
    for top in _outermost([h for h in hidden if os.path.isdir(h)]):
        inside = _outermost([k for k in keep if k.startswith(top.rstrip("/") + "/") and os.path.isdir(k)])
        handles = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY)) for path in inside]
        _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for path, fd in handles:
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            os.close(fd)
        if workdir.startswith(top.rstrip("/") + "/"):
            os.makedirs(workdir, mode=0o777, exist_ok=True)
        done.append(top)
    return done


def _filesystem(config: dict) -> str:
    """Private mounts in the new mount namespace; returns what they achieved, in words."""
    workdir, scratch = config["workdir"], config["scratch_mb"]
    try:
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as exc:
        return f"writable wherever the user can write; working directory: a fresh temporary directory ({exc.strerror})"
    notes = []
    try:
        hidden = _hide_homes(config["hide"], config["keep"], workdir)
        notes.append("hidden: " + (", ".join(hidden) or "nothing") + " (the Python installation bound back)")
    except OSError as exc:
        notes.append(f"home directories visible ({exc.strerror})")
    try:
        _read_only_tree("/")
        head = "read-only"
    except OSError as exc:
        head = f"writable wherever the user can write (read-only remount: {exc.strerror})"
    try:
        _mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={scratch}m,mode=0777")
        notes.insert(0, f"working directory: a private {scratch} MiB tmpfs, discarded")
        if os.path.isdir("/dev/shm"):
            _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=1777")
    except OSError as exc:
        notes.insert(0, f"working directory: a fresh temporary directory ({exc.strerror})")
    return "; ".join([head, *notes, "everything else readable"])


def _no_namespaces(reason: str) -> dict[str, str]:
    return {"network": f"host network ({reason})",
            "filesystem": f"writable wherever the user can write; working directory: a fresh temporary "
                          f"directory ({reason})",
            "processes": f"host processes visible; a program that leaves its process group can outlive the "
                         f"timeout ({reason})"}


def isolate(config: dict) -> tuple[dict[str, str], str]:
    """Namespaces and mounts: (what applies, in words; 'root' or 'user' namespaces, or '' when none)."""
    kind, reason = ("", f"not Linux ({sys.platform})") if not sys.platform.startswith("linux") else \
        _enter_namespaces(os.geteuid() == 0)
    if not kind:
        return _no_namespaces(reason or ""), kind
    return {"network": "none (new network namespace, loopback down)", "filesystem": _filesystem(config),
            "processes": "own PID namespace: only the program's processes are visible, all die with it"}, kind


def set_limits(limits: dict[str, int], isolation: dict[str, str]) -> None:
    """RLIMIT_CPU (soft; SIGKILL a second later), AS, FSIZE, NPROC, NOFILE; no core files."""
    import resource

    applied, missing = [], []
    for name, key, unit in (("RLIMIT_CPU", "cpu_seconds", "s CPU"), ("RLIMIT_AS", "memory_mb", "MiB memory"),
                            ("RLIMIT_FSIZE", "file_size_mb", "MiB per file"),
                            ("RLIMIT_NPROC", "processes", "processes"), ("RLIMIT_NOFILE", "open_files", "open files"),
                            ("RLIMIT_CORE", None, "core files")):
        value = 0 if key is None else limits[key] * (1 << 20 if unit.startswith("MiB") else 1)
        hard = value + 1 if name == "RLIMIT_CPU" else value
        res = getattr(resource, name, None)
        try:
            if res is None:
                raise OSError(f"no {name}")
            resource.setrlimit(res, (value, hard))
            applied.append(f"{limits[key]} {unit}" if key else "no core files")
        except (OSError, ValueError) as exc:
            missing.append(f"{name} ({exc})")
    isolation["limits"] = ", ".join(applied) + (f"; not applied: {', '.join(missing)}" if missing else "")


def drop_privileges(kind: str, config: dict, isolation: dict[str, str]) -> None:
    """As root: become nobody. In a user namespace: a nested one without capabilities. Then no_new_privs."""
    if kind == "user":
        try:
            _unshare(CLONE_NEWUSER)  # owns none of the namespaces above: the mounts cannot be undone
            isolation["user"] = f"uid {config['uid']} (nested user namespace without capabilities)"
        except OSError as exc:
            isolation["user"] = f"uid {config['uid']}, root of its own user namespace (nested unshare: {exc.strerror})"
    elif os.geteuid() == 0 and config["drop_user"]:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        isolation["user"] = "nobody (65534): no access to root's files or processes"
    else:
        isolation["user"] = f"uid {os.geteuid()}" + (" (root, as nobody cannot read the Python installation; "
                                                    "the process limit does not bind root)"
                                                    if os.geteuid() == 0 else "")
    if sys.platform.startswith("linux"):
        _check(_libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))


def wait_for_program(pid: int) -> None:
    """The PID namespace's outside parent: exit as the program did, reporting a death by signal."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        os.write(2, f"\n{PREFIX} killed by {name}\n".encode())
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status))


def report_cpu_limit(seconds: int) -> None:
    """SIGXCPU at the soft CPU limit says so (PID 1 of a namespace would otherwise ignore it until SIGKILL)."""
    def handler(_signum: int, _frame: object) -> None:
        os.write(2, f"\n{PREFIX} CPU time limit ({seconds} s)\n".encode())
        os._exit(1)

    if hasattr(signal, "SIGXCPU"):
        signal.signal(signal.SIGXCPU, handler)


def run_program(source: str, nonce: str, result_fd: int) -> None:
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(source, "<program>", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - the program's own failure is the result being measured
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
        os.write(2, f"\n{PREFIX} failed: {text[-1] if text else type(exc).__name__}\n"[:2000].encode(errors="replace"))
        os._exit(1)
    os.write(result_fd, f"{nonce}\n".encode())
    os._exit(0)


def main() -> None:
    result_fd = int(sys.argv[1])
    config = json.loads(sys.stdin.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    isolation, kind = isolate(config) if config["namespaces"] else (_no_namespaces("not asked for"), "")
    if kind:  # a new PID namespace: its first process is the program's
        pid = os.fork()
        if pid:
            wait_for_program(pid)
        try:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError as exc:
            isolation["processes"] = f"own PID namespace, but the host's /proc is visible ({exc.strerror})"
    set_limits(config["limits"], isolation)
    report_cpu_limit(config["limits"]["cpu_seconds"])
    drop_privileges(kind, config, isolation)
    os.chdir(config["workdir"])
    os.write(result_fd, (json.dumps({"isolation": isolation}) + "\n").encode())
    source, nonce = config.pop("program"), config.pop("nonce")
    del config
    run_program(source, nonce, result_fd)


if __name__ == "__main__":
    main()
