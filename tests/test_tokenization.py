"""Exactly one BOS: tokenizer, chat template and packer each may add one; every place that makes model input
(Stage 2 documents and windows, the perplexity filter, Stage 1 probes, reasoning and self-generation prompts)
gives each sample, and each document inside it, exactly one where the model's format has one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cola.config import ProcessConfig
from cola.data.formatters import Formatted, qa_text
from cola.data.sources import load_source, parse_source
from cola.errors import ColaError
from cola.stages.filters import FilterConfig
from cola.stages.packing import TokenizedDocument, pack_to_length
from cola.experiment.self_generated import prompt_ids
from cola.stages.process import chat_renderer, process_sources, truncate_to_length
from cola.stages.reasoning import ReasoningConfig, generate_reasoning
from cola.tokenization import encode, model_bos_id, template_writes_bos

from tests.conftest import byte_tokenizer, write_jsonl

TURNS = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot|>{% endfor %}"
GENERATION = "{% if add_generation_prompt %}<|assistant|>{% endif %}"
# Llama-3's pattern: the template writes BOS, and the tokenizer adds one to every input as well
LLAMA3 = "{{ bos_token }}" + TURNS + GENERATION
LLAMA31 = ("{{ bos_token }}{% if messages[0]['role'] != 'system' %}<|system|>Cutting Knowledge Date: 2023<|eot|>"
           "{% endif %}" + TURNS + GENERATION)  # Llama-3.1: a default system turn after the BOS
# Gemma's: BOS written by the template (and added by the tokenizer), no system role
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}"
         "\n{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n"
         "{% endif %}")
# Llama-2 style here: a template without BOS, a tokenizer that adds it
NO_BOS = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}" + GENERATION
# SmolLM2's: neither; its bos_token <|im_start|> opens every turn, written literally, never added
SMOLLM2 = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
STYLES = {  # name: (bos, eos, the tokenizer adds BOS, template)
    "llama3": ("<s>", "</s>", True, LLAMA3),
    "gemma": ("<bos>", "<eos>", True, GEMMA),
    "llama2": ("<s>", "</s>", True, NO_BOS),
    "smollm2": ("<|im_start|>", "<|im_end|>", False, SMOLLM2),
}
ADDS_BOS = [name for name, style in STYLES.items() if style[2]]
RECORD = Formatted(text="unused", question="What is 2+3?", reasoning="2+3=5.", answer="5")


def special_tokenizer(bos: str, eos: str, adds_bos: bool, template: str | None):
    """A byte-level fast tokenizer (one token per byte, character offsets) with special BOS and EOS tokens,
    a post-processor putting BOS in front of every input when `adds_bos`, and `template` as chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab[eos], vocab[bos] = 256, 257
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, 257)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos)
    tokenizer.chat_template = template
    return tokenizer


def styled(name: str):
    return special_tokenizer(*STYLES[name])


def bos_positions(ids) -> list[int]:
    return np.flatnonzero(np.asarray(ids) == 257).tolist()


@pytest.mark.parametrize("name, bos, writes", [("llama3", 257, True), ("gemma", 257, True), ("llama2", 257, False),
                                               ("smollm2", None, False)])
def test_the_bos_rule_is_read_off_the_tokenizer_and_template(name, bos, writes) -> None:
    tokenizer = styled(name)
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    assert tokenizer("a")["input_ids"] == ([257] if STYLES[name][2] else []) + plain
    assert (model_bos_id(tokenizer), template_writes_bos(tokenizer)) == (bos, writes)
    assert (model_bos_id(byte_tokenizer()), template_writes_bos(byte_tokenizer())) == (None, False)


@pytest.mark.parametrize("name", list(STYLES))
def test_encode_gives_exactly_one_bos_where_the_model_has_one(name) -> None:
    tokenizer = styled(name)
    bos = model_bos_id(tokenizer)
    rendered = chat_renderer(tokenizer)(RECORD)
    plain = "Hello there. A plain document."
    templated, untemplated = encode(tokenizer, [rendered, plain], bos_id=bos)
    body = tokenizer(plain, add_special_tokens=False)["input_ids"]
    if name == "smollm2":  # nothing added: the template's <|im_start|> turns are its own
        assert untemplated == body and templated == tokenizer(rendered, add_special_tokens=False)["input_ids"]
        assert bos_positions(templated) == [0, templated.index(257, 1)]  # two turns, two <|im_start|>
        return
    assert untemplated == [257, *body] and bos_positions(untemplated) == [0]
    assert bos_positions(templated) == [0]  # the template's BOS or the tokenizer's, never both
    if template_writes_bos(tokenizer):  # what the tokenizer's own special tokens would have made of it
        assert tokenizer(rendered)["input_ids"][:2] == [257, 257]


def test_packing_keeps_a_documents_own_bos_and_gives_other_windows_one() -> None:
    bos, eos = 500, 600
    docs = [TokenizedDocument(np.array([bos, *range(10 * d + 1, 10 * d + 10)], np.int32), np.zeros(1, np.int32))
            for d in range(3)]  # each [bos, 9 tokens]; stream of 33 with separators
    windows = pack_to_length(docs, 8, separator_id=eos, bos_id=bos, slack_fraction=0.0)
    assert [w.input_ids.tolist() for w in windows] == [
        [bos, 1, 2, 3, 4, 5, 6, 7],              # a document's start: its own BOS, no second
        [bos, 8, 9, eos, bos, 11, 12, 13],       # mid-document: one in front; the next document brings its own
        [bos, 14, 15, 16, 17, 18, 19, eos],
        [bos, 21, 22, 23, 24, 25, 26, 27]]
    assert [w.head for w in windows] == [0, 1, 1, 0]
    truncated = pack_to_length(docs[:1], 8, separator_id=eos, bos_id=bos, mode="truncate")
    assert truncated[0].input_ids.tolist() == [bos, 1, 2, 3, 4, 5, 6, 7]
    assert pack_to_length(docs[:1], 8, separator_id=bos, bos_id=bos)[0].input_ids.tolist() == [bos, *range(1, 8)]


def _sources(tmp_path: Path):
    qa = write_jsonl(tmp_path / "qa.jsonl", [
        {"question": f"Question {i}: how many legs do {i} spiders have?", "answer": f"{8 * i}"} for i in range(12)])
    prose = write_jsonl(tmp_path / "prose.jsonl", [
        {"text": f"Story {i}. The river ran past the mill. The town slept. " * (1 + i % 3)} for i in range(12)])
    return [load_source(parse_source(f"{path}@{cap}"), max_candidates=12, seed=0)
            for path, cap in ((qa, "math"), (prose, "general"))]


@pytest.mark.parametrize("name", list(STYLES))
@pytest.mark.parametrize("length", ["pack", "window", "truncate"])
def test_stage2_samples_and_the_perplexity_filter_see_exactly_one_bos(name, length, tmp_path, monkeypatch) -> None:
    tokenizer = styled(name)
    scored: list[list[int]] = []

    def perplexities(model, token_ids, **kwargs):  # what the perplexity filter would score
        scored.extend(list(map(int, ids)) for ids in token_ids)
        return np.arange(len(token_ids), dtype=np.float64)

    monkeypatch.setattr("cola.stages.process.sequence_perplexities", perplexities)  # Stage 2 scores
    config = ProcessConfig(length=length, filters=FilterConfig(dedup_near=False, min_tokens=1,
                                                               perplexity_drop_fraction=0.1))
    samples, report = process_sources(_sources(tmp_path), tokenizer, 48, config, model=object(), quiet=True)
    assert report["sources"][0]["chat_templated"] == 12 and len(scored) == 24 and samples
    for ids in [s.input_ids for s in samples] + [np.asarray(s) for s in scored]:
        assert not np.any((ids[1:] == 257) & (ids[:-1] == 257))  # never two in a row
        if name != "smollm2":
            assert bos_positions(ids)[:1] == [0]
            for p in bos_positions(ids)[1:]:  # any other BOS starts a document: after a separator or a chat record
                assert tokenizer.decode(ids[max(p - 15, 0):p]).endswith(
                    ("</s>", "<eos>", "<|eot|>", "<end_of_turn>\n", "\n")), tokenizer.decode(ids[:p + 1])
    if name == "smollm2":  # nothing added: only the chat records start with their own <|im_start|>
        assert sum(ids[0] == 257 for ids in scored) == 12
    else:
        assert all(bos_positions(ids) == [0] for ids in scored)  # each document alone: one BOS, first
    if length == "truncate" and name != "smollm2":  # one document per sample, so one BOS per sample
        assert sum(len(bos_positions(s.input_ids)) for s in samples) == len(samples)


def test_dropping_the_default_system_turn_keeps_the_templates_bos() -> None:
    tokenizer = special_tokenizer("<s>", "</s>", True, LLAMA31)
    exchange = "<|user|>What is 2+3?<|eot|><|assistant|>2+3=5.\n\nAnswer: 5<|eot|>"
    assert chat_renderer(tokenizer)(RECORD) == "<s><|system|>Cutting Knowledge Date: 2023<|eot|>" + exchange
    assert chat_renderer(tokenizer, "none")(RECORD) == "<s>" + exchange
    gemma = styled("gemma")  # refuses a system turn: its plain rendering, BOS first
    assert chat_renderer(gemma, "none")(RECORD).startswith("<bos><start_of_turn>user\nWhat is 2+3?")


@pytest.mark.parametrize("name", list(STYLES))
def test_stage1_probes_and_the_no_stage2_cut_have_exactly_one_bos(name) -> None:
    tokenizer = styled(name)
    texts = [chat_renderer(tokenizer)(RECORD), "Hello there. A plain text that is long enough to be cut."]
    cut = truncate_to_length(tokenizer, texts, 20)
    plain = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    if name == "smollm2":
        assert [c.input_ids.tolist() for c in cut] == [ids[:20] for ids in plain]
        return
    assert [bos_positions(c.input_ids) for c in cut] == [[0], [0]]
    assert cut[1].input_ids.tolist() == [257, *plain[1][:19]] and cut[1].text == texts[1][:19]


@pytest.mark.parametrize("name", list(STYLES))
def test_reasoning_prompts_start_with_exactly_one_bos(name, tiny_model, monkeypatch) -> None:
    tokenizer = styled(name)
    rows: list[list[int]] = []

    def generate(input_ids, attention_mask, max_new_tokens, pad_token_id, **kwargs):
        rows.extend(ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask))
        return torch.cat([input_ids, torch.full((len(input_ids), 1), 65)], dim=1)

    monkeypatch.setattr(tiny_model, "generate", generate)
    records = [Formatted(text=qa_text(f"Q{i}?", None, "A"), question=f"Q{i}?", answer="A") for i in range(3)]
    generate_reasoning(records, tiny_model, tokenizer, ReasoningConfig(max_new_tokens=2), cache_path=None,
                       quiet=True)
    assert len(rows) == 3
    for ids in rows:
        if name == "smollm2":
            assert tokenizer.decode(ids).startswith("<|im_start|>user\n")
        else:  # Llama-2 style (a template without BOS) used to get none
            assert bos_positions(ids) == [0]
            assert tokenizer.decode(ids[1:]).startswith(("<|user|>", "<start_of", "[user]"))


@pytest.mark.parametrize("name", ADDS_BOS)
def test_self_generation_prompts_have_exactly_one_bos(name) -> None:
    tokenizer = styled(name)
    texts = [chat_renderer(tokenizer)(RECORD), "A plain prompt text."]
    ids, usable = prompt_ids(tokenizer, texts, 6)
    assert usable == [0, 1] and all(bos_positions(row) == [0] for row in ids)
    assert prompt_ids(tokenizer, [[257, 1, 2, 3]], 3) == ([[257, 1, 2]], [0])  # ids are taken as they are


def test_a_sequence_length_with_no_room_after_bos_is_a_one_line_error() -> None:
    message = "sequence_length 1 leaves no room for text after the BOS token"
    doc = TokenizedDocument(np.array([257, 1, 2], np.int32), np.zeros(1, np.int32))
    for mode in ("pack", "window", "truncate"):
        with pytest.raises(ColaError, match=message):
            pack_to_length([doc], 1, separator_id=256, bos_id=257, mode=mode)
    with pytest.raises(ColaError, match=message):
        truncate_to_length(styled("llama3"), ["Hello"], 1)
    assert truncate_to_length(styled("smollm2"), ["Hello"], 1)[0].input_ids.tolist() == [
        styled("smollm2")("H")["input_ids"][0]]  # no BOS: one token of text is a sample
