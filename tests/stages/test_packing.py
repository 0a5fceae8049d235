"""Stage 2 length step: exact-length windows, no padding, packing within a source, boundary-aware splits."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cola.config import ProcessConfig
from cola.errors import ColaError
from cola.stages.packing import (TokenizedDocument, boundary_token_indices, pack_to_length, tokenize_documents,
                                 window_text)

from tests.conftest import byte_tokenizer

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


# Short sentences (at most 6 words), so a sentence start always lies within a window's slack.
SENTENCES = ["The librarian packed the boxes.", "A cat slept on the mat.", "Rain fell all day.",
             "We walked home slowly.", "Bread costs two coins.", "The river froze early.",
             "Nobody answered the door.", "Birds sang at dawn.", "She fixed the old clock.",
             "Trains run every hour.", "Snow covered the hills.", "He sold his red bike.",
             "Lamps glowed in windows.", "The baker woke early.", "Children laughed outside.",
             "Our teacher smiled again."]
PARAGRAPH = " ".join(SENTENCES * 4)  # one paragraph: the only boundaries are sentence starts


def _word_tokenizer(trim_offsets: bool):
    """A byte-level BPE trained on PARAGRAPH (whole words, the space attached to the next word, " The"),
    with trimmed (13, 16) or untrimmed (12, 16) offsets for such a token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([PARAGRAPH], trainers.BpeTrainer(
        vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["</s>"],
        show_progress=False))
    tok.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


def _window_starts(tokenizer, length: int) -> list[str]:
    """The text each packed window of PARAGRAPH starts with, up to its first sentence end."""
    (doc,) = tokenize_documents(tokenizer, [PARAGRAPH])
    windows = pack_to_length([doc], length, separator_id=tokenizer.eos_token_id)
    return [tokenizer.decode(w.input_ids, clean_up_tokenization_spaces=False).split(".")[0] + "." for w in windows]


@pytest.mark.parametrize("trim_offsets", [True, False])
def test_windows_start_at_a_sentences_first_word_whichever_offset_convention(trim_offsets: bool) -> None:
    tokenizer = _word_tokenizer(trim_offsets)
    (doc,) = tokenize_documents(tokenizer, [PARAGRAPH])
    starts = [tokenizer.decode(doc.input_ids[i:i + 2]) for i in doc.boundaries[:4]]
    assert starts == ["The librarian", " A cat", " Rain fell", " We walked"]  # not " librarian packed"
    assert len(doc.boundaries) == len(SENTENCES) * 4
    windows = _window_starts(tokenizer, 64)  # slack 8 tokens: every window can reach a sentence start
    assert windows == ["The librarian packed the boxes.", " Lamps glowed in windows.", " Trains run every hour.",
                       " Nobody answered the door.", " Rain fell all day."]
    assert all(w.strip() in SENTENCES for w in windows)


def test_byte_tokenizer_windows_start_at_sentences() -> None:
    windows = _window_starts(byte_tokenizer(), 200)  # one token per byte; slack 25 bytes
    assert all(w.strip() in SENTENCES for w in windows) and len(windows) == len(PARAGRAPH) // 200
    assert windows[:3] == ["The librarian packed the boxes.", "Trains run every hour.", "A cat slept on the mat."]


def test_boundaries_in_chinese_and_japanese_follow_full_stops_and_closing_quotes() -> None:
    tok = byte_tokenizer()  # a CJK character is 3 byte tokens, all with the character's offsets
    text = "天气很好。我们去公园吧！他说：“好。”然后走了？是的\n次の行です。"
    (doc,) = tokenize_documents(tok, [text])
    heads = [tok.decode(doc.input_ids[i:i + 3]) for i in doc.boundaries]
    assert heads == ["天", "我", "他", "然", "是", "次"]


@pytest.mark.integration
def test_smollm2_windows_start_at_a_sentences_first_word() -> None:
    """SmolLM2's tokenizer attaches the space to the next word with untrimmed offsets (" The" is (12, 16))."""
    from transformers import AutoTokenizer

    from cola.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("embedded", quiet=True))
    (doc,) = tokenize_documents(tokenizer, [PARAGRAPH])
    assert [tokenizer.decode(doc.input_ids[i:i + 2]) for i in doc.boundaries[:3]] == [
        "The librarian", " A cat", " Rain fell"]
    windows = _window_starts(tokenizer, 96)  # slack 12 tokens
    assert all(w.strip() in SENTENCES for w in windows)
    assert windows == ["The librarian packed the boxes.", " Rain fell all day.", " Bread costs two coins."]


def test_window_texts_hold_whole_characters_and_the_ids_stay_as_cut() -> None:
    """A byte tokenizer cuts a 3-byte character between windows; the texts leave its pieces (U+FFFD) out,
    keep a U+FFFD the source holds, and the ids are the stream's bytes, unchanged."""
    tok = byte_tokenizer()
    text = "中" * 21 + "文" + "\ufffd" + "中" * 19 + "🙂" + "天" * 30  # no sentence ends: windows cut anywhere
    (doc,) = tokenize_documents(tok, [text])
    windows = pack_to_length([doc], 64, separator_id=SEP)
    assert np.array_equal(np.concatenate([w.input_ids for w in windows]), doc.input_ids[:64 * len(windows)])
    texts = [window_text(tok, w, [doc], [text]) for w in windows]
    decoded = [tok.decode(w.input_ids) for w in windows]
    assert decoded[0] == "中" * 21 + "\ufffd" and texts[0] == "中" * 21  # 64 = 21 x 3 + 1 byte of 文
    assert decoded[1].startswith("\ufffd\ufffd\ufffd中")                    # 2 bytes of 文, then the real U+FFFD
    assert texts[1] == "\ufffd" + "中" * 19                               # 2 + 3 + 57 bytes, then 2 of 🙂
    assert decoded[2].startswith("\ufffd\ufffd天") and decoded[2].endswith("天\ufffd")
    assert texts[2] == "天" * 20                                          # 2 bytes of 🙂, 60, 2 bytes of 天
    assert all(t in text for t in texts)  # each a piece of the source, in whole characters


def test_truncation_keeps_whole_characters() -> None:
    from cola.stages.process import truncate_to_length

    (cut,) = truncate_to_length(byte_tokenizer(), ["🙂" * 10], 9)  # 4-byte emoji: 9 bytes = 2 whole + 1 byte
    assert cut.text == "🙂🙂" and len(cut.input_ids) == 9
    (genuine,) = truncate_to_length(byte_tokenizer(), ["a\ufffdb"], 4)  # a genuine U+FFFD is a whole character
    assert genuine.text == "a\ufffd"


@pytest.mark.parametrize("adds_bos", [False, True])
def test_stage2_sample_texts_never_start_or_end_inside_a_character(adds_bos: bool, tmp_path) -> None:
    from cola.data.sources import load_source, parse_source
    from cola.stages.process import process_sources

    from tests.conftest import write_jsonl
    from tests.test_tokenization import special_tokenizer

    tokenizer = special_tokenizer("<s>", "</s>", adds_bos, None)
    rows = [{"text": f"第{i}段" + "春天来了花开了鸟儿在唱歌" * (3 + i % 4)} for i in range(8)]  # no sentence ends
    source = load_source(parse_source(f"{write_jsonl(tmp_path / 'zh.jsonl', rows)}@general"), max_candidates=8,
                         seed=0)
    samples, _ = process_sources([source], tokenizer, 50, ProcessConfig(), quiet=True)
    stream_bytes = b"".join((r["text"]).encode() for r in rows)
    assert len(samples) > 8 and all(len(s.input_ids) == 50 for s in samples)
    for s in samples:
        body = s.text.removeprefix("<s>")
        assert s.text.startswith("<s>") == adds_bos and "\ufffd" not in body, s.text
        assert all(part.encode() in stream_bytes for part in re.split("</?s>", body) if part)
    # the ids are the cut stream, as they were: their plain decoding shows the cut characters
    assert sum("\ufffd" in tokenizer.decode(s.input_ids) for s in samples) >= len(samples) // 2


@pytest.mark.integration
def test_smollm2_window_texts_over_chinese_japanese_and_thai_hold_whole_characters() -> None:
    """SmolLM2 splits most CJK and Thai characters into byte tokens, so windows cut inside them."""
    from transformers import AutoTokenizer

    from cola.models import resolve_model_path

    from tests.stages.multilingual_texts import UNSPACED

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("embedded", quiet=True))
    docs = tokenize_documents(tokenizer, UNSPACED)
    windows = pack_to_length(docs, 50, separator_id=tokenizer.eos_token_id, slack_fraction=0.0)
    decoded = [tokenizer.decode(w.input_ids, clean_up_tokenization_spaces=False) for w in windows]
    texts = [window_text(tokenizer, w, docs, UNSPACED) for w in windows]
    assert sum("\ufffd" in d for d in decoded) > len(windows) // 2  # the cuts are there, in the ids
    assert not any("\ufffd" in t for t in texts)
    assert all(part in "".join(UNSPACED) for t in texts for part in t.split("<|im_end|>") if part)


@pytest.mark.parametrize("mode", ["pack", "window", "truncate"])
@pytest.mark.parametrize("bos", [None, 1])
def test_a_stream_packer_fed_in_chunks_makes_the_windows_of_one_pass(mode: str, bos: int | None) -> None:
    """Documents of random lengths with sentence boundaries, some self-delimited, fed in random chunks (one
    document at a time included): the same windows, ids and document indices as pack_to_length over all."""
    from cola.stages.packing import StreamPacker

    rng = np.random.default_rng(7)
    docs = []
    for i in range(120):
        n = int(rng.integers(1, 90))
        ids = np.concatenate([[bos], rng.integers(2, 200, n)]).astype(np.int32) if bos else rng.integers(2, 200, n)
        cuts = np.unique(np.concatenate([[0], rng.integers(0, len(ids), 3)])).astype(np.int32)
        docs.append(TokenizedDocument(ids.astype(np.int32), cuts))
    delimited = (rng.random(len(docs)) < 0.3).tolist()
    whole = pack_to_length(docs, 48, separator_id=SEP, bos_id=bos, mode=mode, self_delimited=delimited)
    assert len(whole) > 20
    for sizes in ([1] * len(docs), [7, 1, 30, 2, 80], [len(docs)]):
        packer, got, at = StreamPacker(48, separator_id=SEP, bos_id=bos, mode=mode), [], 0
        for size in sizes:
            got += packer.add(docs[at:at + size], delimited[at:at + size])
            at += size
            if mode == "pack" and size == 1:  # held: the window being filled, at most one document past it
                assert sum(len(ids) for _, ids, _ in packer._pending) <= 48 + packer.slack + 91
        got += packer.finish()
        assert [(w.input_ids.tolist(), w.documents, w.head, w.first_token, w.end_token) for w in got] == [
            (w.input_ids.tolist(), w.documents, w.head, w.first_token, w.end_token) for w in whole]
        if mode == "pack":
            assert len(packer._pending) == 0
