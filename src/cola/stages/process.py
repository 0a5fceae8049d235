"""Stage 2 (processing, COLA arXiv 2510.10618 Sec. 4.1): format, filter, and cut to one standard length.

1. format: structured records become `Question / Reasoning / Answer` text (catalog formatter, a user's
   `--fields` mapping, or free text), optionally wrapped in the model's chat template;
2. filter: exact and near duplicates, length bounds, character heuristics, optional perplexity filter;
3. length: each source's surviving documents are packed into windows of exactly `sequence_length` tokens
   (or windowed one by one, or each cut to its first `sequence_length` tokens: `ProcessConfig.length`).

`truncate_to_length` is the no-Stage-2 path (ablation): each text cut to at most `sequence_length`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from cola.data.catalog import CATALOG
from cola.data.formatters import Formatted, Formatter, formatter_for_columns, get_formatter, mapped_formatter
from cola.data.sources import Source
from cola.config import ProcessConfig
from cola.errors import ColaError
from cola.stages.filters import apply_quality_filters
from cola.stages.packing import pack_to_length, tokenize_documents, tokenize_with_offsets

log = logging.getLogger(__name__)

@dataclass(frozen=True, eq=False)
class TokenizedText:
    """A calibration candidate: its text, exactly its token ids, where it came from, how it was made."""

    text: str
    input_ids: np.ndarray            # (T,) int32
    source: int = 0                  # index into the list of sources
    format_enhanced: bool = False    # True when a reasoning chain was added to any of its documents


def truncate_to_length(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], sequence_length: int,
                       batch_size: int = 256) -> list[TokenizedText]:
    """Tokenize each text and keep its first `sequence_length` tokens; the text is cut at the same place.

    The kept text ends at the last kept token's character offset, so `text` and `input_ids` describe the
    same content (re-tokenizing the text gives the same ids up to tokenizer boundary effects).
    """
    out: list[TokenizedText] = []
    for text, ids, offsets in tokenize_with_offsets(tokenizer, texts, batch_size, truncation=True,
                                                    max_length=sequence_length):
        kept = text[:max((e for _, e in offsets), default=0)] if offsets is not None else tokenizer.decode(
            ids, skip_special_tokens=True)  # slow tokenizers have no offsets: decode the kept ids instead
        out.append(TokenizedText(text=kept, input_ids=np.asarray(ids, dtype=np.int32)))
    return out


def source_formatter(source: Source, field_mapping: tuple[tuple[str, str], ...] | None) -> tuple[str, Formatter]:
    """(name, formatter) for a source: a user's mapping, the catalog's choice, or one read off the columns.

    Explicit text fields (`PATH#a+b`) and the embedded pool (already formatted) stay free text.
    """
    if field_mapping is not None and source.spec.kind != "embedded":
        return "fields", mapped_formatter(dict(field_mapping), list(source.records[0]) if source.records else [])
    # The catalog's own dataset, not a local file that happens to share its name (gsm8k.jsonl of plain texts).
    catalogued = source.spec.kind == "hub" and source.spec.name in CATALOG
    if source.spec.kind == "embedded" or source.spec.fields is not None and not catalogued:
        return "text", lambda record, _fields=source.fields: Formatted(
            text="\n\n".join(str(record[f]).strip() for f in _fields if record.get(f)))
    if catalogued:
        name = CATALOG[source.spec.name].formatter
    else:
        name = formatter_for_columns(set(source.records[0]) if source.records else {"text"})
    return name, get_formatter(name)


def chat_renderer(tokenizer: PreTrainedTokenizerBase, system_prompt: str = "template",
                  ) -> Callable[[Formatted], str]:
    """A function rendering a Q&A record as one chat exchange in the model's own template.

    `system_prompt="none"` leaves out the system turn that some templates insert when none is given (SmolLM2's
    "You are a helpful AI assistant named SmolLM, ..." is 21 tokens in front of every record, a tenth of a
    packed Q&A calibration set): each exchange is rendered after an empty system turn, which stops the default,
    and that empty turn's own rendering (made once, here) is cut off the front. A template that refuses a system
    turn, or renders it elsewhere, keeps its plain rendering.
    """
    empty = [{"role": "system", "content": ""}]
    head = ""  # the empty system turn's rendering; "" keeps the template's own behaviour
    if system_prompt == "none":
        try:
            head = tokenizer.apply_chat_template(empty, tokenize=False)
        except TemplateError:
            log.debug("the chat template refuses a system turn; records keep its plain rendering")

    def render(formatted: Formatted) -> str:
        reply = (f"{formatted.reasoning}\n\nAnswer: {formatted.answer}" if formatted.reasoning
                 else str(formatted.answer))
        messages = [{"role": "user", "content": formatted.question}, {"role": "assistant", "content": reply}]
        if head:
            text = tokenizer.apply_chat_template(empty + messages, tokenize=False)
            if text.startswith(head):
                return text[len(head):]
        return tokenizer.apply_chat_template(messages, tokenize=False)

    return render


def use_chat_template(mode: str, tokenizer: PreTrainedTokenizerBase) -> bool:
    """`on` needs a template; `auto` uses one when the tokenizer has it (instruct models)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has_template:
        raise ColaError("--chat_template on, but the tokenizer has no chat template (use auto or off)")
    return has_template and mode in ("on", "auto")


def process_sources(sources: Sequence[Source], tokenizer: PreTrainedTokenizerBase, sequence_length: int,
                    config: ProcessConfig, *, model: Any = None, quiet: bool = False,
                    ) -> tuple[list[TokenizedText], dict[str, Any]]:
    """Run Stage 2 over all sources: format, filter (across sources), pack per source. Returns (samples, report)."""
    chat = use_chat_template(config.chat_template, tokenizer)
    formatted: list[Formatted] = []
    owner: list[int] = []
    report: dict[str, Any] = {"chat_template": chat, "sources": []}
    for index, source in enumerate(sources):
        name, formatter = source_formatter(source, config.field_mapping)
        records = source.records or tuple({"text": t} for t in source.texts)
        kept = [f for f in map(formatter, records) if f.text]
        formatted.extend(kept)
        owner.extend([index] * len(kept))
        report["sources"].append({"name": source.spec.name, "formatter": name, "records": len(records),
                                  "empty_after_format": len(records) - len(kept),
                                  "needs_reasoning": sum(f.needs_reasoning for f in kept)})
    enhanced = [False] * len(formatted)
    if config.generate_reasoning:
        formatted, enhanced, report["reasoning"] = _add_reasoning(formatted, tokenizer, config, model, quiet)
    templated = [chat and bool(f.question and f.answer) for f in formatted]
    chat_text = chat_renderer(tokenizer, config.system_prompt)
    texts = [chat_text(f) if wrap else f.text for f, wrap in zip(formatted, templated)]
    for index, entry in enumerate(report["sources"]):
        entry["chat_templated"] = sum(t for t, o in zip(templated, owner) if o == index)
        entry["format_enhanced"] = sum(e for e, o in zip(enhanced, owner) if o == index)
    docs = tokenize_documents(tokenizer, texts)
    filtered = apply_quality_filters(texts, [d.input_ids for d in docs], config.filters, model=model, quiet=quiet)
    report["filters"] = {"before": filtered.before, "removed": dict(filtered.removed), "after": filtered.after}
    survivors = Counter(owner[i] for i in filtered.kept)
    bos = tokenizer.bos_token_id if _adds_bos(tokenizer) else None
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    samples: list[TokenizedText] = []
    for index, entry in enumerate(report["sources"]):
        members = [i for i in filtered.kept if owner[i] == index]
        windows = pack_to_length([docs[i] for i in members], sequence_length, separator_id=separator, bos_id=bos,
                                 mode=config.length, self_delimited=[templated[i] for i in members])
        samples.extend(TokenizedText(text=tokenizer.decode(w.input_ids, clean_up_tokenization_spaces=False),
                                     input_ids=w.input_ids, source=index,
                                     format_enhanced=any(enhanced[members[d]] for d in w.documents))
                       for w in windows)

        entry.update(documents_after_filters=survivors.get(index, 0), samples=len(windows))
    log.info("stage 2: %d documents -> %d after filters -> %d samples of %s%d tokens", filtered.before,
             filtered.after, len(samples), "at most " if config.length == "truncate" else "", sequence_length)
    return samples, report


def _add_reasoning(formatted: list[Formatted], tokenizer: PreTrainedTokenizerBase, config: ProcessConfig,
                   model: Any, quiet: bool) -> tuple[list[Formatted], list[bool], dict[str, int]]:
    """Write the missing reasoning chains of Q&A records with a model (the uncompressed one by default)."""
    from cola.stages.reasoning import default_cache_path, generate_reasoning, load_reasoning_model

    if model is None and config.reasoning_model is None:
        raise ColaError("--generate_reasoning needs a model: the uncompressed one or --reasoning_model")
    device = str(next(model.parameters()).device) if model is not None else "auto"
    gen_model, gen_tokenizer = load_reasoning_model(config.reasoning_model, model, tokenizer, device=device,
                                                    dtype="auto", quiet=quiet)
    records, enhanced, counts = generate_reasoning(formatted, gen_model, gen_tokenizer, config.reasoning,
                                                   cache_path=default_cache_path(), quiet=quiet)
    return list(records), list(enhanced), counts


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer starts every input with BOS (Llama-2/3 do; SmolLM2, GPT-2, Qwen2 do not)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
