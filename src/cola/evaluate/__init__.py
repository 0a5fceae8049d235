"""`cola evaluate`: perplexity, multiple choice, math/code NLL proxies and generation metrics, with retention.

    from cola.evaluate import evaluate, load_for_evaluation, retention
    model, tokenizer = load_for_evaluation("outputs/gptq")
    results = evaluate(model, tokenizer, ["wikitext2", "hellaswag", "mc:my.jsonl"], limit=100, data_dir="data")
"""

from cola.evaluate.perplexity import Perplexity, perplexity
from cola.evaluate.report import (TaskResult, evaluation_report, format_table, retention, retention_by_capability,
                                  task_retention)
from cola.evaluate.runner import (evaluate, evaluate_path, load_for_evaluation, parse_tasks, plan_evaluation,
                                  read_dense_report)
from cola.evaluate.sandbox import ExecutionLimits
from cola.evaluate.tasks import BUILTINS, DATA_DIR_ENV, EXECUTES_CODE, KINDS, TaskSpec, parse_task

__all__ = ["BUILTINS", "DATA_DIR_ENV", "EXECUTES_CODE", "KINDS", "ExecutionLimits", "Perplexity", "TaskResult",
           "TaskSpec", "evaluate", "evaluate_path", "evaluation_report", "format_table", "load_for_evaluation",
           "parse_task", "parse_tasks", "perplexity", "plan_evaluation", "read_dense_report", "retention",
           "retention_by_capability", "task_retention"]
