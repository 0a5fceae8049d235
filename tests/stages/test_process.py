"""Stage 2's format step: chat rendering of Q&A records and conversations (the template's default system prompt
kept or left out), and format errors naming the row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cola.config import ProcessConfig
from cola.data.formatters import Formatted, mapped_formatter
from cola.data.sources import load_source, parse_sources
from cola.errors import ColaError
from cola.stages.process import chat_renderer, format_records, process_sources

from tests.conftest import byte_tokenizer

DEFAULT_SYSTEM = "<s>system\nYou are a helpful assistant</e>\n"
# SmolLM2's and Qwen2.5's pattern: a default system turn when the conversation has none
INSERTS_DEFAULT = ("{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                   "{{ '" + DEFAULT_SYSTEM.replace("\n", "\\n") + "' }}{% endif %}"
                   "{{ '<s>' + m['role'] + '\\n' + m['content'] + '</e>\\n' }}{% endfor %}")
REFUSES_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                  "{% endif %}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
RECORD = Formatted(text="unused", question="What is 2+3?", reasoning="2+3=5.", answer="5")
EXCHANGE = "<s>user\nWhat is 2+3?</e>\n<s>assistant\n2+3=5.\n\nAnswer: 5</e>\n"


def _tokenizer(template: str):
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


def test_default_system_prompt_is_kept_or_left_out():
    tokenizer = _tokenizer(INSERTS_DEFAULT)
    assert chat_renderer(tokenizer)(RECORD) == DEFAULT_SYSTEM + EXCHANGE
    assert chat_renderer(tokenizer, "none")(RECORD) == EXCHANGE


def test_template_without_a_default_renders_the_same_either_way():
    tokenizer = _tokenizer("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</e>\n{% endfor %}")
    assert chat_renderer(tokenizer, "none")(RECORD) == chat_renderer(tokenizer)(RECORD) == EXCHANGE


def test_template_that_refuses_a_system_turn_keeps_its_rendering():
    tokenizer = _tokenizer(REFUSES_SYSTEM)
    assert chat_renderer(tokenizer, "none")(RECORD) == "<user>What is 2+3?<assistant>2+3=5.\n\nAnswer: 5"


def test_unknown_system_prompt_mode_lists_the_choices():
    with pytest.raises(ColaError, match="unknown system prompt mode 'off'. Valid choices: none, template"):
        ProcessConfig(system_prompt="off")


# --- conversations (issue 17): chat datasets rendered by the template, counted in the report ----------------

CONVERSATION = Formatted(text="unused", turns=(("user", "Hi?"), ("assistant", "Hello.")))
CHAT_RECORDS = [{"id": i, "messages": [{"role": "user", "content": f"What is {i} plus {i}? Please answer."},
                                       {"role": "assistant", "content": f"It is {2 * i}, of course."}]}
                for i in range(3)]
PLAIN_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</e>\n{% endfor %}"


def _chat_file(tmp_path: Path, name: str = "chat.jsonl", records: list | None = None) -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records or CHAT_RECORDS), encoding="utf-8")
    return path


def _process(specs: list[str], tokenizer, **settings):
    sources = [load_source(spec, max_candidates=100, seed=0) for spec in parse_sources(specs)]
    return process_sources(sources, tokenizer, 4096, ProcessConfig(length="truncate", **settings))


def test_conversation_is_rendered_by_the_template():
    tokenizer = _tokenizer(INSERTS_DEFAULT)
    exchange = "<s>user\nHi?</e>\n<s>assistant\nHello.</e>\n"
    assert chat_renderer(tokenizer)(CONVERSATION) == DEFAULT_SYSTEM + exchange
    assert chat_renderer(tokenizer, "none")(CONVERSATION) == exchange


def test_conversation_with_its_own_system_turn_keeps_it():
    own = Formatted(text="unused", turns=(("system", "Be brief."), ("user", "Hi?")))
    assert chat_renderer(_tokenizer(INSERTS_DEFAULT), "none")(own) == "<s>system\nBe brief.</e>\n<s>user\nHi?</e>\n"


@pytest.mark.parametrize("suffix", ["", "#messages"])
def test_chat_file_is_templated_and_counted(tmp_path: Path, suffix: str):
    """Chat rows used to become `[{'role': ...}]` reprs with `chat_templated: 0` in the manifest."""
    path = _chat_file(tmp_path)
    samples, report = _process([f"{path}{suffix}"], _tokenizer(PLAIN_TEMPLATE), chat_template="on")
    entry = report["sources"][0]
    assert (entry["formatter"], entry["records"], entry["chat_templated"]) == ("chat", 3, 3)
    assert [s.text for s in samples] == [
        f"<s>user\nWhat is {i} plus {i}? Please answer.</e>\n<s>assistant\nIt is {2 * i}, of course.</e>\n"
        for i in range(3)]


def test_chat_file_without_a_template_gives_plain_turns(tmp_path: Path):
    samples, report = _process([str(_chat_file(tmp_path))], byte_tokenizer())
    assert report["sources"][0]["chat_templated"] == 0
    assert [s.text for s in samples] == [
        f"user: What is {i} plus {i}? Please answer.\nassistant: It is {2 * i}, of course." for i in range(3)]


def test_chat_file_named_like_a_catalog_text_dataset_is_still_a_chat(tmp_path: Path):
    _, report = _process([str(_chat_file(tmp_path, "c4.jsonl"))], _tokenizer(PLAIN_TEMPLATE))
    assert (report["sources"][0]["formatter"], report["sources"][0]["chat_templated"]) == ("chat", 3)


def test_template_that_refuses_a_conversation_names_the_row(tmp_path: Path):
    strict = ("{% for m in messages %}{% if m['role'] == 'assistant' and 'plus 1' in messages[0]['content'] %}"
              "{{ raise_exception('roles must alternate') }}{% endif %}{{ m['content'] }}{% endfor %}")
    path = _chat_file(tmp_path)
    with pytest.raises(ColaError) as err:
        _process([str(path)], _tokenizer(strict), chat_template="on")
    assert str(err.value) == (f"{path}: line 2: the model's chat template refuses this record (roles must "
                              "alternate); use --chat_template off to keep plain text")


def test_format_error_names_the_file_and_row(tmp_path: Path):
    path = _chat_file(tmp_path, "qa.jsonl", [{"q": "Q1", "a": "A1"}, {"q": "Q2", "a": {"value": "A2"}}])
    source = load_source(parse_sources([f"{path}#q"])[0], max_candidates=10, seed=0)
    with pytest.raises(ColaError) as err:
        list(format_records(source, mapped_formatter({"question": "q", "answer": "a"}, source.records[0])))
    assert str(err.value) == (f"{path}: line 2: field 'a' holds an object with keys value, not text: a text field "
                              "takes text, a list of strings or a conversation; name the text inside with a dotted "
                              "path, e.g. a.value")


def test_reference_probes_read_conversations_as_plain_turns(tmp_path: Path):
    from cola.config import CurateConfig
    from cola.stages.mixture import load_references
    from cola.stages.process import reference_probes

    path = _chat_file(tmp_path, "sharegpt.jsonl", [{"conversations": [{"from": "human", "value": "Hi?"},
                                                                       {"from": "gpt", "value": "Hello."}]}])
    config = CurateConfig(references=(("general", str(path)),), sequence_length=64)
    probes = reference_probes(load_references(config, ["general"])["general"], byte_tokenizer(), 64)
    assert [p.text for p in probes] == ["user: Hi?\nassistant: Hello."]


@pytest.mark.parametrize("length", ["pack", "window", "truncate"])
def test_stage2_in_chunks_gives_the_samples_and_report_of_one_pass(length: str, tmp_path: Path) -> None:
    """Three files with duplicates inside and across them, processed 3 documents at a time (dedup state, packing
    and the perplexity filter's first pass across chunk and source borders) and in one chunk: the same samples,
    texts and report."""
    from cola.config import FilterConfig

    from tests.conftest import tiny_llama

    base = ["The river runs to the sea. It carries sand and gravel along its bed, and shapes the valley.",
            "Prime numbers have two divisors. Seven is prime; eight is not, since four divides it.",
            "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"]
    paths = []
    for n, name in enumerate(("a", "b", "c")):
        texts = [f"{t} Record {name}{i} of {n}." for i, t in enumerate(base * 5)] + [base[0], base[0]]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        paths.append(str(path))
    sources = [load_source(spec, max_candidates=100, seed=0) for spec in parse_sources(paths)]
    tokenizer = byte_tokenizer()
    config = ProcessConfig(length=length, chat_template="off", filters=FilterConfig(perplexity_drop_fraction=0.2))
    model = tiny_llama()
    whole, whole_report = process_sources(sources, tokenizer, 40, config, model=model, quiet=True, chunk_size=10**6)
    chunked, report = process_sources(sources, tokenizer, 40, config, model=model, quiet=True, chunk_size=3,
                                      folder=tmp_path / "work")
    assert report == whole_report
    assert report["filters"]["removed"]["exact_duplicate"] == 5 and report["filters"]["removed"]["perplexity"] > 0
    assert [(s.text, s.input_ids.tolist(), s.source) for s in chunked] == [
        (s.text, s.input_ids.tolist(), s.source) for s in whole]
    assert len(whole) >= 8 and {s.source for s in whole} == {0, 1, 2}
