"""cola.evaluate.sandbox: model-generated programs run only when asked, in a child process with limits and
(where the OS permits) namespaces; probes that try to escape are contained, right programs still pass."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import pytest

from cola.errors import ColaError
from cola.evaluate import sandbox as sandbox_module
from cola.evaluate.generation import humaneval_program
from cola.evaluate.sandbox import ExecutionLimits, Outcome, Sandbox, run_program, weak_isolation
from tests.conftest import SHARED_DATA, byte_tokenizer, needs_shared_data, tiny_llama

ADD = {"task_id": "t/add", "prompt": "def add(a: int, b: int) -> int:\n    \"\"\"Sum.\"\"\"\n", "entry_point": "add",
       "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}
WORDS = {"task_id": "t/words", "prompt": "from typing import List\n\n\ndef words(s: str) -> List[str]:\n",
         "entry_point": "words", "test": "def check(candidate):\n    assert candidate('a b  c') == ['a', 'b', 'c']\n"}


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox.prepare(ExecutionLimits(wall_seconds=10, cpu_seconds=2, memory_mb=512, file_size_mb=1))


@pytest.fixture(scope="module")
def isolated(sandbox: Sandbox) -> Sandbox:
    """The sandbox, where this machine grants namespaces (Linux, root or unprivileged user namespaces)."""
    if weak_isolation(sandbox.isolation):
        pytest.skip(f"namespaces not permitted here: {'; '.join(weak_isolation(sandbox.isolation))}")
    return sandbox


def test_right_completions_pass_and_wrong_ones_fail(sandbox: Sandbox):
    assert sandbox.run(humaneval_program(ADD, "    return a + b\n")) == Outcome(True, "passed", sandbox.isolation)
    assert sandbox.run(humaneval_program(WORDS, "    return s.split()\n")).passed
    wrong = sandbox.run(humaneval_program(ADD, "    return a - b\n"))
    assert (wrong.passed, wrong.status) == (False, "failed: AssertionError")
    broken = sandbox.run(humaneval_program(ADD, "    return a +\n"))
    assert not broken.passed and broken.status.startswith("failed: SyntaxError")


def test_pass_at_1_counts_the_programs_that_passed(monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox):
    """Fixed completions (instead of a random model's bytes): 2 of the 4 are right, so pass@1 is 0.5."""
    from cola.evaluate import generation
    from cola.evaluate.tasks import AnswerItem

    completions = ["    return a + b\n", "    return s.split(' ')\n", "    return b + a\n", "    exit(0)\n"]
    monkeypatch.setattr(generation, "greedy_generate",
                        lambda *a, **k: generation.Generated(completions, forward_tokens=40, new_tokens=20))
    items = [AnswerItem(p["prompt"], "", record=p) for p in (ADD, WORDS, ADD, ADD)]
    score = generation.humaneval_pass_at_1(tiny_llama(), byte_tokenizer(), items, sandbox=sandbox)
    assert score.value == 0.5 and score.items == 4
    assert score.statuses == ["passed", "failed: AssertionError", "passed", "failed: SystemExit: 0"]
    assert generation.outcome_counts(score.statuses) == {"passed": 2, "failed": 2}


@pytest.mark.parametrize("ending", ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "exit()\n",
                                    "raise SystemExit\n"])
def test_a_program_that_exits_before_its_tests_end_does_not_pass(sandbox: Sandbox, ending: str):
    program = humaneval_program(ADD, "    return a - b\n").replace("check(add)", ending + "check(add)")
    outcome = sandbox.run(program)
    assert not outcome.passed
    assert outcome.status.startswith("failed: SystemExit") or outcome.status == "exited before its end (status 0)"


def test_runaway_programs_are_stopped_by_their_limits(sandbox: Sandbox):
    start = time.perf_counter()
    assert sandbox.run("while True:\n    pass\n").status == "CPU time limit (2 s)"
    assert sandbox.run("x = bytearray(2 << 30)\n").status == "failed: MemoryError"  # 2 GiB of 512 MiB
    big = sandbox.run("open('big.bin', 'wb').write(b'0' * (4 << 20))\n")  # 4 MiB of 1 MiB
    assert not big.passed and "File too large" in big.status
    assert time.perf_counter() - start < 30
    short = Sandbox(ExecutionLimits(wall_seconds=1), sandbox.drop_user, sandbox.isolation)
    start = time.perf_counter()
    assert short.run("import time\ntime.sleep(60)\n").status == "timed out"
    assert time.perf_counter() - start < 10


def test_the_environment_is_scrubbed(monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox):
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    assert not sandbox.run("import os\nassert os.environ.get('HF_TOKEN')\n").passed
    assert sandbox.run("import os\nassert 'HF_TOKEN' not in os.environ and os.environ['HOME'] == os.getcwd()\n").passed


@pytest.fixture()
def open_folder() -> Path:
    """A folder anyone may write to (as /tmp is), so only the sandbox's read-only view can stop a write."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="cola-probe-", dir="/tmp" if os.path.isdir("/tmp") else None))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def test_the_issue_probe_is_contained(isolated: Sandbox, open_folder: Path):
    """The probe of issue 17: a shell command through posix.system, a file written outside its temporary
    directory, a socket opened to the network. Each program asserts its attempt worked, so a contained
    attempt fails, and nothing appears outside."""
    tmp_path = open_folder
    outside = tmp_path / "OUTSIDE"
    shell = isolated.run(f"import posix\nassert posix.system('touch {outside}') == 0\n")
    write = isolated.run(f"open({str(tmp_path / 'written')!r}, 'w').write('escaped')\n")
    network = isolated.run("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=3).close()\n")
    assert not shell.passed and not outside.exists()
    assert not write.passed and "Read-only file system" in write.status and not (tmp_path / "written").exists()
    assert not network.passed and "Network is unreachable" in network.status
    # inside its own working directory a program may write (a private tmpfs, discarded afterwards)
    assert isolated.run("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'\n").passed
    assert isolated.isolation["network"].startswith("none") and isolated.isolation["filesystem"].startswith("read-only")


def test_processes_a_program_starts_die_with_it(isolated: Sandbox):
    marker = f"{os.getpid()}.{time.time_ns() % 100000}"
    outcome = isolated.run("import subprocess\n"
                           f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n")
    assert outcome.passed
    time.sleep(0.2)
    alive = [p for p in Path("/proc").iterdir() if p.name.isdigit() and marker in _cmdline(p)]
    assert alive == []
    assert isolated.run("import os\nassert os.getpid() == 1 and len([p for p in os.listdir('/proc') "
                        "if p.isdigit()]) == 1\n").passed  # PID 1 of its namespace, alone in its /proc
    # a program that leaves the process group and outlives its timeout: it and its children are killed
    short = Sandbox(ExecutionLimits(wall_seconds=2), isolated.drop_user, isolated.isolation)
    outcome = short.run("import os, subprocess, time\nos.setsid()\n"
                        f"subprocess.Popen(['sleep', '{marker}1'])\ntime.sleep(60)\n")
    assert outcome.status == "timed out"
    time.sleep(0.2)
    assert [p for p in Path("/proc").iterdir() if p.name.isdigit() and f"{marker}1" in _cmdline(p)] == []


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_home_directories_are_hidden_but_python_still_imports(isolated: Sandbox):
    probe = ("import os, json, hashlib, typing\n"
             "visible = sorted(os.listdir('/root')) if os.path.isdir('/root') else []\n"
             "assert '.bash_history' not in visible and '.cache' not in visible, visible\n")
    assert isolated.run(probe).passed
    assert isolated.isolation["user"].startswith(("nobody", "uid"))


def test_without_namespaces_the_limits_still_apply_and_the_report_says_so():
    limits = ExecutionLimits(cpu_seconds=1, wall_seconds=10)
    outcome = run_program("while True:\n    pass\n", limits, namespaces=False)
    assert outcome.status == "CPU time limit (1 s)"
    assert outcome.isolation["network"] == "host network (not asked for)"
    assert weak_isolation(outcome.isolation)[0] == "network: host network (not asked for)"


def test_weaker_isolation_is_logged_once_and_a_broken_sandbox_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture):
    weak = {"network": "host network (unshare: Operation not permitted)", "filesystem": "read-only; working "
            "directory: a private 64 MiB tmpfs, discarded", "processes": "own PID namespace: ...", "user": "nobody"}
    monkeypatch.setattr(sandbox_module, "run_program", lambda *a, **k: Outcome(True, "passed", weak))
    with caplog.at_level("WARNING", logger="cola.evaluate.sandbox"):
        Sandbox.prepare()
    assert [r.getMessage() for r in caplog.records] == [
        "generated code runs with weaker isolation than cola sets up where the OS allows it: network: host network "
        "(unshare: Operation not permitted)"]
    monkeypatch.setattr(sandbox_module, "run_program",
                        lambda *a, **k: Outcome(False, "failed: ModuleNotFoundError: No module named 'math'", weak))
    with pytest.raises(ColaError, match=r"^generated code cannot run here: a trivial test program failed in the "
                                        r"sandbox \(failed: ModuleNotFoundError: No module named 'math'\)$"):
        Sandbox.prepare()


@pytest.mark.parametrize("field, value", [("wall_seconds", 0), ("cpu_seconds", 1.5), ("memory_mb", -1),
                                          ("processes", True)])
def test_limits_must_be_positive(field: str, value: object):
    with pytest.raises(ColaError, match=f"execution limit {field} must be a positive"):
        ExecutionLimits(**{field: value})


@needs_shared_data
def test_humaneval_canonical_solutions_pass_and_empty_bodies_fail(sandbox: Sandbox):
    with gzip.open(SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as fh:
        problems = [json.loads(line) for line in fh][:12]
    assert [sandbox.run(humaneval_program(p, p["canonical_solution"])).status for p in problems] == ["passed"] * 12
    assert not any(sandbox.run(humaneval_program(p, "    pass\n")).passed for p in problems)
