"""Kill a real `cola curate` during Stage 3's extraction, run it again, and count what the rerun computes
(issue 23: a killed and resumed run gives byte-identical outputs and recomputes at most one chunk).

Three runs of the same command on the embedded model (SmolLM2-135M) and the shared data: one uninterrupted; one
killed with SIGKILL (the whole process group, no clean-up) once `--kill_after` chunks of the pool's features are
in its work folder; and the same command again on that work folder. The pool is 2 sources x `--candidates`
candidates and the chunk is lowered from 4,096 to `--chunk` candidates (feature_cache.CHUNK_CANDIDATES, set in
the child process) so that a pool this small has several chunks. Prints the chunks found at the kill, the
rerun's own log line (chunks read from the work folder, chunks computed), the time of each run, and whether
the outputs are byte-identical to the uninterrupted run's.

    .venv/bin/python benchmarks/resume_kill.py                  # 600 candidates, 6 chunks, killed after 3
    .venv/bin/python benchmarks/resume_kill.py --chunk 50 --kill_after 5
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_line

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("COLA_DATA_DIR", REPO.parent / "shared" / "data"))
OUTPUTS = ("calibration_samples.json", "calibration_dataset.parquet", "pool.parquet")
CHILD = ("import sys\nimport cola.feature_cache as cache\ncache.CHUNK_CANDIDATES = int(sys.argv[1])\n"
         "from cola.cli import main\nsys.exit(main(sys.argv[2:]))")


def command(chunk: int, out: Path, work: Path, candidates: int) -> list[str]:
    return [sys.executable, "-c", CHILD, str(chunk), "curate", "--output_dir", str(out), "--work_dir", str(work),
            "--num_samples", "16", "--sequence_length", "256", "--selection_method", "activations",
            "--candidates_per_source", str(candidates), "--dtype", "float32", "--device", "cpu",
            "--datasets", str(DATA / "c4" / "c4_en_train_first1000.jsonl"), str(DATA / "gsm8k" / "train.jsonl")]


def run(cmd: list[str], log: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT).returncode
    return code, time.perf_counter() - start


def run_and_kill(cmd: list[str], work: Path, after: int, log: Path) -> tuple[int, float]:
    """Start `cmd`, SIGKILL its process group once `after` chunk entries are in `work`; (entries then, seconds)."""
    start = time.perf_counter()
    with log.open("w") as handle:
        child = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        while child.poll() is None:
            found = len(list(work.rglob("*.npz"))) if work.is_dir() else 0  # entries under work/features/
            if found >= after:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                return found, time.perf_counter() - start
            time.sleep(0.2)
    raise SystemExit(f"the run ended (exit {child.returncode}) before {after} chunks were written: lower "
                     f"--kill_after or --chunk; its log: {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=300, help="candidates per source (2 sources)")
    parser.add_argument("--chunk", type=int, default=100, help="candidates per feature chunk")
    parser.add_argument("--kill_after", type=int, default=3, help="chunks written before the kill")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"no shared data at {DATA}: set COLA_DATA_DIR")
    print(machine_line())
    root = Path(tempfile.mkdtemp(prefix="cola-resume-"))
    try:
        whole, killed = root / "whole", root / "killed"
        code, seconds = run(command(args.chunk, whole, root / "work-whole", args.candidates), root / "whole.log")
        if code:
            raise SystemExit(f"the uninterrupted run failed (exit {code}): {(root / 'whole.log').read_text()[-2000:]}")
        print(f"uninterrupted run: {seconds:.1f} s")
        work = root / "work-killed"
        cmd = command(args.chunk, killed, work, args.candidates)
        found, seconds = run_and_kill(cmd, work, args.kill_after, root / "killed.log")
        print(f"killed (SIGKILL) after {seconds:.1f} s with {found} chunks in the work folder; "
              f"output folder written: {killed.exists()}")
        code, seconds = run(cmd, root / "resumed.log")
        line = re.search(r"activations: (\d+) of (\d+) chunks read from \S+, (\d+) computed",
                         (root / "resumed.log").read_text())
        if code or line is None:
            raise SystemExit(f"the rerun failed or logged no chunk line (exit {code}): "
                             f"{(root / 'resumed.log').read_text()[-2000:]}")
        read, chunks, computed = map(int, line.groups())
        print(f"rerun: {seconds:.1f} s; {read} of {chunks} chunks read from the work folder, {computed} computed "
              f"({computed - (chunks - found)} beyond the {chunks - found} never written before the kill); "
              f"work folder removed after success: {not work.exists()}")
        for name in OUTPUTS:
            same = (whole / name).read_bytes() == (killed / name).read_bytes()
            print(f"  {name}: {'byte-identical' if same else 'DIFFERENT'} to the uninterrupted run's")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
