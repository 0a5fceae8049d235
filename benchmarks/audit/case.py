"""One audited input: how to build it, what a correct run does with it."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Case:
    """A bad (or tricky) input.

    `build(tmp, fixtures)` writes its files under `tmp` and returns either the `cola` argv (a list, without
    "cola") or, with `api=True`, Python source run as a script (ColaError escaping it counts as a clean error).
    `expect`: "error" (one `cola: error:` line, non-zero exit) or "ok" (exit 0). `match`: text the error line must
    contain (case-insensitive). `check(tmp)`: extra condition after the run (e.g. nothing half-written); it
    returns a problem description or None.
    """

    name: str
    build: Callable[[Path, Fixtures], list[str] | str]
    expect: str = "error"
    match: str | None = None
    api: bool = False
    check: Callable[[Path], str | None] | None = None
    timeout: float = 300.0


class Fixtures:
    """Shared inputs built once per audit run, lazily: a tiny random Llama with a byte tokenizer, a curated set."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @functools.cached_property
    def model_dir(self) -> Path:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import byte_tokenizer, tiny_llama  # the test suite's tiny model, nothing downloaded

        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # save_pretrained's shard bar is not the audit's output
        path = self.root / "tiny-llama"
        tiny_llama(layers=2).save_pretrained(path)
        byte_tokenizer().save_pretrained(path)
        return path

    @functools.cached_property
    def texts_file(self) -> Path:
        """40 short plain-text records, enough for a 4-sample curation of 32 tokens."""
        path = self.root / "prose.jsonl"
        path.write_text("".join(json.dumps({"text": f"Record {i}. The river ran past the old mill. " * 3}) + "\n"
                                for i in range(40)), encoding="utf-8")
        return path

    @functools.cached_property
    def calibration_dir(self) -> Path:
        """A real `cola curate` output of the tiny model (4 samples of 32 tokens)."""
        path = self.root / "calibration"
        run_cola(["curate", "--model_name_or_path", str(self.model_dir), "--output_dir", str(path),
                  "--datasets", str(self.texts_file), "--num_samples", "4", "--sequence_length", "32",
                  "--no_stage1", "--quiet"], cwd=self.root, check=True)
        return path


def run_cola(argv: list[str], *, cwd: Path, timeout: float = 300.0, check: bool = False,
             ) -> subprocess.CompletedProcess[str]:
    """`cola ARGV` in a child process, offline."""
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "cola.cli", *argv], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise RuntimeError(f"cola {' '.join(argv)} failed: {result.stderr[-2000:]}")
    return result


API_WRAPPER = """
import sys
from cola.errors import ColaError
try:
{body}
except ColaError as exc:
    print(f"cola: error: {{exc}}", file=sys.stderr)
    sys.exit(2)
"""


def run_api(source: str, *, cwd: Path, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Python source in a child process; a ColaError becomes the CLI's one-line error and exit 2."""
    import os
    import textwrap

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    script = API_WRAPPER.format(body=textwrap.indent(textwrap.dedent(source), "    "))
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
