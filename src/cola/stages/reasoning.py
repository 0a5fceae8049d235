"""Stage 2's reasoning step: Q&A records without a reasoning chain get one written by a model.

COLA (arXiv 2510.10618, Sec. 4.1) finds that calibration text with explicit reasoning chains preserves math
and code ability better after compression. A record with a question and an answer but no reasoning
(`Formatted.needs_reasoning`) is shown to a model — the uncompressed model itself by default — with its
answer, and the model writes the steps that lead there. Generations are cached in a JSON-lines file, so a
rerun with the same model, settings and prompts costs nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cola.config import ReasoningConfig
from cola.data.formatters import Formatted, qa_text
from cola.errors import ColaError
from cola.progress import progress_bar

log = logging.getLogger(__name__)

INSTRUCTION = ("Explain step by step how to reach the given answer to the question. Write only the "
               "reasoning steps; do not restate the final answer.")
_ANSWER_LINE = re.compile(r"^[ \t]*Answer:", re.MULTILINE)
_KEYED_FIELDS = ("max_new_tokens", "temperature", "seed")  # batch_size is left out: it changes speed, not text


def reasoning_prompt(question: str, answer: str) -> str:
    """The plain-text prompt: instruction, question and answer, ending where the reasoning should begin."""
    return f"{INSTRUCTION}\n\nQuestion: {question.strip()}\n\nAnswer: {answer.strip()}\n\nReasoning:\n"


def model_reasoning_prompt(tokenizer: Any, question: str, answer: str) -> str:
    """The prompt as the model should see it: one user turn in its chat template when it has one."""
    if not getattr(tokenizer, "chat_template", None):
        return reasoning_prompt(question, answer)
    content = f"{INSTRUCTION}\n\nQuestion: {question.strip()}\n\nAnswer: {answer.strip()}"
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


def clean_reasoning(generated: str) -> str:
    """The reasoning part of a generation: cut at a line starting with `Answer:`, stripped."""
    match = _ANSWER_LINE.search(generated)
    return (generated[:match.start()] if match else generated).strip()


def default_cache_path() -> Path:
    """One cache file for all models (entries are keyed by model identity): <cache_dir>/reasoning.jsonl."""
    from cola.models import cache_dir

    return cache_dir() / "reasoning.jsonl"


def cache_key(model: Any, config: ReasoningConfig, prompt: str) -> str:
    """sha256 of the model identity, the settings that change the text, and the prompt."""
    settings = {name: getattr(config, name) for name in _KEYED_FIELDS}
    payload = json.dumps([getattr(model, "name_or_path", ""), settings, prompt], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def _read_cache(path: Path) -> dict[str, str]:
    """{key: reasoning} from the cache file; a torn or foreign line (an interrupted write) is skipped."""
    entries: dict[str, str] = {}
    if not path.is_file():
        return entries
    skipped = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            entries[entry["key"]] = str(entry["reasoning"])
        except (json.JSONDecodeError, KeyError, TypeError):
            skipped += bool(line.strip())
    if skipped:
        log.warning("reasoning cache %s: skipped %d unreadable line(s)", path, skipped)
    return entries


def _append_cache(path: Path, model_name: str, entries: dict[str, str]) -> None:
    """Append one batch in a single write, then flush: O(batch) per call, unlike rewriting the whole file
    per batch; a crash loses at most the line being written, which the reader skips."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    lines = "".join(json.dumps({"key": k, "model": model_name, "reasoning": v}, ensure_ascii=False) + "\n"
                    for k, v in entries.items())
    with path.open("a", encoding="utf-8") as handle:
        handle.write(("\n" if torn else "") + lines)  # a torn last line must not swallow the first new one
        handle.flush()


def _generate_batch(model: Any, tokenizer: Any, prompts: Sequence[str], config: ReasoningConfig) -> list[str]:
    """Generate for a batch of prompts (`cola.batching.generate_new_tokens`: left-padded, the tokenizer is
    never modified).

    Each prompt starts with exactly one BOS where the model's format has one: a chat template's own, or
    the one the tokenizer adds (`cola.tokenization.encode`), never both.
    """
    from cola.batching import generate_new_tokens
    from cola.tokenization import encode, model_bos_id

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = encode(tokenizer, prompts, bos_id=model_bos_id(tokenizer))
    sampling = ({"do_sample": True, "temperature": float(config.temperature), "top_k": 0, "top_p": 1.0}
                if config.temperature > 0 else {"do_sample": False})
    new_tokens = generate_new_tokens(model, encoded, pad_token_id=pad_id, max_new_tokens=config.max_new_tokens,
                                     **sampling)  # (B, N)
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def generate_reasoning(records: Sequence[Formatted], model: Any, tokenizer: Any, config: ReasoningConfig, *,
                       cache_path: Path | None, quiet: bool = False,
                       ) -> tuple[list[Formatted], list[bool], dict[str, int]]:
    """Give every record that needs reasoning a generated chain. Returns (records, enhanced, counts).

    `records` is the input in order, each needing record replaced by one whose reasoning is the generation
    and whose text is `qa_text(question, reasoning, answer)`; `enhanced[i]` says whether records[i] was
    replaced (the caller marks samples built from it `format_enhanced`). A generation that is empty after
    cleaning leaves its record unchanged. Counts: needed = generated (this run) + cached; empty counts the
    needed records left unchanged, whichever way their (empty) text came.
    """
    from contextlib import nullcontext

    import torch

    model_name = str(getattr(model, "name_or_path", ""))
    cache = _read_cache(cache_path) if cache_path is not None else {}
    needed = [i for i, record in enumerate(records) if record.needs_reasoning]
    keys: dict[int, str] = {}
    pending: dict[str, str] = {}  # key -> prompt, duplicates generated once
    for i in needed:
        prompt = model_reasoning_prompt(tokenizer, str(records[i].question), str(records[i].answer))
        keys[i] = cache_key(model, config, prompt)
        if keys[i] not in cache:
            pending[keys[i]] = prompt
    fresh: dict[str, str] = {}
    order = sorted(pending, key=lambda k: len(pending[k]))  # similar lengths together: less padding
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    rng = torch.random.fork_rng(devices=cuda) if config.temperature > 0 else nullcontext()
    with rng, progress_bar(total=len(order), quiet=quiet, desc="reasoning chains", unit="chain") as bar:
        if config.temperature > 0:
            torch.manual_seed(config.seed)  # inside fork_rng: the global generator is restored afterwards
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            texts = _generate_batch(model, tokenizer, [pending[k] for k in batch], config)
            done = {k: clean_reasoning(text) for k, text in zip(batch, texts)}
            fresh.update(done)
            if cache_path is not None:
                _append_cache(cache_path, model_name, done)
            bar.update(len(batch))
    out, enhanced = list(records), [False] * len(records)
    counts = {"needed": len(needed), "generated": 0, "cached": 0, "empty": 0}
    for i in needed:
        counts["generated" if keys[i] in fresh else "cached"] += 1
        reasoning = fresh[keys[i]] if keys[i] in fresh else cache[keys[i]]
        if not reasoning:
            counts["empty"] += 1
            continue
        question, answer = str(records[i].question), str(records[i].answer)
        out[i] = dataclasses.replace(records[i], reasoning=reasoning, text=qa_text(question, reasoning, answer))
        enhanced[i] = True
    log.info("reasoning chains: %s", counts)
    return out, enhanced, counts


def load_reasoning_model(spec: str | None, model: Any, tokenizer: Any, *, device: str, dtype: str,
                         quiet: bool) -> tuple[Any, Any]:
    """The model that writes reasoning chains: the given (uncompressed) model when `spec` is None, else
    `spec` loaded by `cola.models.load_model`; a failure is a one-line ColaError naming it."""
    if spec is None:
        return model, tokenizer
    from cola.models import load_model

    try:
        return load_model(spec, device=device, dtype=dtype, quiet=quiet)
    except (ColaError, OSError, ValueError, RuntimeError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ColaError(f"reasoning-generation model {spec!r} failed to load: {reason}") from exc
