"""Stage 2 length step: exact-length windows, no padding, packing within a source, boundary-aware splits."""

from __future__ import annotations

import numpy as np
import pytest

from cola.config import ProcessConfig
from cola.errors import ColaError
from cola.stages.packing import TokenizedDocument, boundary_token_indices, pack_to_length, tokenize_documents

from .conftest import byte_tokenizer

SEP = 256


def _doc(n: int, start: int = 0, boundaries=(0,)) -> TokenizedDocument:
    return TokenizedDocument(np.arange(start, start + n, dtype=np.int32) % 200, np.array(boundaries, np.int32))


def test_boundaries_are_sentence_and_paragraph_starts() -> None:
    tok = byte_tokenizer()
    text = "Hello there. New one!\n\nPara two.\nLine"
    (doc,) = tokenize_documents(tok, [text])
    assert len(doc.input_ids) == len(text)  # byte tokenizer: one token per character
    assert [text[i] for i in doc.boundaries] == ["H", "N", "P", "L"]


def test_boundary_indices_without_offsets() -> None:
    assert boundary_token_indices("", []).tolist() == [0]


def test_short_documents_are_packed_into_exact_windows() -> None:
    docs = [_doc(30, start=10 * i) for i in range(10)]  # 10 x (30 + separator) = 310 tokens
    windows = pack_to_length(docs, 64, separator_id=SEP, slack_fraction=0.0)
    assert len(windows) == 310 // 64
    assert all(len(w.input_ids) == 64 for w in windows)
    stream = np.concatenate([np.append(d.input_ids, SEP) for d in docs])
    assert np.array_equal(np.concatenate([w.input_ids for w in windows]), stream[: 64 * len(windows)])
    assert windows[0].documents == (0, 1, 2)  # 31 + 31 + 2 tokens
    assert (windows[0].input_ids == SEP).sum() == 2


def test_self_delimited_documents_get_no_separator() -> None:
    docs = [_doc(30, start=10 * i) for i in range(4)]
    windows = pack_to_length(docs, 61, separator_id=SEP, slack_fraction=0.0, self_delimited=[True, False, True])
    stream = np.concatenate([docs[0].input_ids, docs[1].input_ids, [SEP], docs[2].input_ids,
                             docs[3].input_ids, [SEP]])  # flags past the list's end mean "not self-delimited"
    assert np.array_equal(np.concatenate([w.input_ids for w in windows]), stream[: 61 * len(windows)])
    assert len(windows) == 2 and (np.concatenate([w.input_ids for w in windows]) == SEP).sum() == 2


def test_window_starts_snap_to_the_next_sentence_within_slack() -> None:
    doc = _doc(300, boundaries=(0, 70, 150, 290))
    windows = pack_to_length([doc], 64, separator_id=SEP, slack_fraction=0.125)  # slack 8 tokens
    # window 1 ends at 64; the boundary at 70 is within 8 -> window 2 starts there; ends at 134, next
    # boundary 150 is 16 away -> hard continue at 134; ends at 198 -> no boundary near -> 198; ends 262 ...
    starts = [int(w.input_ids[0]) for w in windows]
    assert starts == [0, 70, 134, 198 % 200]
    assert all(len(w.input_ids) == 64 for w in windows)


def test_without_packing_short_documents_are_dropped_and_long_ones_windowed_alone() -> None:
    docs = [_doc(50), _doc(130, start=1), _doc(63)]
    windows = pack_to_length(docs, 64, separator_id=SEP, mode="window", slack_fraction=0.0)
    assert [w.documents for w in windows] == [(1,), (1,)]
    assert all(SEP not in w.input_ids for w in windows)


@pytest.mark.parametrize("bos", [None, 255])
def test_truncate_keeps_each_document_once_cut_to_the_length(bos) -> None:
    docs = [_doc(50), _doc(130, start=1), _doc(63, start=2), _doc(0)]
    windows = pack_to_length(docs, 64, separator_id=SEP, bos_id=bos, mode="truncate",
                             self_delimited=[False, True, False, False])
    head = [] if bos is None else [bos]
    body = 64 - len(head)
    assert [w.documents for w in windows] == [(0,), (1,), (2,)]  # the empty document makes no sample
    assert [len(w.input_ids) for w in windows] == [min(n, body) + len(head) for n in (50, 130, 63)]
    for w, doc in zip(windows, docs):  # the document's first tokens, nothing joined, no separator
        assert w.input_ids.tolist() == head + doc.input_ids[:body].tolist()
        assert w.input_ids.dtype == np.int32


def test_unknown_length_mode_lists_the_valid_ones() -> None:
    with pytest.raises(ColaError, match="unknown length mode 'cut'.*Valid choices: pack, truncate, window"):
        pack_to_length([_doc(10)], 8, separator_id=SEP, mode="cut")
    with pytest.raises(ColaError, match="unknown length mode 'cut'"):
        ProcessConfig(length="cut")


def test_bos_takes_the_first_slot() -> None:
    windows = pack_to_length([_doc(200)], 32, separator_id=SEP, bos_id=255)
    assert all(len(w.input_ids) == 32 and w.input_ids[0] == 255 for w in windows)
    assert len(windows) == 201 // 31


def test_too_little_text_gives_no_window() -> None:
    assert pack_to_length([_doc(10), _doc(10)], 64, separator_id=SEP) == []


@pytest.mark.parametrize("length", [1, 7, 64])
def test_every_window_has_exactly_the_length(length: int) -> None:
    rng = np.random.default_rng(0)
    docs = [_doc(int(n), boundaries=(0,)) for n in rng.integers(1, 150, size=40)]
    windows = pack_to_length(docs, length, separator_id=SEP)
    assert windows and all(len(w.input_ids) == length for w in windows)
