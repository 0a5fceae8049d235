"""The tables the report and the plots share, computed from results.csv's rows (pandas)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def capability_retention(ok: pd.DataFrame) -> pd.DataFrame:
    """(strategy, method, seed, capability) -> retention: per cell, `cola.evaluate.retention_by_capability` of
    its task rows (the mean over the capability's tasks), sorted by those four keys."""
    import pandas as pd

    from cola.evaluate import retention_by_capability

    keys = ["strategy", "method", "seed"]
    rows = [{**dict(zip(keys, cell)), "capability": capability, "retention": value}
            for cell, tasks in ok.groupby(keys)
            for capability, value in sorted(retention_by_capability(zip(tasks.capability, tasks.retention)).items())]
    return pd.DataFrame(rows, columns=[*keys, "capability", "retention"])


def paired_differences(caps: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Retention(strategy) - retention(baseline) at the same method, seed and capability."""
    base = caps[caps.strategy == baseline][["method", "seed", "capability", "retention"]]
    merged = caps.merge(base, on=["method", "seed", "capability"], suffixes=("", "_baseline"))
    merged["difference"] = merged["retention"] - merged["retention_baseline"]
    return merged
