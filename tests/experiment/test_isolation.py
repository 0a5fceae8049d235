"""cola experiment across processes: an isolated cell dies with its runner, and a cell is locked while it runs.

Each test starts real runners (`tests.experiment.jobs.main`) in child processes on a small grid whose cells
are stand-in jobs: one blocks until the test releases it, one starts a grandchild and sleeps for minutes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cola.experiment import runner
from cola.experiment.runner import Cell, Experiment
from cola.atomic import read_json
from cola.experiment.store import exclusive_lock

from tests.experiment import jobs

REPO = Path(__file__).resolve().parents[2]
GONE_SECONDS = 5.0
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; process groups")


def start_runner(work_dir: Path, job: str, seeds: str = "0") -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    code = "import sys; from tests.experiment.jobs import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, str(work_dir), job, seeds], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def starts(work_dir: Path) -> list[dict]:
    path = work_dir / jobs.STARTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_starts(work_dir: Path, count: int, runners: list[subprocess.Popen[str]]) -> list[dict]:
    deadline = time.monotonic() + jobs.STARTS_TIMEOUT
    while len(found := starts(work_dir)) < count:
        for proc in runners:
            if proc.poll() is not None:
                raise AssertionError(f"a runner ended early: {proc.communicate()}")
        assert time.monotonic() < deadline, f"only {len(found)} of {count} cells started"
        time.sleep(0.05)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its new parent, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_gone(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + GONE_SECONDS
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["kill", "term", "int"])
def test_a_cell_process_and_what_it_started_end_with_the_runner(tmp_path, monkeypatch, sig):
    work = tmp_path / "work"
    proc = start_runner(work, "slow_cell_with_grandchild")
    try:
        (start,) = wait_for_starts(work, 1, [proc])
        assert start["pgid"] == start["pid"] != os.getpgrp()  # the cell leads a process group of its own
        assert start["ppid"] == proc.pid
        assert alive(start["pid"]) and alive(start["grandchild"])
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=30)
        assert wait_gone([start["pid"], start["grandchild"]]) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in (s.get(key) for s in starts(work) for key in ("pid", "grandchild")):
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert code == {signal.SIGKILL: -9, signal.SIGTERM: 143, signal.SIGINT: 130}[sig], err
    assert "Traceback" not in err
    assert read_json(work / "cells" / "random_c4__rtn4__seed0.json") is None  # not finished, not failed

    # the killed run's lock is stale: a rerun at once runs the cell (here with a quick stand-in job)
    monkeypatch.setattr(runner, "_cell_job", jobs.quick_cell)
    monkeypatch.setattr(runner, "_dense_job", jobs.dense_job)
    counts = Experiment(jobs.small_config(work, isolate=False), work).run()
    assert counts == {"skipped": 0, "ok": 1, "failed": 0, "busy": 0}


def test_two_runners_never_run_the_same_cell(tmp_path):
    work = tmp_path / "work"
    first = start_runner(work, "blocking_cell", "0,1,2")
    second = None
    try:
        wait_for_starts(work, 1, [first])  # the first runner holds cell seed0, blocked
        second = start_runner(work, "blocking_cell", "0,1,2")
        found = wait_for_starts(work, 2, [first, second])  # the second skipped seed0 and started seed1
        assert [s["cell"] for s in found] == ["random_c4__rtn4__seed0", "random_c4__rtn4__seed1"]
        (work / jobs.RELEASE_FILE).touch()
        outputs = [proc.communicate(timeout=120) for proc in (first, second)]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    counts = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    cells = [s["cell"] for s in starts(work)]
    assert sorted(cells) == [f"random_c4__rtn4__seed{k}" for k in range(3)]  # each cell started exactly once
    assert sum(c["ok"] for c in counts) == 3 and sum(c["failed"] for c in counts) == 0
    assert counts[1]["busy"] >= 1  # seed0 was the first runner's
    assert "cell random_c4__rtn4__seed0 is running in another process (pid" in outputs[1][1]
    for k in range(3):
        assert read_json(work / "cells" / f"random_c4__rtn4__seed{k}.json")["status"] == "ok"


def test_a_lock_is_exclusive_across_processes_and_dropped_when_its_holder_dies(tmp_path, caplog):
    lock = tmp_path / "locks" / "cell.lock"
    code = ("import sys, time; from pathlib import Path; from cola.experiment.store import exclusive_lock\n"
            "with exclusive_lock(Path(sys.argv[1]), what='x', wait=False) as fd:\n"
            "    print('held', flush=True); time.sleep(600)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with exclusive_lock(lock, what="cell a__b__seed0", wait=False) as fd:
            assert fd is None
        assert f"cell a__b__seed0 is running in another process (pid {holder.pid}): skipped here" in caplog.text
    finally:
        holder.kill()
        holder.wait()
    assert lock.read_text().strip() == str(holder.pid)  # the dead holder's pid is still in the file...
    with exclusive_lock(lock, what="cell a__b__seed0", wait=False) as fd:  # ...and blocks nothing
        assert fd is not None
        assert lock.read_text().strip() == str(os.getpid())


def test_an_isolated_cell_holds_its_lock_while_it_runs(tmp_path):
    """The runner hands the held lock's descriptor to the cell's process, so the lock lasts while the cell
    runs even if the runner is gone."""
    config = jobs.small_config(tmp_path, isolate=True)
    experiment = Experiment(config, tmp_path / "work")
    path = experiment.lock_file("probe")
    with exclusive_lock(path, what="probe", wait=False) as fd:
        record = experiment._execute(jobs.probe_lock_job, experiment.path("probe.json"), {"status": "failed"},
                                     str(path), lock=fd)
    assert record == {"status": "ok", "holds_lock": True}


def test_cells_are_keyed_as_before():
    assert Cell("cola", "wanda50", 2).key == "cola__wanda50__seed2"


def test_a_file_system_without_locks_is_a_one_line_error(tmp_path, monkeypatch):
    import errno

    from cola.errors import ColaError
    from cola.experiment import store

    def no_locks(_fd: int, _operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(store.fcntl, "flock", no_locks)
    with pytest.raises(ColaError, match=r"cannot lock .*x.lock: No locks available; the work directory needs a "
                                        r"file system with flock locks"):
        with exclusive_lock(tmp_path / "x.lock", what="x", wait=False):
            pass
