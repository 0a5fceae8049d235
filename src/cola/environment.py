"""What shapes a result besides its inputs: library versions, the CPU model, torch's thread count.

Every manifest and summary records it (`run_environment`), so two results can be told apart by machine.
"""

from __future__ import annotations

import contextlib
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("cola", "torch", "transformers", "datasets", "scikit-learn", "numpy", "scipy", "safetensors",
             "gguf", "pyarrow")


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape the result."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def cpu_model() -> str:
    """The CPU's `model name` from /proc/cpuinfo (Linux), else platform.processor(), else 'unknown'.

    Results depend on it: bf16 matmuls run about 2,500 GFLOP/s on Intel Xeons with AMX and about 430 on AMD EPYC,
    and the two take different kernels, so floats differ in their last bits between them."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run_environment() -> dict[str, Any]:
    """What shapes a result besides its inputs: library versions, the CPU model, and torch's CPU thread count (bf16
    sums run in a thread-dependent order: GPTQ W3 g64 of SmolLM2 on one calibration set gave wikitext-2 perplexity
    178.9 at 1 thread and 164.8 at 2)."""
    import torch

    return {"libraries": library_versions(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads()}
