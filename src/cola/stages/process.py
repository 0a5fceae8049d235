"""Stage 2 (processing, COLA arXiv 2510.10618 Sec. 4.1): format, filter, and cut to one standard length.

1. format: structured records become `Question / Reasoning / Answer` text (catalog formatter, a user's
   `--fields` mapping, or free text), optionally wrapped in the model's chat template;
2. filter: exact and near duplicates, length bounds, character heuristics, optional perplexity filter;
3. length: each source's surviving documents are packed into windows of exactly `sequence_length` tokens
   (or windowed one by one, or each cut to its first `sequence_length` tokens: `ProcessConfig.length`).

`truncate_to_length` is the no-Stage-2 path (ablation): each text cut to at most `sequence_length`.
`reference_probes` makes Stage 1's probes here too, so Stage 1 (`cola.stages.mixture`), which runs after
this stage, receives them and never calls back into it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from cola.data.catalog import CATALOG
from cola.data.formatters import (FieldValueError, Formatted, Formatter, chat_messages, fields_formatter,
                                  formatter_for_columns, get_formatter, mapped_formatter)
from cola.data.sources import Source
from cola.config import ProcessConfig
from cola.errors import ColaError
from cola.spill import RowStore, int_lists
from cola.stages.filters import QualityFilters, perplexity_mask, sequence_perplexities
from cola.stages.packing import (StreamPacker, TokenizedDocument, Window, cut_to_length, tokenize_documents,
                                whole_character_end, window_text)
from cola.tokenization import check_room_after_bos, encode_texts, model_bos_id, template_writes_bos

log = logging.getLogger(__name__)

@dataclass(frozen=True, eq=False)
class TokenizedText:
    """A calibration candidate: its text, exactly its token ids, where it came from, how it was made."""

    text: str
    input_ids: np.ndarray            # (T,) int32
    source: int = 0                  # index into the list of sources
    format_enhanced: bool = False    # True when a reasoning chain was added to any of its documents


def candidate_store(root: Path | None = None) -> RowStore[TokenizedText]:
    """An on-disk store of candidates (`cola.spill`, in a folder under `root`, else the temporary folder):
    text, token ids (int32), source index, format_enhanced."""
    import pyarrow as pa

    schema = pa.schema([("text", pa.large_string()), ("input_ids", pa.list_(pa.int32())), ("source", pa.int32()),
                        ("format_enhanced", pa.bool_())])

    def encode(rows: list[TokenizedText]) -> dict[str, Any]:
        lengths = np.fromiter((len(r.input_ids) for r in rows), np.int64, len(rows))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        flat = np.concatenate([np.asarray(r.input_ids, dtype=np.int32) for r in rows])
        ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        return {"text": [r.text for r in rows], "input_ids": ids,
                "source": np.fromiter((r.source for r in rows), np.int32, len(rows)),
                "format_enhanced": [r.format_enhanced for r in rows]}

    def decode(batch: pa.RecordBatch) -> list[TokenizedText]:
        texts, ids = batch.column("text").to_pylist(), int_lists(batch.column("input_ids"))
        sources, enhanced = batch.column("source").to_pylist(), batch.column("format_enhanced").to_pylist()
        return [TokenizedText(text=t, input_ids=i, source=s, format_enhanced=e)
                for t, i, s, e in zip(texts, ids, sources, enhanced)]

    return RowStore(schema, encode, decode, prefix="cola-pool-", root=root)


def truncate_to_length(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], sequence_length: int,
                       batch_size: int = 256) -> list[TokenizedText]:
    """Tokenize each text as the model reads it and keep its first `sequence_length` tokens; the text is cut
    at the same place.

    The ids start with exactly one BOS where the tokenizer adds one (`cola.tokenization`). The kept text
    ends at the last kept token's end, or before a character that the cut splits between kept and dropped
    tokens (byte-level tokenizers), so it holds whole characters, and `text` and `input_ids` describe the
    same content (re-tokenizing the text gives the same ids up to tokenizer boundary effects). Raises
    ColaError when `sequence_length` leaves no room after the BOS.
    """
    bos = model_bos_id(tokenizer)
    check_room_after_bos(sequence_length, bos)
    out: list[TokenizedText] = []
    for text, ids, offsets in encode_texts(tokenizer, texts, bos_id=bos, offsets=True, batch_size=batch_size):
        ids, _ = cut_to_length(ids, sequence_length, bos_id=bos)  # the BOS is already there: nothing put in front
        if offsets is None:  # slow tokenizers have no offsets: decode the kept ids instead
            kept = tokenizer.decode(ids, skip_special_tokens=True)
        else:
            last_end = max((end for _, end in offsets[:len(ids)]), default=0)
            kept = text[:whole_character_end(np.asarray(offsets, dtype=np.int64).reshape(-1, 2), len(ids), last_end)]
        out.append(TokenizedText(text=kept, input_ids=ids))
    return out


def source_formatter(source: Source, field_mapping: tuple[tuple[str, str], ...] | None) -> tuple[str, Formatter]:
    """(name, formatter) for a source: a user's mapping, the catalog's choice, or one read off the columns.

    Explicit text fields (`PATH#a+b`, dotted paths too) and the embedded pool (already formatted) stay free
    text, except that one field holding a conversation (`#messages`) formats as that conversation.
    """
    if field_mapping is not None and source.spec.kind != "embedded":
        return "fields", mapped_formatter(dict(field_mapping), source.records[0] if source.records else {})
    catalog = source.spec.kind == "hub" and source.spec.name in CATALOG
    if source.spec.kind == "embedded" or source.spec.fields is not None and not catalog:
        formatter = fields_formatter(source.fields)
        return ("chat" if source.records and formatter(source.records[0]).turns else "text"), formatter
    if catalog:
        name = CATALOG[source.spec.name].formatter
    else:
        name = formatter_for_columns(set(source.records[0]) if source.records else {"text"})
    return name, get_formatter(name)


def format_records(source: Source, formatter: Formatter) -> Iterator[tuple[str, Formatted]]:
    """(row, formatted record) for every sampled record of `source`, in order, read as they are needed; a value
    that is not text is an error naming the source and the row ("line 7")."""
    records = source.records if len(source.records) else ({"text": t} for t in source.texts)
    rows = source.rows if len(source.rows) else (f"record {n}" for n in itertools.count(1))
    for record, row in zip(records, rows):
        try:
            yield row, formatter(record)
        except FieldValueError as exc:
            raise ColaError(f"{source.origin}: {row}: {exc}") from None


def reference_probes(reference: Source, tokenizer: PreTrainedTokenizerBase, sequence_length: int,
                     ) -> list[TokenizedText]:
    """Stage 1's probes of one capability: its reference set formatted as Stage 2 formats a source (no chat
    template, no filters), each text cut to its first `sequence_length` tokens (`truncate_to_length`)."""
    _, formatter = source_formatter(reference, None)
    texts = [f.text for _, f in format_records(reference, formatter) if f.text] or list(reference.texts)
    return truncate_to_length(tokenizer, texts, sequence_length)


def chat_renderer(tokenizer: PreTrainedTokenizerBase, system_prompt: str = "template",
                  ) -> Callable[[Formatted], str]:
    """A function rendering a Q&A record as one chat exchange, or a conversation as its turns, in the model's
    own template.

    `system_prompt="none"` leaves out the system turn that some templates insert when none is given (SmolLM2's
    "You are a helpful AI assistant named SmolLM, ..." is 21 tokens in front of every record, a tenth of a
    packed Q&A calibration set): each exchange is rendered after an empty system turn, which stops the default,
    and that empty turn's own rendering (made once, here) is cut off the front, all but the BOS a template writes
    first (Llama-3, Gemma), which every record keeps. A template that refuses a system turn, or renders it
    elsewhere, keeps its plain rendering; so does a conversation with its own system turn, and so does a template
    with no default system turn to drop (Gemma folds even an empty system turn into the first user turn as
    "\n\n": the plain rendering is the shorter one).
    """
    empty = [{"role": "system", "content": ""}]
    head = ""  # the empty system turn's rendering; "" keeps the template's own behaviour
    bos = ""   # a BOS the template writes in front of it, which the record keeps
    if system_prompt == "none":
        try:
            head = tokenizer.apply_chat_template(empty, tokenize=False)
        except TemplateError:
            log.debug("the chat template refuses a system turn; records keep its plain rendering")
        if head and tokenizer.bos_token and head.startswith(tokenizer.bos_token) and template_writes_bos(tokenizer):
            bos = tokenizer.bos_token

    def render(formatted: Formatted) -> str:
        messages = chat_messages(formatted)
        plain = tokenizer.apply_chat_template(messages, tokenize=False)
        if head and messages[0]["role"] != "system":  # a conversation's own system turn stays as it is
            text = tokenizer.apply_chat_template(empty + messages, tokenize=False)
            if text.startswith(head) and len(bos) + len(text) - len(head) < len(plain):  # a default turn went
                return bos + text[len(head):]
        return plain

    return render


def use_chat_template(mode: str, tokenizer: PreTrainedTokenizerBase) -> bool:
    """`on` needs a template; `auto` uses one when the tokenizer has it (instruct models)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has_template:
        raise ColaError("--chat_template on, but the tokenizer has no chat template (use auto or off)")
    return has_template and mode in ("on", "auto")


PROCESS_CHUNK = 4096  # documents formatted, tokenized, filtered and packed at a time


@dataclass(frozen=True, eq=False)
class _Document:
    """A formatted record on its way through Stage 2."""

    source: int        # index into the sources
    row: str           # where it is in its source, for errors ("line 7")
    formatted: Formatted
    enhanced: bool     # its reasoning chain was generated


def process_sources(sources: Sequence[Source], tokenizer: PreTrainedTokenizerBase, sequence_length: int,
                    config: ProcessConfig, *, model: Any = None, quiet: bool = False, folder: Path | None = None,
                    chunk_size: int = PROCESS_CHUNK, spill_dir: Path | None = None,
                    ) -> tuple[RowStore[TokenizedText], dict[str, Any]]:
    """Run Stage 2 over all sources: format, filter (across sources), pack per source. Returns (samples, report);
    the samples are kept on disk as they are made (`candidate_store`, under `spill_dir`), a read-only sequence.

    The documents go through in chunks of `chunk_size`, in source order: only a chunk's documents (and the
    documents of the window being packed) are held, and the dedup state is on disk (`QualityFilters`, in
    `folder` or a temporary folder), so memory does not grow with the pool but for the samples made. The
    result is that of one pass over all documents at once. Two things need the whole pool first: generated
    reasoning (duplicate questions are generated once, and a sampling temperature draws from one seeded
    sequence), so its records are formatted whole before the chunks; and the perplexity filter, which drops a
    fraction of all survivors, so with it the chunks run twice, the first time to score them.
    """
    chat = use_chat_template(config.chat_template, tokenizer)
    report: dict[str, Any] = {"chat_template": chat, "sources": []}
    formatters = []
    for source in sources:
        name, formatter = source_formatter(source, config.field_mapping)
        formatters.append(formatter)
        report["sources"].append({"name": source.spec.name, "formatter": name, "records": 0, "empty_after_format": 0,
                                  "needs_reasoning": 0})
    everything: list[_Document] | None = None
    if config.generate_reasoning:
        everything = list(_formatted(sources, formatters, report))
        records, enhanced, report["reasoning"] = _add_reasoning([d.formatted for d in everything], tokenizer,
                                                                config, model, quiet)
        everything = [_Document(d.source, d.row, r, e) for d, r, e in zip(everything, records, enhanced)]
    drop = None
    if config.filters.perplexity_drop_fraction > 0:  # a first pass scores every survivor
        if model is None:
            raise ColaError("perplexity_drop_fraction > 0 needs the model: pass model=, or set the fraction to 0")
        scores = _run_chunks(sources, formatters, everything, tokenizer, sequence_length, config, chat, folder,
                             chunk_size, report, perplexity=(model, quiet))
        drop = ~perplexity_mask(np.asarray(scores, dtype=np.float64), config.filters.perplexity_drop_fraction)
    if drop is not None and everything is None:  # the second pass formats (and counts) the records again
        for entry in report["sources"]:
            entry.update(records=0, empty_after_format=0, needs_reasoning=0)
    samples = _run_chunks(sources, formatters, everything, tokenizer, sequence_length, config, chat, folder,
                          chunk_size, report, drop=drop, spill_dir=spill_dir)
    f = report["filters"]
    log.info("stage 2: %d documents -> %d after filters -> %d samples of %s%d tokens", f["before"], f["after"],
             len(samples), "at most " if config.length == "truncate" else "", sequence_length)
    return samples, report


def _formatted(sources: Sequence[Source], formatters: Sequence[Formatter], report: dict[str, Any],
               ) -> Iterator[_Document]:
    """Every non-empty formatted record of every source, in order; the per-source counts go to `report`."""
    for index, (source, formatter) in enumerate(zip(sources, formatters)):
        entry = report["sources"][index]
        for row, formatted in format_records(source, formatter):
            entry["records"] += 1
            if not formatted.text:
                entry["empty_after_format"] += 1
                continue
            entry["needs_reasoning"] += formatted.needs_reasoning
            yield _Document(index, row, formatted, False)


def _run_chunks(sources: Sequence[Source], formatters: Sequence[Formatter], everything: list[_Document] | None,
                tokenizer: PreTrainedTokenizerBase, sequence_length: int, config: ProcessConfig, chat: bool,
                folder: Path | None, chunk_size: int, report: dict[str, Any], *,
                perplexity: tuple[Any, bool] | None = None, drop: np.ndarray | None = None,
                spill_dir: Path | None = None) -> Any:
    """One pass of Stage 2 over the documents in chunks: template, tokenize, filter, and (unless `perplexity`)
    pack each source's survivors, but those `drop` marks (one flag per survivor, in order). Returns the
    samples, or with `perplexity` = (model, quiet) each survivor's perplexity and no samples."""
    chat_text = chat_renderer(tokenizer, config.system_prompt)
    bos = model_bos_id(tokenizer)  # every document, and every sample, starts with exactly one (or none)
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    documents = iter(everything) if everything is not None else _formatted(sources, formatters, report)
    for entry in report["sources"]:
        entry.update(chat_templated=0, format_enhanced=0, documents_after_filters=0, samples=0)
    out: Any = [] if perplexity is not None else candidate_store(spill_dir)  # samples go to disk as they are made
    survivors = 0  # survivors of the filters so far, the index into `drop`
    packer, packing, texts_of, docs_of = None, -1, {}, {}  # the source being packed, its held documents
    with QualityFilters(config.filters, folder=folder) as filters:
        while chunk := list(itertools.islice(documents, chunk_size)):
            texts, templated = [], []
            for d in chunk:
                wrap = chat and d.formatted.templatable
                try:
                    texts.append(chat_text(d.formatted) if wrap else d.formatted.text)
                except TemplateError as exc:
                    raise ColaError(f"{sources[d.source].origin}: {d.row}: the model's chat template refuses this "
                                    f"record ({exc}); use --chat_template off to keep plain text") from None
                templated.append(wrap)
                entry = report["sources"][d.source]
                entry["chat_templated"] += wrap
                entry["format_enhanced"] += d.enhanced
            docs = tokenize_documents(tokenizer, texts, bos_id=bos)
            kept = filters.feed(texts, [len(doc.input_ids) for doc in docs])
            if perplexity is not None:
                model, quiet = perplexity
                out.extend(sequence_perplexities(model, [docs[i].input_ids for i in kept], quiet=quiet))
                continue
            if drop is not None:
                kept, survivors = kept[~drop[survivors:survivors + len(kept)]], survivors + len(kept)
            for source, group in itertools.groupby(kept.tolist(), key=lambda i: chunk[i].source):
                group = list(group)
                if source != packing:
                    out.extend(_finish(packer, packing, tokenizer, docs_of, texts_of, report))
                    packer, packing = StreamPacker(sequence_length, separator_id=separator, bos_id=bos,
                                                   mode=config.length), source
                    docs_of, texts_of = {}, {}
                for n, i in enumerate(group, start=packer.documents_added):
                    docs_of[n], texts_of[n] = (docs[i], chunk[i].enhanced), texts[i]
                windows = packer.add([docs[i] for i in group], [templated[i] for i in group])
                out.extend(_samples(windows, packing, tokenizer, docs_of, texts_of, report))
        out.extend(_finish(packer, packing, tokenizer, docs_of, texts_of, report))
    if isinstance(out, RowStore):
        out.close()
    removed = dict(filters.removed)
    if drop is not None:
        removed["perplexity"] = int(drop.sum())
    after = filters.before - sum(removed.values())
    report["filters"] = {"before": filters.before, "removed": removed, "after": after}
    return out


def _samples(windows: Sequence[Window], source: int, tokenizer: PreTrainedTokenizerBase,
             docs_of: dict[int, tuple[TokenizedDocument, bool]], texts_of: dict[int, str],
             report: dict[str, Any]) -> list[TokenizedText]:
    """The samples of a source's finished windows; the documents no later window can reach are let go."""
    docs = {i: doc for i, (doc, _) in docs_of.items()}
    samples = [TokenizedText(text=window_text(tokenizer, w, docs, texts_of), input_ids=w.input_ids, source=source,
                             format_enhanced=any(docs_of[d][1] for d in w.documents)) for w in windows]
    report["sources"][source]["samples"] += len(samples)
    if windows:
        for index in [i for i in docs_of if i < windows[-1].documents[-1]]:
            del docs_of[index], texts_of[index]
    return samples


def _finish(packer: StreamPacker | None, source: int, tokenizer: PreTrainedTokenizerBase,
            docs_of: dict[int, tuple[TokenizedDocument, bool]], texts_of: dict[int, str],
            report: dict[str, Any]) -> list[TokenizedText]:
    if packer is None:
        return []
    report["sources"][source]["documents_after_filters"] = packer.documents_added
    return _samples(packer.finish(), source, tokenizer, docs_of, texts_of, report)


def _add_reasoning(formatted: list[Formatted], tokenizer: PreTrainedTokenizerBase, config: ProcessConfig,
                   model: Any, quiet: bool) -> tuple[list[Formatted], list[bool], dict[str, int]]:
    """Write the missing reasoning chains of Q&A records with a model (the uncompressed one by default)."""
    from cola.models import input_device
    from cola.stages.reasoning import default_cache_path, generate_reasoning, load_reasoning_model

    if model is None and config.reasoning_model is None:
        raise ColaError("--generate_reasoning needs a model: the uncompressed one or --reasoning_model")
    device = str(input_device(model)) if model is not None else "auto"
    gen_model, gen_tokenizer = load_reasoning_model(config.reasoning_model, model, tokenizer, device=device,
                                                    dtype="auto", quiet=quiet)
    records, enhanced, counts = generate_reasoning(formatted, gen_model, gen_tokenizer, config.reasoning,
                                                   cache_path=default_cache_path(), quiet=quiet)
    return list(records), list(enhanced), counts

