"""Task results, retention against the dense model, and the `cola evaluate` report.

Retention is one computation, used by `cola evaluate --dense` and by the experiment's results alike: per task
`task_retention` (compressed/dense for higher-is-better metrics, dense/compressed otherwise: 1.0 = nothing lost),
per capability `retention_by_capability` (the mean over its tasks).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cola.errors import ColaError
from cola.evaluate.builtins import current_name
from cola.export import run_environment


@dataclass(frozen=True)
class TaskResult:
    """One task's outcome: the primary metric (with its direction) and everything else measured."""

    task: str
    kind: str
    capability: str
    metric: str
    higher_is_better: bool
    value: float
    stderr: float | None
    n: int                    # items (windows for perplexity)
    tokens: int | None        # tokens scored (perplexity: predicted; mc/qa: continuation; generation: generated)
    forward_tokens: int | None  # non-padding tokens run through the model: the throughput numerator (None: lm-eval
    #                             counts none)
    seconds: float
    source: str
    metrics: dict[str, float | None] = field(default_factory=dict)
    note: str = ""
    execution: dict[str, Any] | None = None  # tasks that run generated code: the isolation that applied, outcomes
    limit: int | None = None  # the --limit that applied to this task (None: all items)

    @property
    def tokens_per_second(self) -> float | None:
        if self.forward_tokens is None:
            return None
        return self.forward_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        speed = self.tokens_per_second
        return {**asdict(self), "tokens_per_second": None if speed is None else round(speed, 1)}


# --- retention -----------------------------------------------------------------------------------------------

RESULT_FIELDS = {"task": "text", "capability": "text", "metric": "text", "higher_is_better": "true/false",
                 "value": "number"}  # what retention reads from each result


def _has_type(value: Any, kind: str) -> bool:
    if kind == "true/false":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def result_dicts(results: Any, what: str = "results") -> list[dict[str, Any]]:
    """TaskResults, their dicts, or a whole `cola evaluate --output` report, as a list of dicts, each under its
    task's current name (`cola.evaluate.builtins.RENAMED`); ColaError naming `what` and the entry when one lacks a
    field retention reads."""
    if isinstance(results, Mapping):
        if not isinstance(results.get("results"), list):
            raise ColaError(f"{what} has no 'results' list (expected a `cola evaluate --output` report)")
        results = results["results"]
    elif isinstance(results, (str, bytes)) or not isinstance(results, Iterable):
        raise ColaError(f"{what} must be a `cola evaluate --output` report or a list of task results, got "
                        f"{type(results).__name__}")
    rows = []
    for index, result in enumerate(results):
        row = result.as_dict() if isinstance(result, TaskResult) else result
        if not isinstance(row, Mapping):
            raise ColaError(f"{what}: results[{index}] is {type(row).__name__}, not a task result")
        for name, kind in RESULT_FIELDS.items():
            if not _has_type(row.get(name), kind):
                raise ColaError(f"{what}: results[{index}] ({row.get('task', 'no task name')}) has no {kind} "
                                f"{name!r}")
        rows.append({**row, "task": current_name(row["task"], row.get("kind"))})
    return rows


def task_retention(value: float, dense: float, higher_is_better: bool) -> float | None:
    """compressed/dense for higher-is-better metrics, dense/compressed for lower-is-better: 1.0 = kept."""
    numerator, denominator = (value, dense) if higher_is_better else (dense, value)
    return numerator / denominator if denominator > 0 and math.isfinite(numerator) else None


def retention_by_capability(task_retentions: Iterable[tuple[str, float | None]]) -> dict[str, float]:
    """Per capability, the mean retention of its tasks, from (capability, task retention) pairs; a task without
    a retention (None, or NaN from a table) is left out, and so is a capability with none."""
    by_capability: dict[str, list[float]] = {}
    for capability, ratio in task_retentions:
        if ratio is not None and not math.isnan(ratio):
            by_capability.setdefault(capability, []).append(ratio)
    return {c: sum(v) / len(v) for c, v in by_capability.items()}


def _unmatched(result: Mapping[str, Any], base: Mapping[str, Any] | None) -> str | None:
    """Why `result` has no retention against `base`, or None when they compare."""
    if base is None:
        return "no dense result"
    if base["metric"] != result["metric"]:
        return f"dense metric {base['metric']}, here {result['metric']}"
    if isinstance(base.get("n"), int) and isinstance(result.get("n"), int) and base["n"] != result["n"]:
        return f"dense scored {base['n']} items, here {result['n']}"
    return None


def retention(results: Any, dense_results: Any) -> dict[str, Any]:
    """Per task (same name, metric and item count) and per capability (mean over its tasks) retention vs the
    dense model; `unmatched` says why a task has none (no dense result, another metric, other items)."""
    dense = {r["task"]: r for r in result_dicts(dense_results, "dense results")}
    tasks: dict[str, float | None] = {}
    unmatched: dict[str, str] = {}
    capabilities: list[tuple[str, float | None]] = []
    for r in result_dicts(results):
        base = dense.get(r["task"])
        reason = _unmatched(r, base)
        if reason is not None:
            unmatched[r["task"]] = reason
            continue
        tasks[r["task"]] = task_retention(r["value"], base["value"], r["higher_is_better"])
        capabilities.append((r["capability"], tasks[r["task"]]))
    return {"tasks": tasks, "capabilities": retention_by_capability(capabilities), "unmatched": unmatched}


# --- the report -------------------------------------------------------------------------------------------------

def evaluation_report(model: str, results: Sequence[TaskResult], *, dtype: str, device: str,
                      limit: int | Mapping[str, int] | None, dense: Any = None, **settings: Any) -> dict[str, Any]:
    """Everything `--output` writes: the model, settings, per-task results, throughput and retention."""
    seconds = sum(r.seconds for r in results)
    counted = [r for r in results if r.forward_tokens is not None]  # lm-eval's tasks count no tokens
    forward = sum(r.forward_tokens for r in counted) if counted else None
    counted_seconds = sum(r.seconds for r in counted)
    return {"tool": "cola", "command": "evaluate", "model": model, "dtype": dtype, "device": device,
            "limit": dict(limit) if isinstance(limit, Mapping) else limit, "settings": settings,
            "tasks": [r.task for r in results], "results": [r.as_dict() for r in results],
            "seconds": round(seconds, 3), "forward_tokens": forward, **run_environment(),
            "tokens_per_second": None if forward is None else round(forward / counted_seconds, 1)
            if counted_seconds > 0 else 0.0,
            "retention": retention(results, dense) if dense is not None else None}


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def format_table(report: Mapping[str, Any]) -> str:
    """A readable table of a report: one row per task, then per-capability retention when known."""
    kept = (report.get("retention") or {}).get("tasks", {})
    header = (f"{'task':22} {'capability':12} {'metric':12} {'value':>10} {'± stderr':>10} {'n':>6} "
              f"{'tokens':>8} {'tok/s':>8} {'seconds':>8}" + (f" {'retention':>9}" if report.get("retention") else ""))
    lines = [f"{report['model']} ({report['dtype']}, {report['device']})", header]
    for r in report["results"]:
        counted = r.get("tokens") is not None  # lm-eval reports no token counts
        tokens, speed = (str(r["tokens"]), f"{r['tokens_per_second']:.0f}") if counted else ("-", "-")
        line = (f"{r['task'][:22]:22} {r['capability']:12} {r['metric']:12} {_number(r['value']):>10} "
                f"{_number(r['stderr'], 2):>10} {r['n']:>6} {tokens:>8} {speed:>8} {r['seconds']:>8.1f}")
        if report.get("retention"):
            line += f" {_number(kept.get(r['task']), 3):>9}"
        lines.append(line)
    if report.get("forward_tokens") is None:
        lines.append(f"total: {report['seconds']:.1f} s (scored by lm-eval, which reports no token counts)")
    else:
        lines.append(f"total: {report['seconds']:.1f} s, {report['forward_tokens']} tokens through the model, "
                     f"{report['tokens_per_second']:.0f} tokens/s")
    if report.get("retention"):
        caps = report["retention"]["capabilities"]
        lines.append("retention by capability: " + (", ".join(f"{c} {v:.3f}" for c, v in caps.items()) or "none"))
        unmatched = report["retention"].get("unmatched") or {}
        if unmatched:
            lines.append("no retention for: " + ", ".join(f"{t} ({why})" for t, why in unmatched.items()))
    return "\n".join(lines)
