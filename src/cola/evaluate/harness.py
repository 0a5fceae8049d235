"""`--evaluator lm-eval`: the published tasks, scored by lm-evaluation-harness itself on the model cola loaded.

lm-eval's `HFLM` wraps the in-memory model (dense, pruned, RIA, CALDERA's `CalderaLinear` ...), so the numbers are
lm-eval's own: its prompts, its few-shot settings, its metrics and its code. cola only says where the documents
come from:

- with a data directory (`--data_dir` or $COLA_DATA_DIR), each task reads local files. cola writes one task
  config per task that `include:`s lm-eval's own YAML and replaces only the dataset (`dataset_path: json` and the
  scored split's file; `LOCAL_TASKS` lists the files and the split each task scores). Nothing is downloaded.
- without one, lm-eval's own task configs load their datasets from the Hugging Face hub, as `lm_eval` does.

The published protocol and cola's proxies differ on purpose: cola's `arc_easy_train` is ARC-Easy's train split
with a bare question, lm-eval's `arc_easy` its test split with a `Question: ...\\nAnswer:` prompt.

Source: Gao et al., "A framework for few-shot language model evaluation" (lm-evaluation-harness), v0.4.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola.config.run import EVALUATORS
from cola.errors import ColaError, close_matches, first_line, unknown_choice
from cola.evaluate.report import TaskResult
from cola.evaluate.builtins import RENAMED
from cola.evaluate.tasks import DATA_DIR_ENV, KINDS, records, refuse_duplicate_names, resolve_data_dir

log = logging.getLogger(__name__)

EVALUATOR = EVALUATORS[1]  # "lm-eval": also the `kind` of its results
INSTALL_HINT = "pip install 'cola[lm-eval]' (lm-eval 0.4)"


@dataclass(frozen=True)
class LocalTask:
    """A published lm-eval task read from local files: lm-eval's YAML for it (under `lm_eval/tasks`), the split
    it scores and the files accepted for it under the data directory (the first found is read), the columns its
    prompt reads, and the files of the split its few-shot examples come from."""

    config: str
    capability: str
    metric: str                      # the primary metric, as lm-eval names it
    higher_is_better: bool
    split: str
    files: tuple[str, ...]
    columns: tuple[str, ...]
    schema: str                      # where records in that schema come from (for the error)
    prompt: str
    fewshot_files: tuple[str, ...] = ()
    filter: str = "none"             # lm-eval's filter the primary metric is reported under


_ARC_COLUMNS = ("question", "choices", "answerKey")
LOCAL_TASKS: dict[str, LocalTask] = {
    "arc_easy": LocalTask("arc/arc_easy.yaml", "commonsense", "acc_norm", True, "test",
                          ("ai2_arc/ARC-Easy/test.jsonl",), _ARC_COLUMNS, "allenai/ai2_arc ARC-Easy",
                          "Question: {question}\\nAnswer: + each choice", ("ai2_arc/ARC-Easy/train.jsonl",)),
    "arc_challenge": LocalTask("arc/arc_challenge.yaml", "commonsense", "acc_norm", True, "test",
                               ("ai2_arc/ARC-Challenge/test.jsonl",), _ARC_COLUMNS, "allenai/ai2_arc ARC-Challenge",
                               "Question: {question}\\nAnswer: + each choice",
                               ("ai2_arc/ARC-Challenge/train.jsonl",)),
    "hellaswag": LocalTask("hellaswag/hellaswag.yaml", "commonsense", "acc_norm", True, "validation",
                           ("hellaswag/validation.jsonl", "hellaswag/hellaswag_val_subset1000.jsonl"),
                           ("activity_label", "ctx_a", "ctx_b", "endings", "label"), "Rowan/hellaswag",
                           "activity label: context + each ending, cleaned as lm-eval does",
                           ("hellaswag/train.jsonl",)),
    "winogrande": LocalTask("winogrande/default.yaml", "commonsense", "acc", True, "validation",
                            ("winogrande/validation.jsonl",), ("sentence", "option1", "option2", "answer"),
                            "allenai/winogrande winogrande_xl", "the sentence up to the blank with each option, "
                            "scored on the rest", ("winogrande/train.jsonl",)),
    "piqa": LocalTask("piqa/piqa.yaml", "commonsense", "acc_norm", True, "validation", ("piqa/validation.jsonl",),
                      ("goal", "sol1", "sol2", "label"), "baber/piqa", "Question: {goal}\\nAnswer: + each solution",
                      ("piqa/train.jsonl",)),
    "openbookqa": LocalTask("openbookqa/openbookqa.yaml", "commonsense", "acc_norm", True, "test",
                            ("openbookqa/test.jsonl",), ("question_stem", "choices", "answerKey"),
                            "allenai/openbookqa main", "{question_stem} + each choice", ("openbookqa/train.jsonl",)),
    "gsm8k": LocalTask("gsm8k/gsm8k.yaml", "math", "exact_match", True, "test", ("gsm8k/test.jsonl",),
                       ("question", "answer"), "openai/gsm8k main", "Question: {question}\\nAnswer:, greedy "
                       "generation, the number after '####'", ("gsm8k/train.jsonl",), filter="strict-match"),
    "wikitext": LocalTask("wikitext/wikitext.yaml", "general", "word_perplexity", False, "test",
                          ("wikitext/test.jsonl", "wikitext2/wiki.test.raw.txt"), ("page",),
                          "EleutherAI/wikitext_document_level wikitext-2-raw-v1 (or wiki.test.raw, split into its "
                          "62 articles)", "each article, detokenized, rolling log-likelihood"),
}
LM_EVAL_MAX_GEN_TOKENS = 256  # HFLM's generation length where a task sets none
RAW_WIKITEXT = ".txt"  # a wikitext file in the release's raw form: split into articles here


@dataclass(frozen=True)
class HarnessTask:
    """One published task as planned: its name, where its documents come from, how it is scored."""

    name: str
    capability: str
    metric: str
    higher_is_better: bool
    files: dict[str, Path]           # split → local file (empty: lm-eval loads the hub dataset)
    local: LocalTask | None = None
    kind: str = EVALUATOR

    @property
    def note(self) -> str:
        if self.local is None:
            return "lm-eval's own task config (dataset from the Hugging Face hub)"
        return f"lm-eval {self.name}: {self.local.split} split, prompt {self.local.prompt}"


def import_lm_eval() -> Any:
    """The lm_eval package, or a one-line error with the install hint."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (the model wrapper the evaluator needs)
    except ImportError as exc:
        raise ColaError(f"--evaluator lm-eval needs lm-eval, which is not installed ({exc.name or exc}): "
                        f"{INSTALL_HINT}") from None
    return lm_eval


def _data_dir(data_dir: str | Path | None) -> Path | None:
    """The data directory (`resolve_data_dir`: --data_dir, else $COLA_DATA_DIR), or None when neither is given."""
    return resolve_data_dir(data_dir) if data_dir or os.environ.get(DATA_DIR_ENV) else None


def _local_file(name: str, task: LocalTask, folder: Path, candidates: tuple[str, ...], split: str) -> Path:
    for relpath in candidates:
        path = folder / relpath
        if path.is_file():
            if path.suffix != RAW_WIKITEXT:
                first = next(records(path), None)
                if first is None:
                    raise ColaError(f"{path}: no records")
                missing = [c for c in task.columns if c not in first[1]]
                if missing:
                    raise ColaError(f"lm-eval task {name!r}: {path} lacks column(s) {', '.join(missing)}; its "
                                    f"{split} split must be in the {task.schema} schema ({', '.join(task.columns)})")
            return path
    expected = " or ".join(str(folder / c) for c in candidates)
    proxy = RENAMED.get(name)
    hint = f"; cola's own {proxy} (--evaluator cola) reads the data directory's files" if proxy else ""
    raise ColaError(f"lm-eval task {name!r} reads its {split} split ({task.schema}: {', '.join(task.columns)}) "
                    f"from {expected}; not found (offline: nothing is downloaded){hint}")


def plan_tasks(names: Sequence[str], data_dir: str | Path | None, num_fewshot: int | None) -> list[HarnessTask]:
    """Check every task before a model loads: with a data directory, a published task with its local files (the
    few-shot split's too where the task uses few-shot examples); without one, a task lm-eval knows."""
    import_lm_eval()
    folder = _data_dir(data_dir)
    refuse_duplicate_names(names)
    for name in names:
        if not isinstance(name, str) or ":" in name and name.split(":", 1)[0].split("/")[0] in KINDS:
            raise ColaError(f"task {name!r} is a cola task file; --evaluator lm-eval runs lm-eval's published tasks "
                            f"({', '.join(LOCAL_TASKS)}); use --evaluator cola for KIND:PATH tasks")
    if folder is None:
        return [_hub_task(name) for name in names]
    planned = []
    for name in names:
        if name not in LOCAL_TASKS:
            raise ColaError(f"{unknown_choice('lm-eval task', name, LOCAL_TASKS)} (from local files; without "
                            f"--data_dir and ${DATA_DIR_ENV} lm-eval loads any of its tasks from the hub)")
        task = LOCAL_TASKS[name]
        files = {task.split: _local_file(name, task, folder, task.files, task.split)}
        if task.fewshot_files and _fewshot(task, num_fewshot) > 0:
            files["train"] = _local_file(name, task, folder, task.fewshot_files, "train (few-shot examples)")
        planned.append(HarnessTask(name, task.capability, task.metric, task.higher_is_better, files, task))
    return planned


@functools.lru_cache(maxsize=None)
def lm_eval_config(task: LocalTask) -> dict[str, Any]:
    """lm-eval's own config of a task, its `include:`s merged (lm-eval's loader; `!function`s left unresolved).
    Read once per task: planning and the config writer both ask; callers must not change it."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(Path(lm_eval.__file__).resolve().parent / "tasks" / task.config, resolve_func=False)


def _fewshot(task: LocalTask, num_fewshot: int | None) -> int:
    """The few-shot examples the task will use: --num_fewshot, else its config's (gsm8k: 5, the others 0)."""
    return num_fewshot if num_fewshot is not None else int(lm_eval_config(task).get("num_fewshot") or 0)


def _hub_task(name: str) -> HarnessTask:
    """A task lm-eval loads itself (no data directory): cola's row where it has one, else lm-eval's metric."""
    from lm_eval.tasks import TaskManager

    if name in LOCAL_TASKS:
        t = LOCAL_TASKS[name]
        return HarnessTask(name, t.capability, t.metric, t.higher_is_better, {})
    known = TaskManager().all_tasks
    if name not in known:
        close = close_matches(name, known)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ColaError(f"unknown lm-eval task {name!r}.{hint} `lm_eval ls tasks` lists lm-eval's tasks")
    return HarnessTask(name, "other", "", True, {})


# --- local task configs --------------------------------------------------------------------------------------

def wikitext_articles(text: str) -> list[str]:
    """WikiText's raw release split into its articles, as EleutherAI/wikitext_document_level does: an article
    starts at a top-level heading line (` = Title = `) and keeps its lines joined by newlines (wiki.test.raw:
    62 articles)."""
    lines = text.split("\n")
    articles: list[str] = []
    current: list[str] = []
    for line in lines:
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" ="):
            page = "\n".join(current)
            if page.strip():
                articles.append(page)
            current = []
        current.append(line)
    articles.append("\n".join(current))
    return articles


def _dataset_file(path: Path, folder: Path, name: str) -> Path:
    """The file lm-eval's json loader reads: the file itself, or raw WikiText written as one article a line."""
    if path.suffix != RAW_WIKITEXT:
        return path.resolve()
    from cola.io import read_text_file

    target = folder / f"{name}.articles.jsonl"
    with target.open("w", encoding="utf-8") as out:
        for article in wikitext_articles(read_text_file(path)):
            out.write(json.dumps({"page": article}) + "\n")
    return target


def write_task_configs(tasks: Sequence[HarnessTask], folder: Path) -> None:
    """One YAML per local task in `folder`: lm-eval's own config (`include:`) with only the dataset replaced."""
    import lm_eval
    import yaml

    root = Path(lm_eval.__file__).resolve().parent / "tasks"
    for task in tasks:
        if task.local is None:
            continue
        files = {split: str(_dataset_file(path, folder, task.name)) for split, path in task.files.items()}
        config = {"include": str(root / task.local.config), "task": task.name, "dataset_path": "json",
                  "dataset_name": None, "dataset_kwargs": {"data_files": files},
                  "training_split": "train" if "train" in files else None,
                  "validation_split": "validation" if "validation" in files else None,
                  "test_split": "test" if "test" in files else None}
        if "fewshot_split" in lm_eval_config(task.local):
            config["fewshot_split"] = "train" if "train" in files else None
        (folder / f"{task.name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


# --- running ---------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    """While `quiet`, what lm-eval writes to stderr (its bars, logs and a `git describe` it runs) goes nowhere.
    At the file-descriptor level: lm-eval's tqdm bars read their settings when tqdm is imported, so no flag
    set later turns them off."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _task_result(task: HarnessTask, raw: Mapping[str, Any], limit: int | None, seconds: float) -> TaskResult:
    """cola's record of one lm-eval result: the primary metric under its filter, with every other metric."""
    scores = raw["results"][task.name]
    metric, higher = task.metric, task.higher_is_better
    filter_name = task.local.filter if task.local is not None else "none"
    if not metric:  # a hub task cola has no row for: its first metric, with lm-eval's direction
        metric, _, filter_name = next(k for k in scores if "," in k and "_stderr" not in k).partition(",")
        higher = bool(raw.get("higher_is_better", {}).get(task.name, {}).get(metric, True))
    value = _number(scores.get(f"{metric},{filter_name}"))
    if value is None:
        raise ColaError(f"lm-eval reported no {metric} for {task.name} (it reported {', '.join(scores)})")
    primary = (f"{metric},{filter_name}", f"{metric}_stderr,{filter_name}")
    metrics = {key.replace(",none", ""): _number(v) for key, v in scores.items() if "," in key and key not in primary}
    samples = raw.get("n-samples", {}).get(task.name, {})
    n = int(samples.get("effective", 0))
    metrics["num_fewshot"] = raw.get("n-shot", {}).get(task.name)
    return TaskResult(task=task.name, kind=EVALUATOR, capability=task.capability, metric=metric,
                      higher_is_better=higher, value=value, stderr=_number(scores.get(primary[1])),
                      n=n, tokens=None, forward_tokens=None, seconds=round(seconds, 3),
                      source=", ".join(str(p) for p in task.files.values()) or "hub", metrics=metrics,
                      note=task.note, limit=limit)


def _merge(runs: Sequence[Mapping[str, Any]], tasks: Sequence[HarnessTask]) -> dict[str, Any]:
    """One lm-eval results document for every task (each ran on its own for its own clock)."""
    merged: dict[str, Any] = dict(runs[0])
    for key in ("results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples"):
        merged[key] = {}
        for run in runs:
            merged[key].update(run.get(key) or {})
    merged.pop("samples", None)
    merged["cola"] = {"files": {t.name: {s: str(p) for s, p in t.files.items()} for t in tasks}}
    return merged


@dataclass(frozen=True)
class HarnessRun:
    """What an lm-eval run gives: cola's records (for the table and retention) and lm-eval's own results."""

    results: list[TaskResult]
    raw: dict[str, Any]

    def raw_json(self) -> str:
        from lm_eval.utils import handle_non_serializable

        return json.dumps(self.raw, indent=2, default=handle_non_serializable)


def run_lm_eval(model: Any, tokenizer: Any, tasks: Sequence[HarnessTask], limits: Sequence[int | None], *,
                batch_size: int = 8, num_fewshot: int | None = None, max_new_tokens: int = 256,
                quiet: bool = True) -> HarnessRun:
    """Score `tasks` (from `plan_tasks`) with lm-eval's `simple_evaluate` on an in-memory model through `HFLM`,
    one task at a time (each with its own clock and limit: the first N documents). `max_new_tokens` other than
    lm-eval's default (256, cola's too) overrides the generation length of generating tasks (gsm8k)."""
    import_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    results: list[TaskResult] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cola-lm-eval-") as scratch, _quiet(quiet):
        folder = Path(scratch)
        write_task_configs(tasks, folder)
        local = any(t.local is not None for t in tasks)
        manager = TaskManager(include_path=str(folder), include_defaults=False) if local else TaskManager()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        generation = None if max_new_tokens == LM_EVAL_MAX_GEN_TOKENS else {"max_gen_toks": max_new_tokens}
        for task, limit in zip(tasks, limits):
            start = time.perf_counter()
            try:
                raw = simple_evaluate(model=lm, tasks=[task.name], task_manager=manager, limit=limit,
                                      num_fewshot=num_fewshot, gen_kwargs=generation, log_samples=False)
            except (AssertionError, ValueError, RuntimeError, KeyError, OSError) as exc:
                hint = "" if task.local is not None else (
                    " (lm-eval's own config loads its dataset from the Hugging Face hub; offline, give --data_dir "
                    "with the task's local files, README: The published tasks)")
                raise ColaError(f"lm-eval failed on {task.name}: {first_line(exc)}{hint}") from exc
            if raw is None or task.name not in raw.get("results", {}):
                raise ColaError(f"lm-eval returned no result for {task.name}")
            seconds = time.perf_counter() - start
            runs.append(raw)
            results.append(_task_result(task, raw, limit, seconds))
            log.info("%s (lm-eval): %s %.4f (%d documents)", task.name, results[-1].metric, results[-1].value,
                     results[-1].n)
    return HarnessRun(results, _merge(runs, tasks))


def raw_results_path(output: str | Path) -> Path:
    """Where lm-eval's own results go beside cola's report: `results.json` → `results.lm_eval.json`."""
    path = Path(output)
    return path.with_name(f"{path.stem}.lm_eval.json")


__all__ = ["EVALUATOR", "HarnessRun", "HarnessTask", "LOCAL_TASKS", "LocalTask", "plan_tasks",
           "raw_results_path", "run_lm_eval", "wikitext_articles", "write_task_configs"]
