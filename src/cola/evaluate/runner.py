"""Run evaluation tasks on a model and collect one TaskResult each; check a dense report against the plan.

Retention and the report are in `cola.evaluate.report`.

>>> model, tok = load_for_evaluation("outputs/gptq")                      # doctest: +SKIP
>>> results = evaluate(model, tok, ["wikitext2", "hellaswag"], limit={"hellaswag": 500}, data_dir="data")
>>> retention(results, dense_results)["capabilities"]                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from cola.errors import ColaError
from cola.config import EvaluateConfig
from cola.evaluate.report import TaskResult, result_dicts
from cola.evaluate.sandbox import CONFIRM_FLAG, ExecutionLimits
from cola.evaluate.tasks import (EXECUTES_CODE, Reading, TaskSpec, infer_capability, load_items, parse_task,
                                 read_text, refuse_duplicate_names)
from cola.export import nearest_existing
from cola.io import read_mapping

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Settings(EvaluateConfig):
    """How tasks run: `EvaluateConfig` (the ppl window, token budget per forward, generation batch and length,
    whether generated code may run) plus whether bars show and the limits generated code runs under. Checked
    at construction, so bad values fail before a model loads."""

    quiet: bool = True
    execution_limits: ExecutionLimits = field(default_factory=ExecutionLimits)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.execution_limits, ExecutionLimits):
            raise ColaError(f"execution_limits must be an ExecutionLimits, got {type(self.execution_limits).__name__}")


class Measured(NamedTuple):
    value: float
    stderr: float | None
    n: int
    tokens: int
    forward_tokens: int
    metrics: dict[str, float | None]
    execution: dict[str, Any] | None = None


def _run_ppl(model: Any, tokenizer: Any, task: TaskSpec, text: str, limit: int | None, s: Settings) -> Measured:
    from cola.evaluate.perplexity import perplexity

    try:
        r = perplexity(model, tokenizer, text, window=s.window, max_windows=limit,
                       batch_size=max(1, s.batch_tokens // s.window), quiet=s.quiet)
    except ColaError as exc:
        raise ColaError(f"task {task.name!r} ({task.path}): {exc}") from None
    return Measured(r.perplexity, r.stderr, r.windows, r.tokens, r.windows * s.window, {"mean_nll": r.mean_nll})


def _run_mc(model: Any, tokenizer: Any, items: list[Any], s: Settings) -> Measured:
    from cola.evaluate.proxies import score_choices

    r = score_choices(model, tokenizer, items, batch_tokens=s.batch_tokens, quiet=s.quiet)
    return Measured(r.acc_norm, r.acc_norm_stderr, r.items, r.tokens, r.forward_tokens,
                    {"acc": r.acc, "acc_stderr": r.acc_stderr})


def _run_qa(model: Any, tokenizer: Any, items: list[Any], s: Settings) -> Measured:
    from cola.evaluate.proxies import answer_nll

    r = answer_nll(model, tokenizer, items, batch_tokens=s.batch_tokens, quiet=s.quiet)
    per_item = [x / max(n, 1) for x, n in zip(r.item_nlls, r.item_tokens)]
    return Measured(r.nll, r.stderr, r.items, r.tokens, r.forward_tokens,
                    {"mean_item_nll": sum(per_item) / len(per_item)})


def _run_gsm8k_em(model: Any, tokenizer: Any, items: list[Any], s: Settings) -> Measured:
    from cola.evaluate.generation import gsm8k_exact_match

    r = gsm8k_exact_match(model, tokenizer, items, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                          quiet=s.quiet)
    return Measured(r.value, r.stderr, r.items, r.new_tokens, r.forward_tokens, {})


def _run_humaneval(model: Any, tokenizer: Any, items: list[Any], s: Settings) -> Measured:
    from cola.evaluate.generation import humaneval_pass_at_1, outcome_counts
    from cola.evaluate.sandbox import Sandbox

    if s.confirm_run_unsafe_code is not True:  # evaluate() refuses earlier; this guards direct callers
        raise ColaError(f"humaneval_pass1 runs model-generated code: pass {CONFIRM_FLAG}")
    sandbox = Sandbox.prepare(s.execution_limits)  # before generating: a sandbox that cannot run fails fast
    r = humaneval_pass_at_1(model, tokenizer, items, sandbox=sandbox, max_new_tokens=s.max_new_tokens,
                            batch_size=s.batch_size, quiet=s.quiet)
    execution = {"isolation": sandbox.isolation, "limits": asdict(sandbox.limits),
                 "outcomes": outcome_counts(r.statuses)}
    return Measured(r.value, r.stderr, r.items, r.new_tokens, r.forward_tokens, {}, execution)


ITEM_RUNNERS: dict[str, Callable[[Any, Any, list[Any], Settings], Measured]] = {
    "mc": _run_mc, "qa": _run_qa, "gsm8k_em": _run_gsm8k_em, "humaneval_pass1": _run_humaneval}


@dataclass(frozen=True)
class TaskInput:
    """A task's file, read and checked: its text (ppl) or items and the reading of its schema that made them,
    and the seconds reading took."""

    text: str = ""
    items: list[Any] = field(default_factory=list)
    reading: Reading | None = None
    seconds: float = 0.0


def read_task(task: TaskSpec, limit: int | None) -> TaskInput:
    """Read and check a task's file (every record up to `limit`); ColaError naming the file and line."""
    start = time.perf_counter()
    if task.kind == "ppl":
        return TaskInput(text=read_text(task.path), seconds=time.perf_counter() - start)
    items, reading = load_items(task, limit)
    return TaskInput(items=items, reading=reading, seconds=time.perf_counter() - start)


def run_task(model: Any, tokenizer: Any, task: TaskSpec, limit: int | None, settings: Settings,
             data: TaskInput | None = None) -> TaskResult:
    """Evaluate one task (its file read here unless `data` holds it already); the clock covers reading,
    tokenizing and scoring, not loading the model."""
    start = time.perf_counter()
    read_before = data.seconds if data is not None else 0.0
    data = data or read_task(task, limit)
    if task.kind == "ppl":
        capability = task.capability or "general"
        m = _run_ppl(model, tokenizer, task, data.text, limit, settings)
    else:
        capability = infer_capability(task, data.reading)
        m = ITEM_RUNNERS[task.kind](model, tokenizer, data.items, settings)
    seconds = time.perf_counter() - start + read_before
    result = TaskResult(task=task.name, kind=task.kind, capability=capability, metric=task.metric,
                        higher_is_better=task.higher_is_better, value=m.value, stderr=m.stderr, n=m.n,
                        tokens=m.tokens, forward_tokens=m.forward_tokens, seconds=round(seconds, 3),
                        source=str(task.path), metrics=m.metrics, note=task.note, execution=m.execution,
                        limit=limit)
    log.info("%s: %s %.4f (%d items, %.0f tokens/s)", task.name, task.metric, m.value, m.n,
             result.tokens_per_second)
    return result


def parse_limit(text: str) -> int | dict[str, int]:
    """`--limit`: `N` (every task) or `TASK=N,TASK=N` (per task)."""
    def number(value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise ColaError(f"invalid --limit {text!r}: {value.strip()!r} is not a whole number; write N or "
                            "TASK=N,TASK=N") from None

    if "=" not in text:
        return number(text)
    limits: dict[str, int] = {}
    for part in text.split(","):
        task, sep, n = part.partition("=")
        task = task.strip()
        if not sep or not task:
            raise ColaError(f"invalid --limit {text!r}: {part.strip()!r} is not TASK=N; write N or TASK=N,TASK=N")
        if task in limits:
            raise ColaError(f"invalid --limit {text!r}: task {task!r} given twice")
        limits[task] = number(n)
    return limits


def task_limits(tasks: Sequence[TaskSpec], specs: Sequence[str | TaskSpec],
                limit: int | Mapping[str, int] | None) -> list[int | None]:
    """One limit per task: the same int for all, or a dict keyed by task name (or the spec as written)."""
    if limit is not None and not isinstance(limit, (int, Mapping)) or isinstance(limit, bool):
        raise ColaError(f"limit must be a number of items or a dict task → number, got {limit!r}")
    given = [] if limit is None else [limit] if isinstance(limit, int) else list(limit.values())
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in given):
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
    refuse_duplicate_names([t.name for t in tasks])
    return tasks


def require_code_confirmation(tasks: Sequence[TaskSpec], confirmed: bool) -> None:
    """Refuse tasks that execute model-generated code unless the caller said yes to it."""
    running = [t.name for t in tasks if t.kind in EXECUTES_CODE]
    if running and confirmed is not True:
        raise ColaError(f"{', '.join(running)} execute{'s' if len(running) == 1 else ''} model-generated code: pass "
                        f"{CONFIRM_FLAG} (confirm_run_unsafe_code=True in Python) to run it in cola's sandbox; the "
                        "README's 'Running generated code' says what it isolates")


@dataclass(frozen=True)
class Plan:
    """What `evaluate` will run, checked without a model: tasks, one limit each, settings, and (when read)
    each task's file."""

    tasks: list[TaskSpec]
    limits: list[int | None]
    settings: Settings
    inputs: list[TaskInput] | None = None

    @property
    def lm_eval(self) -> bool:
        return self.settings.evaluator == "lm-eval"

    def run(self, model: Any, tokenizer: Any) -> list[TaskResult]:
        if self.lm_eval:
            return self.run_lm_eval(model, tokenizer).results
        model.eval()
        inputs = self.inputs or [None] * len(self.tasks)
        return [run_task(model, tokenizer, task, n, self.settings, data)
                for task, n, data in zip(self.tasks, self.limits, inputs)]

    def run_lm_eval(self, model: Any, tokenizer: Any) -> Any:
        """`--evaluator lm-eval`: a `cola.evaluate.harness.HarnessRun` (cola's records and lm-eval's results)."""
        from cola.evaluate.harness import run_lm_eval

        if not self.lm_eval:
            raise ColaError("run_lm_eval needs a plan made with evaluator='lm-eval'")
        model.eval()
        return run_lm_eval(model, tokenizer, self.tasks, self.limits, batch_size=self.settings.batch_size,
                           num_fewshot=self.settings.num_fewshot, max_new_tokens=self.settings.max_new_tokens,
                           quiet=self.settings.quiet)


def plan_evaluation(tasks: Sequence[str | TaskSpec], *, limit: int | Mapping[str, int] | None = None,
                    data_dir: str | Path | None = None, read_files: bool = True, **settings: Any) -> Plan:
    """Parse and check everything `evaluate` takes: task names and files, limits, settings, consent to run
    generated code, and (with `read_files`) every record the tasks will read. With `evaluator="lm-eval"`, the
    published tasks and their local files (`cola.evaluate.harness.plan_tasks`). ColaError on the first problem."""
    if settings.get("execution_limits") is None:
        settings.pop("execution_limits", None)  # None: the defaults
    checked = Settings(**settings)
    if checked.evaluator == "lm-eval":
        from cola.evaluate.harness import plan_tasks

        published = plan_tasks(tasks, data_dir, checked.num_fewshot)
        return Plan(published, task_limits(published, tasks, limit), checked)  # type: ignore[arg-type]
    specs = parse_tasks(tasks, data_dir)
    limits = task_limits(specs, tasks, limit)
    require_code_confirmation(specs, checked.confirm_run_unsafe_code)
    inputs = [read_task(t, n) for t, n in zip(specs, limits)] if read_files else None
    return Plan(specs, limits, checked, inputs)


def evaluate(model: Any, tokenizer: Any, tasks: Sequence[str | TaskSpec], *,
             limit: int | Mapping[str, int] | None = None, data_dir: str | Path | None = None, window: int = 512,
             batch_tokens: int = 2048, batch_size: int = 8, max_new_tokens: int = 256, quiet: bool = True,
             confirm_run_unsafe_code: bool = False, execution_limits: ExecutionLimits | None = None,
             evaluator: str = "cola", num_fewshot: int | None = None) -> list[TaskResult]:
    """Evaluate an in-memory (dense or compressed) model on `tasks`: built-in names or `KIND[/CAP]:PATH`.

    `limit` is the first N items (windows for perplexity) of every task, or a dict task name → N.
    Tasks that execute model-generated code (humaneval_pass1) need `confirm_run_unsafe_code=True`; their
    programs then run in `cola.evaluate.sandbox` under `execution_limits` (default `ExecutionLimits()`).
    `evaluator="lm-eval"`: the published tasks (arc_easy, hellaswag, gsm8k, wikitext, ...) scored by
    lm-evaluation-harness on this model (`cola.evaluate.harness`; `num_fewshot` overrides each task's).
    Raises ColaError for any bad input before the first task runs.
    """
    plan = plan_evaluation(tasks, limit=limit, data_dir=data_dir, window=window, batch_tokens=batch_tokens,
                           batch_size=batch_size, max_new_tokens=max_new_tokens, quiet=quiet,
                           confirm_run_unsafe_code=confirm_run_unsafe_code, execution_limits=execution_limits,
                           evaluator=evaluator, num_fewshot=num_fewshot)
    return plan.run(model, tokenizer)


def load_for_evaluation(path_or_spec: str | Path, *, dtype: str = "float32", device: str = "auto",
                        quiet: bool = True, trust_remote_code: bool = False, caldera_forward: str = "cached",
                        **sharding: Any) -> tuple[Any, Any]:
    """(model, tokenizer): a `cola compress` output directory (CALDERA, RIA, llm-compressor) or any model spec;
    `trust_remote_code` lets a model that needs its own Python code run it; `caldera_forward` as in
    `cola.compress.api.load_compressed` (cached: each CALDERA layer rebuilds its dense weight once);
    `sharding`: device_map, max_memory, offload_folder as `cola.models.load_model` takes them."""
    path = Path(path_or_spec).expanduser()
    if path.is_dir():
        from cola.compress.api import load_compressed

        return load_compressed(path, dtype=dtype, device=device, quiet=quiet, trust_remote_code=trust_remote_code,
                               caldera_forward=caldera_forward, **sharding)
    from cola.models import load_model

    return load_model(str(path_or_spec), dtype=dtype, device=device, quiet=quiet,
                      trust_remote_code=trust_remote_code, **sharding)


def evaluate_path(model_or_dir: str | Path, tasks: Sequence[str | TaskSpec], *, dtype: str = "float32",
                  device: str = "auto", data_dir: str | Path | None = None, quiet: bool = True,
                  trust_remote_code: bool = False, device_map: str | None = None, max_memory: str | None = None,
                  offload_folder: str | Path | None = None, **options: Any) -> list[TaskResult]:
    """Load a dense or compressed model and evaluate it; every input is checked before the model loads.
    `trust_remote_code` lets a model that needs its own Python code run it; `device_map` (with `max_memory`,
    `offload_folder`) shards it over devices (`cola.models.load_model`)."""
    plan = plan_evaluation(tasks, data_dir=data_dir, quiet=quiet, **options)
    model, tokenizer = load_for_evaluation(model_or_dir, dtype=dtype, device=device, quiet=quiet,
                                           trust_remote_code=trust_remote_code, device_map=device_map,
                                           max_memory=max_memory, offload_folder=offload_folder)
    return plan.run(model, tokenizer)


def read_dense_report(path: str | Path) -> dict[str, Any]:
    """A `cola evaluate --output` file (or an experiment's dense.json), checked for what retention reads."""

    report = read_mapping(Path(path), what="--dense", expected="a `cola evaluate --output` report (a JSON "
                              "object with a 'results' list)")
    result_dicts(report, f"--dense {path}")
    return report


def _dense_limit(report: Mapping[str, Any], result: Mapping[str, Any]) -> tuple[bool, Any]:
    """(known, the limit the dense run applied to this task): the result's own, else the report's plain one."""
    if "limit" in result:
        return True, result["limit"]
    limit = report.get("limit")
    if "limit" not in report or isinstance(limit, Mapping) and result["task"] not in limit:
        return False, None  # an older report, or a per-task limit keyed by the spec as written
    return True, limit.get(result["task"]) if isinstance(limit, Mapping) else limit


def _evaluator_of(kind: str) -> str:
    return "lm-eval" if kind == "lm-eval" else "cola's evaluator"


def check_dense(report: Mapping[str, Any], plan: Plan, path: str | Path) -> None:
    """Before the model loads: the dense report has the evaluated tasks, scored by the same metric on the same
    items (limit) and settings that change the value; warns about tasks it lacks."""
    what = f"--dense {path}"
    dense = {r["task"]: r for r in result_dicts(report, what)}
    present = [t for t in plan.tasks if t.name in dense]
    if not present:
        raise ColaError(f"{what} has none of the evaluated tasks ({', '.join(t.name for t in plan.tasks)}); it "
                        f"holds {', '.join(sorted(dense)) or 'no results'}")
    settings = report.get("settings") if isinstance(report.get("settings"), Mapping) else {}
    limits = dict(zip((t.name for t in plan.tasks), plan.limits))
    for task in present:
        base = dense[task.name]
        if "kind" in base and (base["kind"] == "lm-eval") != (task.kind == "lm-eval"):
            raise ColaError(f"{what}: task {task.name!r} was scored by {_evaluator_of(base['kind'])} there, by "
                            f"{_evaluator_of(task.kind)} here; use the same --evaluator")
        if base["metric"] != task.metric:
            raise ColaError(f"{what}: task {task.name!r} was scored by {base['metric']} there, by {task.metric} here")
        known, theirs = _dense_limit(report, base)
        if known and theirs != limits[task.name]:
            raise ColaError(f"{what}: task {task.name!r} was evaluated with limit {theirs} there, "
                            f"{limits[task.name]} here; retention needs the same items (use the same --limit)")
        fewshot = plan.settings.num_fewshot
        if task.kind == "lm-eval" and "num_fewshot" in settings and settings["num_fewshot"] != fewshot:
            raise ColaError(f"{what}: task {task.name!r} was evaluated with --num_fewshot "
                            f"{settings['num_fewshot']} there, {fewshot} here; use the same "
                            "--num_fewshot (None: each task's published setting)")
        for name, kinds in (("window", ("ppl",)), ("max_new_tokens", ("gsm8k_em", "humaneval_pass1"))):
            theirs, ours = settings.get(name), getattr(plan.settings, name)
            if task.kind in kinds and theirs is not None and theirs != ours:
                raise ColaError(f"{what}: task {task.name!r} was evaluated with --{name} {theirs} there, {ours} "
                                f"here; use the same --{name}")
    missing = [t.name for t in plan.tasks if t.name not in dense]
    if missing:
        log.warning("%s has no result for %s: no retention for %s", what, ", ".join(missing),
                    "it" if len(missing) == 1 else "them")


def check_output_file(path: str | Path, flag: str = "--output") -> Path:
    """A file that can be written (or replaced): not a directory, under a writable directory. Checked before
    any work so a long run does not end in an unwritable path."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise ColaError(f"{flag} {path} is a directory; name a file in it, e.g. {target / 'results.json'}")
    folder = nearest_existing(target.parent)
    if not folder.is_dir():
        raise ColaError(f"{flag} {path}: {folder} is a file, not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ColaError(f"{flag} {path}: cannot write in {folder}")
    return target
