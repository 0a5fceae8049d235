"""The machine a benchmark's figures come from: CPU model, threads, load, and this run's own matmul peak.

Every benchmark prints `machine_line()` first. Figures from different CPUs are not comparable: bf16 matmul
runs about 2,500 GFLOP/s on Intel Xeons with AMX and about 430 on AMD EPYC (fp32 about 195 on both), so a
ratio to the peak measured in the same run is the figure to compare.
"""

from __future__ import annotations

import os
import time

import torch

from cola.export import cpu_model


def matmul_gflops(dtype: torch.dtype, size: int = 2048, warmup: int = 2, repeats: int = 5) -> float:
    """Best-of-`repeats` GFLOP/s of a (size x size) @ (size x size) torch.matmul in `dtype`."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    for _ in range(warmup):
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def matmul_peaks() -> dict[str, float]:
    """This run's matmul peak in bf16 and fp32 (GFLOP/s)."""
    return {"bf16": matmul_gflops(torch.bfloat16), "fp32": matmul_gflops(torch.float32)}


def machine_line(peaks: dict[str, float] | None = None) -> str:
    """One line naming the CPU, torch's threads, the load and the in-run matmul peaks."""
    peaks = matmul_peaks() if peaks is None else peaks
    return (f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; load average "
            f"{os.getloadavg()[0]:.2f}; matmul peak 2048² (best of 5): "
            + ", ".join(f"{label} {gflops:.0f} GFLOP/s" for label, gflops in peaks.items()))
