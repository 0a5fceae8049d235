"""Run evaluation tasks on a model, collect one TaskResult each, and compare with the dense model (retention).

>>> model, tok = load_for_evaluation("outputs/gptq")                      # doctest: +SKIP
>>> results = evaluate(model, tok, ["wikitext2", "hellaswag"], limit={"hellaswag": 500}, data_dir="data")
>>> retention(results, dense_results)["capabilities"]                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cola.errors import ColaError
from cola.evaluate.tasks import TaskSpec, infer_capability, load_items, parse_task, read_text
from cola.export import run_environment

log = logging.getLogger(__name__)


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
    tokens: int               # tokens scored (perplexity: predicted; mc/qa: continuation; generation: generated)
    forward_tokens: int       # non-padding tokens run through the model: the throughput numerator
    seconds: float
    source: str
    metrics: dict[str, float | None] = field(default_factory=dict)
    note: str = ""

    @property
    def tokens_per_second(self) -> float:
        return self.forward_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_second": round(self.tokens_per_second, 1)}


@dataclass(frozen=True)
class Settings:
    """How tasks run: ppl window, token budget per forward, generation batch and length."""

    window: int = 512
    batch_tokens: int = 2048
    batch_size: int = 8
    max_new_tokens: int = 256
    quiet: bool = True


Measured = tuple[float, float | None, int, int, int, dict[str, float | None]]  # value, se, n, tokens, fwd, extra


def _run_ppl(model: Any, tokenizer: Any, task: TaskSpec, limit: int | None, s: Settings) -> Measured:
    from cola.evaluate.perplexity import perplexity

    r = perplexity(model, tokenizer, read_text(task.path), window=s.window, max_windows=limit,
                   batch_size=max(1, s.batch_tokens // s.window), quiet=s.quiet)
    return r.perplexity, r.stderr, r.windows, r.tokens, r.windows * s.window, {"mean_nll": r.mean_nll}


def _run_mc(model: Any, tokenizer: Any, items: list[Any], s: Settings) -> Measured:
    from cola.evaluate.proxies import score_choices

    r = score_choices(model, tokenizer, items, batch_tokens=s.batch_tokens, quiet=s.quiet)
    return r.acc_norm, r.acc_norm_stderr, r.items, r.tokens, r.forward_tokens, {"acc": r.acc,
                                                                                "acc_stderr": r.acc_stderr}


def _run_qa(model: Any, tokenizer: Any, items: list[Any], s: Settings) -> Measured:
    from cola.evaluate.proxies import answer_nll

    r = answer_nll(model, tokenizer, items, batch_tokens=s.batch_tokens, quiet=s.quiet)
    per_item = [x / max(n, 1) for x, n in zip(r.item_nlls, r.item_tokens)]
    return r.nll, r.stderr, r.items, r.tokens, r.forward_tokens, {"mean_item_nll": sum(per_item) / len(per_item)}


def _run_gsm8k_em(model: Any, tokenizer: Any, items: list[Any], s: Settings) -> Measured:
    from cola.evaluate.generation import gsm8k_exact_match

    r = gsm8k_exact_match(model, tokenizer, items, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                          quiet=s.quiet)
    return r.value, r.stderr, r.items, r.new_tokens, r.forward_tokens, {}


def _run_humaneval(model: Any, tokenizer: Any, items: list[Any], s: Settings) -> Measured:
    from cola.evaluate.generation import humaneval_pass_at_1

    r = humaneval_pass_at_1(model, tokenizer, items, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                            quiet=s.quiet)
    return r.value, r.stderr, r.items, r.new_tokens, r.forward_tokens, {}


ITEM_RUNNERS: dict[str, Callable[[Any, Any, list[Any], Settings], Measured]] = {
    "mc": _run_mc, "qa": _run_qa, "gsm8k_em": _run_gsm8k_em, "humaneval_pass1": _run_humaneval}


def _check_item_kinds(task: TaskSpec, schema_name: str) -> None:
    needs = {"gsm8k_em": "question/answer", "humaneval_pass1": "humaneval"}.get(task.kind)
    if needs and schema_name != needs:
        raise ColaError(f"task {task.name!r} needs {needs} records; {task.path} holds {schema_name} records")


def run_task(model: Any, tokenizer: Any, task: TaskSpec, limit: int | None, settings: Settings) -> TaskResult:
    """Evaluate one task; the clock covers reading, tokenizing and scoring, not loading the model."""
    start = time.perf_counter()
    if task.kind == "ppl":
        capability = task.capability or "general"
        value, se, n, tokens, forward, extra = _run_ppl(model, tokenizer, task, limit, settings)
    else:
        items, schema = load_items(task, limit)
        _check_item_kinds(task, schema.name)
        capability = infer_capability(task, schema, items)
        value, se, n, tokens, forward, extra = ITEM_RUNNERS[task.kind](model, tokenizer, items, settings)
    seconds = time.perf_counter() - start
    result = TaskResult(task=task.name, kind=task.kind, capability=capability, metric=task.metric,
                        higher_is_better=task.higher_is_better, value=value, stderr=se, n=n, tokens=tokens,
                        forward_tokens=forward, seconds=round(seconds, 3), source=str(task.path), metrics=extra,
                        note=task.note)
    log.info("%s: %s %.4f (%d items, %.0f tokens/s)", task.name, task.metric, value, n, result.tokens_per_second)
    return result


def task_limits(tasks: Sequence[TaskSpec], specs: Sequence[str | TaskSpec],
                limit: int | Mapping[str, int] | None) -> list[int | None]:
    """One limit per task: the same int for all, or a dict keyed by task name (or the spec as written)."""
    given = [] if limit is None else [limit] if isinstance(limit, int) else list(limit.values())
    if any(n < 1 for n in given):
        raise ColaError(f"limit must be a positive number of items, got {limit}")
    if limit is None or isinstance(limit, int):
        return [limit] * len(tasks)
    known = {t.name for t in tasks} | {s for s in specs if isinstance(s, str)}
    unknown = sorted(set(limit) - known)
    if unknown:
        raise ColaError(f"limit given for task(s) not evaluated: {', '.join(unknown)}; tasks: "
                        f"{', '.join(t.name for t in tasks)}")
    return [limit.get(t.name, limit.get(s) if isinstance(s, str) else None) for t, s in zip(tasks, specs)]


def parse_tasks(specs: Sequence[str | TaskSpec], data_dir: str | Path | None = None) -> list[TaskSpec]:
    """Parse every spec (files must exist) and refuse two tasks with the same name."""
    tasks = [parse_task(s, data_dir) for s in specs]
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ColaError(f"task name(s) given twice: {', '.join(duplicates)}")
    return tasks


def evaluate(model: Any, tokenizer: Any, tasks: Sequence[str | TaskSpec], *,
             limit: int | Mapping[str, int] | None = None, data_dir: str | Path | None = None, window: int = 512,
             batch_tokens: int = 2048, batch_size: int = 8, max_new_tokens: int = 256,
             quiet: bool = True) -> list[TaskResult]:
    """Evaluate an in-memory (dense or compressed) model on `tasks`: built-in names or `KIND[/CAP]:PATH`.

    `limit` is the first N items (windows for perplexity) of every task, or a dict task name → N.
    """
    specs = parse_tasks(tasks, data_dir)
    limits = task_limits(specs, tasks, limit)
    settings = Settings(window=window, batch_tokens=batch_tokens, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, quiet=quiet)
    model.eval()
    return [run_task(model, tokenizer, task, n, settings) for task, n in zip(specs, limits)]


def load_for_evaluation(path_or_spec: str | Path, *, dtype: str = "float32", device: str = "cpu",
                        quiet: bool = True, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer): a `cola compress` output directory (CALDERA, RIA, llm-compressor) or any model spec;
    `trust_remote_code` lets a model that needs its own Python code run it."""
    path = Path(path_or_spec).expanduser()
    if path.is_dir():
        from cola.compress.api import load_compressed

        return load_compressed(path, dtype=dtype, device=device, quiet=quiet, trust_remote_code=trust_remote_code)
    from cola.models import load_model

    return load_model(str(path_or_spec), dtype=dtype, device=device, quiet=quiet,
                      trust_remote_code=trust_remote_code)


def evaluate_path(model_or_dir: str | Path, tasks: Sequence[str | TaskSpec], *, dtype: str = "float32",
                  device: str = "cpu", data_dir: str | Path | None = None, quiet: bool = True,
                  trust_remote_code: bool = False, **options: Any) -> list[TaskResult]:
    """Load a dense or compressed model and evaluate it; the tasks are checked before the model loads.
    `trust_remote_code` lets a model that needs its own Python code run it."""
    task_limits(parse_tasks(tasks, data_dir), tasks, options.get("limit"))
    model, tokenizer = load_for_evaluation(model_or_dir, dtype=dtype, device=device, quiet=quiet,
                                           trust_remote_code=trust_remote_code)
    return evaluate(model, tokenizer, tasks, data_dir=data_dir, quiet=quiet, **options)


# --- retention -----------------------------------------------------------------------------------------------

def _result_dicts(results: Any) -> list[dict[str, Any]]:
    """TaskResults, their dicts, or a whole `cola evaluate --output` report, as a list of dicts."""
    if isinstance(results, Mapping):
        if "results" not in results:
            raise ColaError("dense results have no 'results' list (expected a `cola evaluate --output` file)")
        results = results["results"]
    return [r.as_dict() if isinstance(r, TaskResult) else dict(r) for r in results]


def task_retention(value: float, dense: float, higher_is_better: bool) -> float | None:
    """compressed/dense for higher-is-better metrics, dense/compressed for lower-is-better: 1.0 = kept."""
    numerator, denominator = (value, dense) if higher_is_better else (dense, value)
    return numerator / denominator if denominator > 0 else None


def retention(results: Any, dense_results: Any) -> dict[str, dict[str, float | None]]:
    """Per task (same name, same metric) and per capability (mean over its tasks) retention vs the dense model."""
    dense = {r["task"]: r for r in _result_dicts(dense_results)}
    tasks: dict[str, float | None] = {}
    by_capability: dict[str, list[float]] = {}
    for r in _result_dicts(results):
        base = dense.get(r["task"])
        if base is None or base["metric"] != r["metric"]:
            continue
        ratio = task_retention(r["value"], base["value"], r["higher_is_better"])
        tasks[r["task"]] = ratio
        if ratio is not None:
            by_capability.setdefault(r["capability"], []).append(ratio)
    return {"tasks": tasks, "capabilities": {c: sum(v) / len(v) for c, v in by_capability.items()}}


# --- report --------------------------------------------------------------------------------------------------

def evaluation_report(model: str, results: Sequence[TaskResult], *, dtype: str, device: str,
                      limit: int | Mapping[str, int] | None, dense: Any = None, **settings: Any) -> dict[str, Any]:
    """Everything `--output` writes: the model, settings, per-task results, throughput and retention."""
    seconds = sum(r.seconds for r in results)
    forward = sum(r.forward_tokens for r in results)
    return {"tool": "cola", "command": "evaluate", "model": model, "dtype": dtype, "device": device,
            "limit": dict(limit) if isinstance(limit, Mapping) else limit, "settings": settings,
            "tasks": [r.task for r in results], "results": [r.as_dict() for r in results],
            "seconds": round(seconds, 3), "forward_tokens": forward, **run_environment(),
            "tokens_per_second": round(forward / seconds, 1) if seconds > 0 else 0.0,
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
        line = (f"{r['task'][:22]:22} {r['capability']:12} {r['metric']:12} {_number(r['value']):>10} "
                f"{_number(r['stderr'], 2):>10} {r['n']:>6} {r['tokens']:>8} {r['tokens_per_second']:>8.0f} "
                f"{r['seconds']:>8.1f}")
        if report.get("retention"):
            line += f" {_number(kept.get(r['task']), 3):>9}"
        lines.append(line)
    lines.append(f"total: {report['seconds']:.1f} s, {report['forward_tokens']} tokens through the model, "
                 f"{report['tokens_per_second']:.0f} tokens/s")
    if report.get("retention"):
        caps = report["retention"]["capabilities"]
        lines.append("retention by capability: " + ", ".join(f"{c} {v:.3f}" for c, v in caps.items()))
    return "\n".join(lines)
