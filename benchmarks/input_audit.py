"""Run every bad input cola knows of and count clean one-line errors against tracebacks and silent acceptance.

Each case (benchmarks/audit/cases_*.py) is run through the real `cola` command line (or the Python API) in a
child process, offline. Outcomes:
- clean: the expected outcome; for errors, a non-zero exit whose stderr holds exactly one `cola: error:` line
  (`cola CMD: error:` from the flag parser), containing the case's `match` text, and no traceback;
- traceback: a Python traceback reached the user;
- silent: a bad input was accepted (exit 0);
- wrong: some other failure (an error without cola's line, the wrong message, a failed extra check);
- timeout.

Run from the repository root: `.venv/bin/python benchmarks/input_audit.py [-k SUBSTRING] [-v]`.
Exits 1 when any case is not clean. The next audit starts here: add a case to a cases_*.py module.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit.case import Case, Fixtures, run_api, run_cola  # noqa: E402
from cola.export import cpu_model  # noqa: E402


def load_cases() -> list[tuple[str, Case]]:
    folder = Path(__file__).resolve().parent / "audit"
    cases = []
    for module_path in sorted(folder.glob("cases_*.py")):
        module = importlib.import_module(f"audit.{module_path.stem}")
        cases.extend((module_path.stem.removeprefix("cases_"), case) for case in module.CASES)
    return cases


ERROR_LINE = re.compile(r"cola( [a-z]+)?: error:")  # cola's own, or argparse's for a subcommand's flags


def classify(case: Case, result: subprocess.CompletedProcess[str], tmp: Path) -> tuple[str, str]:
    """(outcome, the line that shows it)."""
    err = result.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    shown = errors[0] if errors else (lines[-1] if lines else f"exit {result.returncode}, no output")
    if "Traceback (most recent call last)" in err:
        return "traceback", lines[-1] if lines else ""
    if case.expect == "ok":
        outcome = "clean" if result.returncode == 0 else "wrong"
    elif result.returncode == 0:
        return "silent", "exit 0"
    elif len(errors) != 1:
        outcome = "wrong"
    elif case.match and case.match.lower() not in errors[0].lower():
        outcome, shown = "wrong", f"{errors[0]}  [expected to mention {case.match!r}]"
    else:
        outcome = "clean"
    if outcome == "clean" and case.check is not None and (problem := case.check(tmp)):
        return "wrong", problem
    return outcome, shown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="run only cases whose area/name contains this")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case's line, not only failures")
    args = parser.parse_args()
    cases = [(area, c) for area, c in load_cases() if args.k in f"{area}/{c.name}"]
    print(f"{len(cases)} cases; python {platform.python_version()}, CPU: {cpu_model()}")
    counts: Counter[str] = Counter()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cola-audit-") as root:
        fixtures = Fixtures(Path(root))
        for index, (area, case) in enumerate(cases):
            tmp = Path(root) / f"case{index}"
            tmp.mkdir()
            try:
                built = case.build(tmp, fixtures)
                result = (run_api(built, cwd=tmp, timeout=case.timeout) if case.api
                          else run_cola(built, cwd=tmp, timeout=case.timeout))
                outcome, line = classify(case, result, tmp)
            except subprocess.TimeoutExpired:
                outcome, line = "timeout", f"over {case.timeout:.0f} s"
            counts[outcome] += 1
            if args.verbose or outcome != "clean":
                print(f"{outcome:9} {area}/{case.name}: {line[:200]}")
    total = sum(counts.values())
    print(f"\n{counts['clean']} of {total} clean; traceback {counts['traceback']}, silent {counts['silent']}, "
          f"wrong {counts['wrong']}, timeout {counts['timeout']} ({time.perf_counter() - start:.0f} s)")
    return 0 if counts["clean"] == total else 1


if __name__ == "__main__":
    sys.exit(main())
