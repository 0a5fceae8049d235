"""Stage 2 length step: cut documents into samples of `sequence_length` tokens, with no padding.

COLA (arXiv 2510.10618, Sec. 4.1) calibrates on samples of one standard length. Padding wastes compute and,
worse, enters the activation statistics that compression methods estimate, so every sample here is real
text. With packing (the default), the documents of ONE source are joined into one token stream, each
followed by a separator (EOS), and cut into consecutive windows. A window's start snaps forward to the next
paragraph or sentence start when one lies within a small slack, so long documents are split at natural
boundaries where possible. Mode "window" windows each document alone and drops documents shorter than
`sequence_length` (they cannot make a full sample without padding). Mode "truncate" makes each document one
sample of its first `sequence_length` tokens and keeps shorter ones whole: samples then vary in length, as
with the no-Stage-2 ablation's cut, and nothing is joined (the way to tell packing from formatting).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cola.config import LENGTH_MODES
from cola.errors import unknown_choice

# Where a new unit of text starts: after a blank line (paragraph), a line break, or sentence punctuation.
_BOUNDARY = re.compile(r"\n\s*\n\s*|\n\s*|(?<=[.!?])\s+")


@dataclass(frozen=True, eq=False)
class TokenizedDocument:
    """One document's token ids and the token indices where a paragraph or sentence starts."""

    input_ids: np.ndarray   # (T,) int32
    boundaries: np.ndarray  # (B,) int32, ascending, always includes 0


@dataclass(frozen=True, eq=False)
class Window:
    """One sample: `sequence_length` token ids (at most, in mode "truncate"), and which documents it draws from."""

    input_ids: np.ndarray           # (L,) int32
    documents: tuple[int, ...]      # indices into the document list, in order


def boundary_token_indices(text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Token indices whose token starts a paragraph, line or sentence of `text` (always includes 0)."""
    if not offsets:
        return np.zeros(1, dtype=np.int32)
    starts = np.array([start for start, _ in offsets], dtype=np.int64)  # (T,) char offset of each token
    chars = [m.end() for m in _BOUNDARY.finditer(text) if 0 < m.end() < len(text)]
    tokens = np.searchsorted(starts, np.array(chars, dtype=np.int64), side="left")  # first token at/after
    tokens = tokens[tokens < len(starts)]
    return np.unique(np.concatenate([[0], tokens])).astype(np.int32)


def tokenize_with_offsets(tokenizer, texts: Sequence[str], batch_size: int = 256, **kwargs: Any,
                          ) -> Iterator[tuple[str, list[int], list[tuple[int, int]] | None]]:
    """(text, token ids, character offsets) per text, tokenized in batches; offsets are None for slow tokenizers."""
    fast = bool(tokenizer.is_fast)
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        enc = tokenizer(chunk, return_offsets_mapping=fast, verbose=False, **kwargs)
        offsets = enc["offset_mapping"] if fast else [None] * len(chunk)
        yield from zip(chunk, enc["input_ids"], offsets)


def tokenize_documents(tokenizer, texts: Sequence[str], batch_size: int = 256) -> list[TokenizedDocument]:
    """Tokenize whole documents (no special tokens, no truncation) and find their boundary tokens.

    Without offsets (slow tokenizers) only the document start is a known boundary.
    """
    return [TokenizedDocument(np.asarray(ids, dtype=np.int32),
                              boundary_token_indices(text, offsets) if offsets is not None
                              else np.zeros(1, dtype=np.int32))
            for text, ids, offsets in tokenize_with_offsets(tokenizer, texts, batch_size, add_special_tokens=False)]


def _windows(ids: np.ndarray, boundaries: np.ndarray, owner: np.ndarray, length: int, slack: int) -> list[Window]:
    """Consecutive windows of `length` over one stream; each start snaps to a boundary within `slack`."""
    windows: list[Window] = []
    start = 0
    while start + length <= len(ids):
        window_owner = owner[start:start + length]
        windows.append(Window(ids[start:start + length].copy(), tuple(dict.fromkeys(window_owner.tolist()))))
        end = start + length
        nxt = np.searchsorted(boundaries, end, side="left")  # first boundary at or after the end
        start = int(boundaries[nxt]) if nxt < len(boundaries) and boundaries[nxt] - end <= slack else end
    return windows


def pack_to_length(docs: Sequence[TokenizedDocument], sequence_length: int, *, separator_id: int | None,
                   bos_id: int | None = None, mode: str = "pack", slack_fraction: float = 0.125,
                   self_delimited: Sequence[bool] = ()) -> list[Window]:
    """Cut one source's documents into samples of `sequence_length` tokens; `mode` is one of LENGTH_MODES.

    `bos_id` (for tokenizers that start every input with BOS) takes the first slot of each sample. When
    packing, a document flagged in `self_delimited` (a chat turn that ends itself, "<|im_end|>\n") gets no
    separator after it. Tokens past the last full window are dropped; so are, in mode "window", documents
    shorter than a window. Mode "truncate" gives one sample per document, its first tokens.
    """
    if mode not in LENGTH_MODES:
        raise unknown_choice("length mode", mode, LENGTH_MODES)
    if sequence_length < 2 and bos_id is not None:
        raise ValueError("sequence_length must leave room for tokens after BOS")
    body = sequence_length - (bos_id is not None)
    head = np.array([] if bos_id is None else [bos_id], dtype=np.int32)  # (0,) or (1,): BOS first
    if mode == "truncate":
        return [Window(np.concatenate([head, doc.input_ids[:body]]).astype(np.int32, copy=False), (i,))
                for i, doc in enumerate(docs) if len(doc.input_ids)]
    pack = mode == "pack"
    slack = int(body * slack_fraction)
    groups = [list(range(len(docs)))] if pack else [[i] for i in range(len(docs))]
    windows: list[Window] = []
    for group in groups:
        parts, bounds, owners, offset = [], [], [], 0
        for i in group:
            doc = docs[i]
            ends_itself = i < len(self_delimited) and self_delimited[i]
            ids = (doc.input_ids if separator_id is None or not pack or ends_itself
                   else np.append(doc.input_ids, separator_id))
            parts.append(ids.astype(np.int32))
            bounds.append(doc.boundaries.astype(np.int64) + offset)
            owners.append(np.full(len(ids), i, dtype=np.int64))
            offset += len(ids)
        if offset < body:
            continue
        stream = np.concatenate(parts)                 # (S,)
        boundaries = np.concatenate(bounds)            # (B,) ascending: documents are in order
        for window in _windows(stream, boundaries, np.concatenate(owners), body, slack):
            windows.append(Window(np.concatenate([head, window.input_ids]), window.documents))
    return windows
