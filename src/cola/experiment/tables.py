"""The tables the report and the plots share, computed from results.csv's rows (pandas)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def capability_retention(ok: pd.DataFrame) -> pd.DataFrame:
    """(strategy, method, seed, capability) -> retention: the mean over the capability's tasks."""
    return (ok.dropna(subset=["retention"]).groupby(["strategy", "method", "seed", "capability"], as_index=False)
            ["retention"].mean())


def paired_differences(caps: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Retention(strategy) - retention(baseline) at the same method, seed and capability."""
    base = caps[caps.strategy == baseline][["method", "seed", "capability", "retention"]]
    merged = caps.merge(base, on=["method", "seed", "capability"], suffixes=("", "_baseline"))
    merged["difference"] = merged["retention"] - merged["retention_baseline"]
    return merged
