"""Log-likelihood of continuations given contexts: multiple-choice accuracy and the math/code NLL proxy.

Both follow lm-eval's loglikelihood protocol: a (context, continuation) pair is tokenized as `context` and
`context + continuation`, the tokens after the context's length are the continuation, trailing spaces of
the context move to the continuation, and each pair is one sequence through the model. Pairs are sorted
by length and packed into right-padded batches of at most `batch_tokens` token slots.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cola.batching import length_batches, pad_batch
from cola.models import input_device
from cola.progress import progress_bar
from cola.tokenization import model_bos_id


@dataclass(frozen=True)
class Pair:
    context: tuple[int, ...]
    continuation: tuple[int, ...]


def encode_pair(tokenizer: Any, context: str, continuation: str, bos_id: int | None = None) -> Pair:
    """Token ids of `context` and of what `context + continuation` adds after it (lm-eval's `_encode_pair`).

    The context starts with the BOS when the tokenizer puts one in front of every input (Gemma, Llama; lm-eval
    adds it for Gemma too): `bos_id` is `cola.tokenization.model_bos_id(tokenizer)`, read once by the caller.
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    head = [] if bos_id is None else [bos_id]
    whole = head + tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = head + tokenizer(context, add_special_tokens=False)["input_ids"]
    if not context_ids:  # nothing to condition on: start from the BOS (or EOS) token, as lm-eval does
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return Pair((start,), tuple(whole))
    return Pair(tuple(context_ids), tuple(whole[len(context_ids):]))


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _max_length(model: torch.nn.Module) -> int | None:
    from cola.models import config_int

    return config_int(model, "max_position_embeddings", "n_positions", "seq_length")


@dataclass(frozen=True)
class Scored:
    logprobs: list[torch.Tensor]  # per pair: log p(token | prefix) of each continuation token, float32 on CPU
    forward_tokens: int           # non-padding tokens run through the model


@torch.no_grad()
def continuation_logprobs(model: torch.nn.Module, pairs: Sequence[Pair], *, batch_tokens: int = 2048,
                          quiet: bool = True, desc: str = "scoring") -> Scored:
    """Per-token log-probabilities of each pair's continuation given its context.

    Inputs longer than the model's context are cut from the left (the continuation is always kept).
    Only the logits near the end of each batch are computed when the model supports `logits_to_keep`.
    """
    device = input_device(model)
    limit = _max_length(model)
    inputs = []
    for pair in pairs:
        ids = (pair.context + pair.continuation)[:-1]  # the last token is only ever a target
        inputs.append(ids[-limit:] if limit else ids)
    keep_tail = _accepts_logits_to_keep(model)
    results: list[torch.Tensor] = [torch.empty(0)] * len(pairs)
    forward_tokens = 0
    batches = length_batches([len(x) for x in inputs], max_batch_tokens=batch_tokens, longest_first=True)
    for batch in progress_bar(batches, quiet=quiet, desc=desc, unit="batch"):
        ids, mask = pad_batch([inputs[i] for i in batch], 0)  # (B, T) each, right-padded
        width = ids.shape[1]
        # the continuation of row r sits at positions [len_r - n_r, len_r) of its input
        tail = max(width - len(inputs[i]) + len(pairs[i].continuation) for i in batch)
        kwargs = {"logits_to_keep": tail} if keep_tail else {}
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                       **kwargs).logits  # (B, tail or T, V)
        offset = width - logits.shape[1]
        for row, i in enumerate(batch):
            end = len(inputs[i])
            n = min(len(pairs[i].continuation), end)  # a continuation longer than the model's context is cut
            rows = logits[row, end - n - offset:end - offset].float()  # (n, V)
            target = torch.tensor(pairs[i].continuation[len(pairs[i].continuation) - n:], device=rows.device)
            results[i] = torch.log_softmax(rows, dim=-1).gather(1, target[:, None])[:, 0].cpu()
        forward_tokens += int(mask.sum())
    return Scored(results, forward_tokens)


def mean_stderr(values: Sequence[float]) -> float | None:
    """Standard error of a mean, sample standard deviation over sqrt(n) (lm-eval's `mean_stderr`)."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def first_argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


@dataclass(frozen=True)
class ChoiceScores:
    acc: float
    acc_norm: float
    acc_stderr: float | None
    acc_norm_stderr: float | None
    items: int
    tokens: int          # continuation tokens scored
    forward_tokens: int


def score_choices(model: torch.nn.Module, tokenizer: Any, items: Sequence[Any], *, batch_tokens: int = 2048,
                  quiet: bool = True) -> ChoiceScores:
    """lm-eval's acc (argmax of summed log-likelihood) and acc_norm (divided by the choice's length in characters).

    Each item has `.context`, `.choices` and `.label`; the continuation is `" " + choice`.
    """
    pairs, owners = [], []
    bos = model_bos_id(tokenizer)
    for index, item in enumerate(items):
        for choice in item.choices:
            pairs.append(encode_pair(tokenizer, item.context, " " + choice, bos))
            owners.append(index)
    scored = continuation_logprobs(model, pairs, batch_tokens=batch_tokens, quiet=quiet, desc="multiple choice")
    sums: list[list[float]] = [[] for _ in items]
    for owner, logprobs in zip(owners, scored.logprobs):
        sums[owner].append(float(logprobs.sum()))
    hits = [float(first_argmax(s) == item.label) for s, item in zip(sums, items)]
    hits_norm = [float(first_argmax([ll / max(len(c), 1) for ll, c in zip(s, item.choices)]) == item.label)
                 for s, item in zip(sums, items)]
    return ChoiceScores(acc=sum(hits) / len(hits), acc_norm=sum(hits_norm) / len(hits_norm),
                        acc_stderr=mean_stderr(hits), acc_norm_stderr=mean_stderr(hits_norm), items=len(items),
                        tokens=sum(len(p.continuation) for p in pairs), forward_tokens=scored.forward_tokens)


@dataclass(frozen=True)
class AnswerNLL:
    nll: float               # total NLL / total answer tokens (nats per token)
    stderr: float | None     # ratio-estimator standard error over items
    items: int
    tokens: int              # answer tokens scored
    forward_tokens: int
    item_nlls: tuple[float, ...]   # summed NLL of each item's answer
    item_tokens: tuple[int, ...]


def ratio_stderr(totals: Sequence[float], counts: Sequence[int]) -> float | None:
    """Standard error of sum(totals)/sum(counts) with items as the sampling unit (delta method).

    se = sqrt(sum((x_i - R n_i)^2) / (k (k - 1))) / mean(n): the usual linearisation of a ratio estimator,
    so long answers weigh as much as their tokens, as in the token-weighted mean itself.
    """
    k = len(totals)
    if k < 2:
        return None
    ratio = sum(totals) / sum(counts)
    spread = sum((x - ratio * n) ** 2 for x, n in zip(totals, counts)) / (k * (k - 1))
    return math.sqrt(spread) / (sum(counts) / k)


def answer_nll(model: torch.nn.Module, tokenizer: Any, items: Sequence[Any], *, batch_tokens: int = 2048,
               quiet: bool = True) -> AnswerNLL:
    """Mean per-token NLL of each item's `.answer` given its `.prompt`; only the answer's tokens are scored."""
    bos = model_bos_id(tokenizer)
    pairs = [encode_pair(tokenizer, item.prompt, item.answer, bos) for item in items]
    scored = continuation_logprobs(model, pairs, batch_tokens=batch_tokens, quiet=quiet, desc="answer NLL")
    totals = [-float(lp.sum()) for lp in scored.logprobs]
    counts = [len(p.continuation) for p in pairs]
    return AnswerNLL(nll=sum(totals) / max(sum(counts), 1), stderr=ratio_stderr(totals, counts), items=len(items),
                     tokens=sum(counts), forward_tokens=scored.forward_tokens, item_nlls=tuple(totals),
                     item_tokens=tuple(counts))
