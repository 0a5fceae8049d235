"""cola's built-in evaluation tasks: each name's file under the data directory, its kind and capability, and the
names the proxies had while they shadowed published benchmarks."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

log = logging.getLogger("cola.evaluate.tasks")  # where a deprecated name's warning comes from: parsing the task


@dataclass(frozen=True)
class Builtin:
    kind: str
    relpath: str          # under the data directory
    capability: str
    note: str = ""
    plain_answers: bool = False  # gsm8k: score the answers without their calculator annotations


BUILTINS: dict[str, Builtin] = {
    "wikitext2": Builtin("ppl", "wikitext2/wiki.test.raw.txt", "general"),
    "hellaswag": Builtin("mc", "hellaswag/hellaswag_val_full_preprocessed.jsonl", "commonsense"),
    "arc_easy_train": Builtin("mc", "commonsense_llm_adapters/arc_easy_train.parsed.jsonl", "commonsense",
                              "train split (no test split in the data directory)"),
    "arc_challenge_train": Builtin("mc", "commonsense_llm_adapters/arc_challenge_train.parsed.jsonl", "commonsense",
                                   "train split (no test split in the data directory)"),
    "openbookqa_train": Builtin("mc", "commonsense_llm_adapters/openbookqa_train.parsed.jsonl", "commonsense",
                                "train split (no test split in the data directory)"),
    "commonsenseqa": Builtin("mc", "commonsenseqa/validation.jsonl", "commonsense"),
    "gsm8k_nll": Builtin("qa", "gsm8k/test.jsonl", "math"),
    "gsm8k_plain_nll": Builtin("qa", "gsm8k/test.jsonl", "math", "answers without calculator annotations <<…>>",
                               plain_answers=True),
    "math_nll": Builtin("qa", "math/train.jsonl", "math", "MATH train split (the only split in the data directory)"),
    "mbpp_nll": Builtin("qa", "mbpp/mbpp_train_valid_prompt.jsonl", "code"),
    "humaneval_nll": Builtin("qa", "humaneval/HumanEval.jsonl.gz", "code"),
    "gsm8k_em": Builtin("gsm8k_em", "gsm8k/test.jsonl", "math"),
    "humaneval_pass1": Builtin("humaneval_pass1", "humaneval/HumanEval.jsonl.gz", "code"),
}

# The names cola's proxies had while they shadowed published benchmarks (an answer NLL is not gsm8k's exact match,
# a train split with a bare question is not lm-eval's arc_easy). The old name still runs the same task, with a
# warning; results written under it read under the new one. `--evaluator lm-eval` runs the published tasks.
RENAMED: dict[str, str] = {"gsm8k": "gsm8k_nll", "gsm8k_plain": "gsm8k_plain_nll", "math": "math_nll",
                           "mbpp": "mbpp_nll", "humaneval": "humaneval_nll", "arc_easy": "arc_easy_train",
                           "arc_challenge": "arc_challenge_train", "openbookqa": "openbookqa_train"}


def current_name(task: str, kind: str | None = None) -> str:
    """A task's name today: a renamed proxy's new name (`RENAMED`), else `task`. Results of kind "lm-eval" are
    the published tasks themselves and keep their names."""
    return task if kind == "lm-eval" else RENAMED.get(task, task)


def renamed(spec: str) -> str:
    """The built-in name for a deprecated `spec` (a key of `RENAMED`), warning the first time it is used."""
    _warn_renamed(spec)
    return RENAMED[spec]


@functools.lru_cache(maxsize=None)
def _warn_renamed(spec: str) -> None:
    new = RENAMED[spec]
    what = "answer-NLL proxy" if BUILTINS[new].kind == "qa" else "train-split proxy"
    log.warning("task %r is now %r: the old name is deprecated (it named cola's %s, not the published benchmark; "
                "--evaluator lm-eval runs the published tasks)", spec, new, what)


__all__ = ["BUILTINS", "Builtin", "RENAMED", "current_name", "renamed"]
