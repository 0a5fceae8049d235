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

BOS: for a model whose tokenizer starts every input with BOS, each document's ids already start with
exactly one (`cola.tokenization.encode_texts`; a chat template's own BOS counts), so the stream reads
`bos doc eos bos doc eos ...`. A window that starts at a document start begins with that BOS; any other
window gets one in front. Every sample thus starts with exactly one BOS, as does every document inside it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cola.config import LENGTH_MODES
from cola.errors import unknown_choice
from cola.tokenization import check_room_after_bos, encode_texts

# Where a new unit of text starts: after a blank line (paragraph), a line break, or sentence punctuation and
# any closing quotes or brackets: followed by whitespace in spaced scripts, by anything in Chinese and Japanese.
_BOUNDARY = re.compile(r"\n\s*\n\s*|\n\s*|[.!?][\"')\]’”]*\s+|[。！？][”’」』）]*\s*")
REPLACEMENT = "\ufffd"  # what a decoder writes for the bytes of a character cut in two


@dataclass(frozen=True, eq=False)
class TokenizedDocument:
    """One document's token ids, the token indices where a paragraph or sentence starts, and where each
    token lies in the text (None for slow tokenizers, which give no offsets)."""

    input_ids: np.ndarray               # (T,) int32
    boundaries: np.ndarray              # (B,) int32, ascending, always includes 0
    spans: np.ndarray | None = None     # (T, 2) int64: each token's [start, end) character offsets


@dataclass(frozen=True, eq=False)
class Window:
    """One sample: `sequence_length` token ids (at most, in mode "truncate"), and which documents it draws from.

    `head` tokens (a BOS) were put in front of the stream's tokens; the stream part runs from token
    `first_token` of documents[0] to just before token `end_token` of documents[-1] (a document's
    separator counts as its token len(document)).
    """

    input_ids: np.ndarray           # (L,) int32
    documents: tuple[int, ...]      # indices into the document list, in order
    head: int = 0
    first_token: int = 0
    end_token: int = 0


def boundary_token_indices(text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Token indices whose token starts a paragraph, line or sentence of `text` (always includes 0).

    A unit starts at a character; its token is the one holding that character when all it holds before
    it is whitespace. Byte-level BPE tokenizers attach the space to the next word: " The" has offsets
    (12, 16) untrimmed (SmolLM2, GPT-2) and (13, 16) trimmed, and both times the sentence starts at that
    token, not at the first token starting at or after character 13 (" librarian", one word late). A token
    that also holds the previous unit's end cannot start the unit; the next one does.
    """
    if not offsets:
        return np.zeros(1, dtype=np.int32)
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)  # (T, 2) char offsets of each token
    starts, ends = spans[:, 0], spans[:, 1]
    tokens = [0]
    for char in (m.end() for m in _BOUNDARY.finditer(text) if 0 < m.end() < len(text)):
        holder = int(np.searchsorted(starts, char, side="right")) - 1  # last token starting at or before
        if holder >= 0:
            holder = int(np.searchsorted(starts, starts[holder], side="left"))  # a character split in bytes
        before = text[starts[holder]:char] if holder >= 0 else ""
        if holder >= 0 and ends[holder] > char and (not before or before.isspace()):
            tokens.append(holder)
        else:
            tokens.append(int(np.searchsorted(starts, char, side="left")))  # first token at or after
    found = np.asarray(tokens, dtype=np.int64)
    return np.unique(found[found < len(starts)]).astype(np.int32)


def tokenize_documents(tokenizer: Any, texts: Sequence[str], *, bos_id: int | None = None,
                       batch_size: int = 256) -> list[TokenizedDocument]:
    """Tokenize whole documents (no truncation) and find their boundary tokens.

    No special tokens are added but `bos_id` (`cola.tokenization.model_bos_id`), which starts each
    document exactly once. Without offsets (slow tokenizers) only the document start is a known boundary.
    """
    docs = []
    for text, ids, offsets in encode_texts(tokenizer, texts, bos_id=bos_id, offsets=True, batch_size=batch_size):
        spans = None if offsets is None else np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        boundaries = np.zeros(1, dtype=np.int32) if offsets is None else boundary_token_indices(text, offsets)
        docs.append(TokenizedDocument(np.asarray(ids, dtype=np.int32), boundaries, spans))
    return docs


def cut_to_length(ids: Sequence[int] | np.ndarray, length: int, *, bos_id: int | None = None,
                  ) -> tuple[np.ndarray, int]:
    """The one "cut to N tokens" rule: `ids`' first tokens as (at most `length`,) int32, and how many tokens were
    put in front (0 or 1). With `bos_id`, a sequence that does not start with it gets one in front, which takes
    one of the `length` places, so every cut sequence starts with exactly one BOS. Used by packing's
    "truncate" mode, the no-Stage-2 cut and Stage 1's probes (`cola.stages.process.truncate_to_length`), and
    self-generation's prompts.
    """
    head = int(bos_id is not None and len(ids) > 0 and ids[0] != bos_id)
    body = np.asarray(ids[:length - head])
    return np.concatenate([[bos_id] * head, body]).astype(np.int32, copy=False), head


def _windows(ids: np.ndarray, boundaries: np.ndarray, owner: np.ndarray, position: np.ndarray, length: int,
             slack: int, bos_id: int | None, *, start: int = 0, final: bool = True) -> tuple[list[Window], int]:
    """Consecutive windows of `length` over one stream from token `start`; each next start snaps to a boundary
    within `slack`. Returns (windows, the start of the next window).

    A window that does not start with `bos_id` (when given) gets it in front and one stream token less. Not
    `final` (more of the stream is to come): a window is only made when the boundaries its next start could
    snap to are all known (its end + slack inside the stream); the rest waits for more tokens.
    """
    windows: list[Window] = []
    while start < len(ids):
        head = int(bos_id is not None and ids[start] != bos_id)
        end = start + length - head
        if end > len(ids) or not final and end + slack >= len(ids):
            break
        body = ids[start:end]
        tokens = np.concatenate([[bos_id], body]).astype(np.int32) if head else body.copy()
        windows.append(Window(tokens, tuple(dict.fromkeys(owner[start:end].tolist())), head,
                              int(position[start]), int(position[end - 1]) + 1))
        nxt = np.searchsorted(boundaries, end, side="left")  # first boundary at or after the end
        start = int(boundaries[nxt]) if nxt < len(boundaries) and boundaries[nxt] - end <= slack else end
    return windows, start


class StreamPacker:
    """One source's length step fed its documents in chunks, in order: `add` returns the windows that are
    complete, `finish` the rest. The windows are exactly those of `pack_to_length` over all the documents
    (it is this class fed once), with `Window.documents` counting documents across every `add`. Only the
    documents of the window being filled are held (mode "pack"); the other modes hold none.
    Arguments as `pack_to_length`; raises ColaError for an unknown mode, or a `sequence_length` below 2 with a BOS.
    """

    def __init__(self, sequence_length: int, *, separator_id: int | None, bos_id: int | None = None,
                 mode: str = "pack", slack_fraction: float = 0.125) -> None:
        if mode not in LENGTH_MODES:
            raise unknown_choice("length mode", mode, LENGTH_MODES)
        check_room_after_bos(sequence_length, bos_id)
        # each document's own BOS already separates it from the one before
        self.separator_id = None if separator_id is not None and separator_id == bos_id else separator_id
        self.length, self.bos_id, self.mode = sequence_length, bos_id, mode
        self.slack = int((sequence_length - (bos_id is not None)) * slack_fraction)
        self._added = 0                                              # documents added so far
        self._pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # (document, stream ids, boundaries)
        self._start = 0                                              # next window's start in the pending stream

    def add(self, docs: Sequence[TokenizedDocument], self_delimited: Sequence[bool] = ()) -> list[Window]:
        """The windows completed by `docs` (the next documents of the source)."""
        first, self._added = self._added, self._added + len(docs)
        windows: list[Window] = []
        for j, doc in enumerate(docs):
            index = first + j
            if self.mode == "truncate":
                if len(doc.input_ids):
                    ids, head = cut_to_length(doc.input_ids, self.length, bos_id=self.bos_id)
                    windows.append(Window(ids, (index,), head, 0, len(ids) - head))
            elif self.mode == "window":
                self._pending = [(index, doc.input_ids.astype(np.int32), doc.boundaries.astype(np.int64))]
                windows += self._drain(final=True)
            else:
                ends_itself = j < len(self_delimited) and self_delimited[j]
                ids = doc.input_ids if self.separator_id is None or ends_itself else np.append(doc.input_ids,
                                                                                             self.separator_id)
                self._pending.append((index, ids.astype(np.int32), doc.boundaries.astype(np.int64)))
        return windows + (self._drain(final=False) if self.mode == "pack" else [])

    def finish(self) -> list[Window]:
        """The last windows (tokens past the last full window are dropped)."""
        return self._drain(final=True) if self.mode == "pack" else []

    @property
    def documents_added(self) -> int:
        """How many documents `add` was given so far (the next one's index in `Window.documents`)."""
        return self._added

    def _drain(self, *, final: bool) -> list[Window]:
        if not self._pending:
            return []
        sizes = np.array([len(ids) for _, ids, _ in self._pending])
        offsets = np.concatenate([[0], np.cumsum(sizes)])          # (D+1,) each document's start in the stream
        stream = np.concatenate([ids for _, ids, _ in self._pending])                                  # (S,)
        boundaries = np.concatenate([b + o for (_, _, b), o in zip(self._pending, offsets)])           # (B,)
        owner = np.repeat([index for index, _, _ in self._pending], sizes)                             # (S,)
        position = np.concatenate([np.arange(n) for n in sizes])  # (S,) each token's index in its document
        windows, start = _windows(stream, boundaries, owner, position, self.length, self.slack, self.bos_id,
                                  start=self._start, final=final)
        if final:
            self._pending, self._start = [], 0
        else:  # keep the documents from the one holding the next start on
            keep = int(np.searchsorted(offsets, start, side="right")) - 1
            self._pending, self._start = self._pending[keep:], start - int(offsets[keep])
        return windows


def pack_to_length(docs: Sequence[TokenizedDocument], sequence_length: int, *, separator_id: int | None,
                   bos_id: int | None = None, mode: str = "pack", slack_fraction: float = 0.125,
                   self_delimited: Sequence[bool] = ()) -> list[Window]:
    """Cut one source's documents into samples of `sequence_length` tokens; `mode` is one of LENGTH_MODES.

    `bos_id` (for tokenizers that start every input with BOS) starts each sample exactly once: a window
    that begins with a document's own BOS keeps it, any other gets one in front. When packing, a document
    flagged in `self_delimited` (a chat turn that ends itself, "<|im_end|>\n") gets no separator after it.
    Tokens past the last full window are dropped; so are, in mode "window", documents shorter than a
    window. Mode "truncate" gives one sample per document, its first tokens. Raises ColaError for an unknown
    mode, or a `sequence_length` below 2 with a BOS. (`StreamPacker` does the same fed in chunks.)
    """
    packer = StreamPacker(sequence_length, separator_id=separator_id, bos_id=bos_id, mode=mode,
                          slack_fraction=slack_fraction)
    return packer.add(docs, self_delimited) + packer.finish()


def _shares_character(spans: np.ndarray | None, index: int) -> bool:
    """Whether token `index` starts inside a character that token `index - 1` holds part of (byte-level
    tokenizers split a multi-byte character over tokens; their offsets then overlap)."""
    return spans is not None and 0 < index < len(spans) and spans[index - 1][1] > spans[index][0]


def whole_character_end(spans: np.ndarray | None, end_token: int, text_end: int) -> int:
    """The character offset where the text of tokens [.., end_token) ends in whole characters: before a
    character the next token holds part of, else `text_end` (the last token's end)."""
    return int(spans[end_token][0]) if _shares_character(spans, end_token) else text_end


def _replacement_run(text: str, start: int = 0, *, backwards: bool = False) -> int:
    """How many U+FFFD follow `text[start]` on (or precede `text[:start]`, backwards)."""
    part = text[:start][::-1] if backwards else text[start:]
    return len(part) - len(part.lstrip(REPLACEMENT))


def window_text(tokenizer: Any, window: Window, docs: Sequence[TokenizedDocument], texts: Sequence[str]) -> str:
    """The window's ids decoded, without the pieces of a character that the window cuts at either end.

    A window can start or end inside a multi-byte character (byte-level tokenizers), and decoding writes
    U+FFFD for the orphan bytes. Those are dropped; a U+FFFD that the source text holds is kept (the
    document's own text says how many follow the first whole character, or precede the last one). The
    ids are not touched. Needs token offsets; with none (slow tokenizers) the plain decoding is returned.
    """
    text = tokenizer.decode(window.input_ids, clean_up_tokenization_spaces=False)
    if REPLACEMENT not in text:
        return text
    first, last = window.documents[0], window.documents[-1]
    head = tokenizer.decode(window.input_ids[:window.head], clean_up_tokenization_spaces=False) if window.head else ""
    if _shares_character(docs[first].spans, window.first_token) and text.startswith(head):
        whole_start = int(docs[first].spans[window.first_token - 1][1])
        extra = _replacement_run(text, len(head)) - _replacement_run(texts[first], whole_start)
        text = head + text[len(head) + max(extra, 0):]
    if _shares_character(docs[last].spans, window.end_token):
        whole_end = int(docs[last].spans[window.end_token][0])
        extra = _replacement_run(text, len(text), backwards=True) - _replacement_run(
            texts[last], whole_end, backwards=True)
        text = text[:len(text) - max(extra, 0)]
    return text
