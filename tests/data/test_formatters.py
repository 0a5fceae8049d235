"""Tests for Stage 2's format step (cola.data.formatters): records become Question / Reasoning / Answer text."""

from __future__ import annotations

import gzip
import itertools
import json
import re
from pathlib import Path

import pytest

from cola.data.answers import last_boxed
from cola.data.catalog import CATALOG
from cola.data.fields import FieldValueError
from cola.data.formatters import (
    FORMATTERS,
    Formatted,
    chat_messages,
    format_chat,
    format_gsm8k,
    format_humaneval,
    format_instruction,
    format_math,
    format_mbpp,
    format_multiple_choice,
    format_text,
    formatter_for_columns,
    get_formatter,
    mapped_formatter,
    parse_field_mapping,
    qa_text,
)
from cola.errors import ColaError

from tests.conftest import SHARED_DATA, needs_shared_data


# --- the template -----------------------------------------------------------------------------------------


def test_qa_text_with_and_without_reasoning():
    assert qa_text(" Q? ", " step 1\nstep 2 ", " 3 ") == "Question: Q?\n\nReasoning:\nstep 1\nstep 2\n\nAnswer: 3"
    assert qa_text("Q?", None, "3") == "Question: Q?\n\nAnswer: 3"
    assert qa_text("Q?", "  ", "3") == "Question: Q?\n\nAnswer: 3"


def test_braces_in_values_are_not_template_fields():
    assert qa_text("{question}", "{x}", "{}") == "Question: {question}\n\nReasoning:\n{x}\n\nAnswer: {}"


# --- gsm8k ------------------------------------------------------------------------------------------------


def test_gsm8k_record_exactly():
    record = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                          "clips in May. How many clips did Natalia sell altogether in April and May?",
              "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"}
    out = format_gsm8k(record)
    assert out.text == (
        "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?\n\n"
        "Reasoning:\nNatalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n\n"
        "Answer: 72")
    assert (out.answer, out.needs_reasoning) == ("72", False)


def test_gsm8k_without_final_answer_marker_needs_reasoning():
    out = format_gsm8k({"question": "What is 2 + 2?", "answer": " 4 "})
    assert out.text == "Question: What is 2 + 2?\n\nAnswer: 4"
    assert out.reasoning is None and out.needs_reasoning


# --- MATH -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solution, answer", [
    (r"So $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"First $\boxed{3}$, but really $\boxed{\sqrt{\frac{a}{b}}}$.", r"\sqrt{\frac{a}{b}}"),
    (r"The set is $\boxed{\{1, 2\}}$.", r"\{1, 2\}"),
    (r"The answer is $\fbox{7}$.", "7"),
    (r"It follows that $x^2 + y^2 = \boxed 9$.", "9"),
    (r"$\boxed{1}$ and then $\boxed{2}$ and last $\boxed{ 3 }$", "3"),
    (r"no box here", None),
    (r"an empty box $\boxed{}$", None),
    (r"unbalanced $\boxed{\frac{1}{2}$", None),
])
def test_last_boxed(solution: str, answer: str | None):
    assert last_boxed(solution) == answer


def test_math_record():
    record = {"problem": "Compute $1/2$. ", "solution": r"Halve one: $\boxed{\frac{1}{2}}$.", "level": "Level 1"}
    out = format_math(record)
    assert out.text == ("Question: Compute $1/2$.\n\nReasoning:\nHalve one: $\\boxed{\\frac{1}{2}}$.\n\n"
                        "Answer: \\frac{1}{2}")
    assert not out.needs_reasoning


def test_math_without_box_uses_answer_field_or_is_empty():
    assert format_math({"problem": "p", "solution": "s", "answer": "5"}).answer == "5"
    assert format_math({"problem": "p", "solution": "s"}).text == ""


# --- code -------------------------------------------------------------------------------------------------


def test_mbpp_has_tests_and_code_block():
    record = {"text": "Write a function to add two numbers.", "code": "def add(a, b): \r\n\treturn a + b",
              "task_id": 1, "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]}
    out = format_mbpp(record)
    assert out.text == ("Question: Write a function to add two numbers.\n\n"
                        "Your code should pass these tests:\nassert add(1, 2) == 3\nassert add(0, 0) == 0\n\n"
                        "Answer: ```python\ndef add(a, b):\n\treturn a + b\n```")
    assert out.reasoning is None and not out.needs_reasoning
    namespace: dict = {}
    exec(out.answer.removeprefix("```python\n").removesuffix("\n```") + "\nassert add(1, 2) == 3", namespace)


def test_humaneval_answer_is_the_complete_program_with_tests():
    record = {"task_id": "HumanEval/x", "entry_point": "double",
              "prompt": 'def double(x: int) -> int:\n    """Twice x."""\n',
              "canonical_solution": "    return 2 * x\n",
              "test": "\n\ndef check(candidate):\n    assert candidate(3) == 6\n"}
    out = format_humaneval(record)
    assert out.question == 'def double(x: int) -> int:\n    """Twice x."""'
    code = out.answer.removeprefix("```python\n").removesuffix("\n```")
    assert code.startswith(record["prompt"] + "    return 2 * x\n")
    assert code.endswith("check(double)")
    exec(code, {})  # runs the tests; a broken join or lost indentation fails here
    assert not out.needs_reasoning


def test_humaneval_without_tests():
    out = format_humaneval({"prompt": "def f():\n", "canonical_solution": "    return 1\n"})
    assert out.answer == "```python\ndef f():\n    return 1\n```"


# --- multiple choice --------------------------------------------------------------------------------------

CSQA_CHOICES = {"label": ["A", "B", "C", "D", "E"], "text": ["bank", "library", "store", "mall", "new york"]}
FOUR = ["red", "green", "blue", "black"]


@pytest.mark.parametrize("record, answer", [
    pytest.param({"question": "Where?", "choices": CSQA_CHOICES, "answerKey": "B"}, "B. library",
                 id="answerKey-letter"),
    pytest.param({"question": "Which?", "choices": {"text": FOUR, "label": ["1", "2", "3", "4"]}, "answerKey": "3"},
                 "C. blue", id="answerKey-digit-with-labels"),
    pytest.param({"question": "Which?", "choices": FOUR, "answerKey": "4"}, "D. black", id="answerKey-digit"),
    pytest.param({"question": "Which?", "choices": {"text": FOUR, "label": ["0", "1", "2", "3"]}, "answerKey": "0"},
                 "A. red", id="answerKey-is-one-of-the-record-labels"),
    pytest.param({"question": "Which?", "choices": FOUR, "label": 0}, "A. red", id="label-0-based"),
    pytest.param({"question": "Which?", "choices": FOUR, "label": "2"}, "C. blue", id="label-digit-string"),
    pytest.param({"question": "Which?", "choices": FOUR, "label": "b"}, "B. green", id="label-letter"),
    pytest.param({"question": "Which?", "choices": FOUR, "answer": "answer3"}, "C. blue", id="llm-adapters-answerN"),
    pytest.param({"question": "Which?", "choices": FOUR, "label": 2, "answer": "answer3"}, "C. blue",
                 id="llm-adapters-parsed"),
    pytest.param({"question": "Fix it?", "choices": ["a", "b"], "answer": "solution2"}, "B. b", id="solutionN"),
    pytest.param({"question": "is it?", "choices": ["false", "true"], "answer": "true"}, "B. true",
                 id="boolq-answer-text"),
    pytest.param({"question": "Which?", "choices": FOUR, "answer": "D"}, "D. black", id="answer-letter"),
    pytest.param({"goal": "Open a jar.", "sol1": "Twist the lid.", "sol2": "Freeze it.", "label": 0},
                 "A. Twist the lid.", id="piqa"),
    pytest.param({"query": "Roofing: A man is on a roof. he", "endings": ["sleeps.", "naps.", "rests.", "nails it."],
                  "label": 3}, "D. nails it.", id="hellaswag-preprocessed"),
    pytest.param({"ctx": "A man is on a roof. he", "activity_label": "Roofing", "endings": ["x.", "y."],
                  "label": "1"}, "B. y.", id="hellaswag-original"),
    pytest.param({"question": {"stem": "Where?", "choices": [{"label": "A", "text": "here"},
                                                             {"label": "B", "text": "there"}]}, "answerKey": "B"},
                 "B. there", id="commonsenseqa-nested"),
])
def test_multiple_choice_answer_resolution(record: dict, answer: str):
    out = format_multiple_choice(record)
    assert out.answer == answer
    assert out.text.startswith("Question: ") and out.text.endswith(f"\n\nAnswer: {answer}")


def test_multiple_choice_question_lists_lettered_choices():
    out = format_multiple_choice({"question": " Where? ", "choices": CSQA_CHOICES, "answerKey": "A"})
    assert out.text == ("Question: Where?\nA. bank\nB. library\nC. store\nD. mall\nE. new york\n\n"
                        "Answer: A. bank")
    assert out.reasoning is None and out.needs_reasoning


def test_multiple_choice_hellaswag_context_and_piqa_goal_are_the_question():
    hella = format_multiple_choice({"ctx": "A man is on a roof. he", "activity_label": "Roofing",
                                    "endings": ["x.", "y."], "label": 0})
    assert hella.question == "Roofing: A man is on a roof. he\nA. x.\nB. y."
    piqa = format_multiple_choice({"goal": "Open a jar.", "sol1": "Twist.", "sol2": "Freeze.", "label": 1})
    assert piqa.question == "Open a jar.\nA. Twist.\nB. Freeze."


@pytest.mark.parametrize("field", ["rationale", "explanation", "fact1"])
def test_multiple_choice_rationale_is_the_reasoning(field: str):
    record = {"question_stem": "The sun is responsible for", "choices": {"text": ["rain", "plants growing"],
                                                                         "label": ["A", "B"]},
              "answerKey": "B", field: " the sun is the source of energy for plants "}
    out = format_multiple_choice(record)
    assert out.reasoning == "the sun is the source of energy for plants"
    assert "\n\nReasoning:\nthe sun is the source of energy for plants\n\nAnswer: B. plants growing" in out.text
    assert not out.needs_reasoning


@pytest.mark.parametrize("record", [
    pytest.param({"question": "Which?", "choices": FOUR}, id="no-gold"),
    pytest.param({"question": "Which?", "choices": FOUR, "label": 4}, id="label-out-of-range"),
    pytest.param({"question": "Which?", "choices": FOUR, "label": -1}, id="unlabelled-test-split"),
    pytest.param({"question": "Which?", "choices": FOUR, "answerKey": "F"}, id="answerKey-out-of-range"),
    pytest.param({"question": "Which?", "choices": FOUR, "answer": "purple"}, id="answer-not-a-choice"),
    pytest.param({"question": "", "choices": FOUR, "label": 0}, id="empty-question"),
    pytest.param({"question": "Which?", "choices": [], "label": 0}, id="no-choices"),
])
def test_multiple_choice_without_a_usable_gold_answer_is_empty(record: dict):
    assert format_multiple_choice(record) == Formatted(text="")


# --- instructions and free text ---------------------------------------------------------------------------


def test_instruction_with_and_without_input():
    with_input = format_instruction({"instruction": "Translate to French.", "input": " Hello ", "output": "Bonjour"})
    assert with_input.text == "Question: Translate to French.\n\nInput: Hello\n\nAnswer: Bonjour"
    without = format_instruction({"instruction": "Name a colour.", "input": "", "output": " Blue. "})
    assert without.text == "Question: Name a colour.\n\nAnswer: Blue."
    assert not with_input.needs_reasoning and not without.needs_reasoning


def test_text_stays_text():
    out = format_text({"text": "  Some article.\n", "url": "https://example.com"})
    assert out == Formatted(text="Some article.")
    assert not out.needs_reasoning


def test_text_formatter_without_text_field_names_the_fields():
    with pytest.raises(ColaError, match=r"fields are: prefix, gold_completion"):
        format_text({"prefix": "a", "gold_completion": "b"})


@pytest.mark.parametrize("formatter, record", [
    (format_gsm8k, {"question": " ", "answer": "x\n#### 3"}),
    (format_gsm8k, {"question": "q", "answer": "x\n####  "}),
    (format_mbpp, {"text": "task", "code": "  ", "test_list": []}),
    (format_humaneval, {"prompt": "def f():\n", "canonical_solution": ""}),
    (format_instruction, {"instruction": "Do it.", "input": "", "output": ""}),
])
def test_empty_question_or_answer_gives_empty_text(formatter, record: dict):
    out = formatter(record)
    assert out.text == "" and not out.needs_reasoning


# --- needs_reasoning and mapped files ---------------------------------------------------------------------


def test_needs_reasoning_only_for_qa_without_reasoning():
    columns = ["q", "r", "a"]
    plain = mapped_formatter({"question": "q", "answer": "a"}, columns)({"q": "2+2?", "r": "add", "a": "4"})
    assert plain.text == "Question: 2+2?\n\nAnswer: 4" and plain.needs_reasoning
    full = mapped_formatter({"question": "q", "reasoning": "r", "answer": "a"}, columns)(
        {"q": "2+2?", "r": "add", "a": "4"})
    assert full.text == "Question: 2+2?\n\nReasoning:\nadd\n\nAnswer: 4" and not full.needs_reasoning
    assert not Formatted(text="").needs_reasoning
    assert not Formatted(text="free text").needs_reasoning


def test_mapped_text_field():
    formatter = mapped_formatter({"text": "body"}, ["body", "id"])
    assert formatter({"body": " hello ", "id": 3}) == Formatted(text="hello")


def test_mapped_formatter_missing_field_lists_the_file_fields():
    with pytest.raises(ColaError, match=r"no field 'solution'.*its fields are: prompt, response, id"):
        mapped_formatter({"question": "prompt", "answer": "solution"}, ["prompt", "response", "id"])


def test_parse_field_mapping():
    assert parse_field_mapping("question=q, reasoning = r ,answer=a") == {"question": "q", "reasoning": "r",
                                                                        "answer": "a"}
    assert parse_field_mapping("text=body") == {"text": "body"}


@pytest.mark.parametrize("spec, message", [
    ("", r"KEY=FIELD.*question, reasoning, answer, text"),
    ("question", r"KEY=FIELD.*question, reasoning, answer, text"),
    ("question=,answer=a", r"KEY=FIELD"),
    ("=q,answer=a", r"KEY=FIELD"),
    ("question=q,,answer=a", r"KEY=FIELD"),
    ("quesiton=q,answer=a", r"unknown field mapping key 'quesiton'. Did you mean 'question'\?.*answer, question"),
    ("prompt=q,answer=a", r"Valid choices: answer, question, reasoning, text"),
    ("question=q,answer=a,question=b", r"names 'question' twice"),
    ("question=q", r"needs question= and answer="),
    ("reasoning=r,answer=a", r"needs question= and answer="),
    ("text=t,question=q,answer=a", r"either text=FIELD alone"),
])
def test_parse_field_mapping_errors(spec: str, message: str):
    with pytest.raises(ColaError, match=message):
        parse_field_mapping(spec)


# --- registry ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("columns, name", [
    ({"question", "answer"}, "gsm8k"),
    ({"problem", "solution", "level", "type", "unique_id", "subject"}, "math"),
    ({"problem", "solution", "answer"}, "math"),
    ({"text", "code", "test_list", "task_id"}, "mbpp"),
    ({"task_id", "prompt", "canonical_solution", "test", "entry_point"}, "humaneval"),
    ({"question", "choices", "label", "answer"}, "multiple_choice"),
    ({"id", "question", "question_concept", "choices", "answerKey"}, "multiple_choice"),
    ({"idx", "query", "endings", "label"}, "multiple_choice"),
    ({"ctx", "activity_label", "endings", "label"}, "multiple_choice"),
    ({"goal", "sol1", "sol2", "label"}, "multiple_choice"),
    ({"instruction", "input", "output"}, "instruction"),
    ({"text", "url"}, "text"),
    ({"text", "timestamp", "url"}, "text"),
    ({"prefix", "gold_completion"}, "text"),
    ({"id", "messages"}, "chat"),
    ({"prompt", "prompt_id", "messages"}, "chat"),
    ({"conversations", "id"}, "chat"),
])
def test_formatter_for_columns(columns: set[str], name: str):
    assert formatter_for_columns(columns) == name


def test_unknown_formatter_suggests_a_close_match():
    with pytest.raises(ColaError, match=r"unknown formatter 'multiple_choise'. Did you mean 'multiple_choice'\?"):
        get_formatter("multiple_choise")


def test_get_formatter_returns_the_registered_function():
    assert get_formatter("gsm8k") is format_gsm8k
    assert set(FORMATTERS) == {"gsm8k", "math", "mbpp", "humaneval", "multiple_choice", "instruction", "chat",
                               "text"}


def test_catalog_formatters_are_registered():
    assert {e.formatter for e in CATALOG.values()} <= set(FORMATTERS)
    assert {name: CATALOG[name].formatter for name in ("gsm8k", "hellaswag", "piqa", "alpaca", "wikitext")} == {
        "gsm8k": "gsm8k", "hellaswag": "multiple_choice", "piqa": "multiple_choice", "alpaca": "instruction",
        "wikitext": "text"}


# --- real data --------------------------------------------------------------------------------------------


def _first_records(path: Path, n: int) -> list[dict]:
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))[:n]
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")) as fh:
        return [json.loads(line) for line in itertools.islice((x for x in fh if x.strip()), n)]


@needs_shared_data
@pytest.mark.parametrize("relative, name", [
    ("gsm8k/train.jsonl", "gsm8k"),
    ("math/train.jsonl", "math"),
    ("mbpp/mbpp_train_valid_prompt.jsonl", "mbpp"),
    ("humaneval/HumanEval.jsonl.gz", "humaneval"),
    ("commonsenseqa/validation.jsonl", "multiple_choice"),
    ("commonsense_llm_adapters/arc_easy_train.parsed.jsonl", "multiple_choice"),
    ("commonsense_llm_adapters/openbookqa_train.parsed.jsonl", "multiple_choice"),
    ("alpaca/alpaca_5000.json", "instruction"),
    ("hellaswag/hellaswag_val_full_preprocessed.jsonl", "multiple_choice"),
    ("c4/c4_en_train_first1000.jsonl", "text"),
])
def test_real_pool_files_format(relative: str, name: str):
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} not found")
    records = _first_records(path, 50)
    assert formatter_for_columns(set(records[0])) == name
    formatted = [get_formatter(name)(record) for record in records]
    assert all(f.text for f in formatted)
    if name == "text":
        return
    assert all("Question:" in f.text and "Answer:" in f.text for f in formatted)
    assert not any("<<" in f.text for f in formatted)  # GSM8K calculator annotations are gone
    if name == "multiple_choice":
        assert all(re.fullmatch(r"[A-E]\. .+", f.answer) for f in formatted)
        if "label" in records[0]:  # the letter is the gold 0-based label
            assert [f.answer[0] for f in formatted] == ["ABCDE"[r["label"]] for r in records]


# --- chats, dotted paths and values that are not text (issue 17) ------------------------------------------

TURNS = (("system", "You are terse."), ("user", "What is 2+3?"), ("assistant", "5."))


def test_chat_messages_format_to_their_turns():
    record = {"id": 3, "messages": [{"role": "system", "content": " You are terse. "},
                                    {"role": "User", "content": "What is 2+3?"},
                                    {"role": "assistant", "content": "5."}]}
    assert format_chat(record) == Formatted(
        text="system: You are terse.\nuser: What is 2+3?\nassistant: 5.", turns=TURNS)


def test_sharegpt_conversations_format_to_their_turns():
    record = {"conversations": [{"from": "system", "value": "You are terse."},
                                {"from": "human", "value": "What is 2+3?"},
                                {"from": "gpt", "value": "5.", "weight": 1.0}]}
    out = format_chat(record)
    assert out.turns == TURNS and out.templatable and not out.needs_reasoning


def test_empty_conversation_is_an_empty_record():
    assert format_chat({"messages": []}) == Formatted(text="")


def test_chat_messages_of_a_qa_record_and_of_a_conversation():
    qa = Formatted(text="unused", question="What is 2+3?", reasoning="2+3=5.", answer="5")
    assert chat_messages(qa) == [{"role": "user", "content": "What is 2+3?"},
                                 {"role": "assistant", "content": "2+3=5.\n\nAnswer: 5"}]
    assert chat_messages(Formatted(text="unused", question="Q", answer="A")) == [
        {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert chat_messages(Formatted(text="unused", turns=TURNS)) == [
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "5."}]
    assert not Formatted(text="free text").templatable


def test_mapped_fields_take_dotted_paths():
    formatter = mapped_formatter({"question": "item.q", "answer": "item.a"}, {"item": {"q": "2+2?", "a": "4"}})
    assert formatter({"item": {"q": " 2+2? ", "a": 4}}) == Formatted(
        text="Question: 2+2?\n\nAnswer: 4", question="2+2?", answer="4")


def test_mapped_dotted_path_that_does_not_exist():
    with pytest.raises(ColaError) as err:
        mapped_formatter({"text": "meta.bdy"}, {"id": 0, "meta": {"lang": "en", "body": "x"}})
    assert str(err.value) == "no field 'meta.bdy': the fields of 'meta' are: lang, body"


def test_mapped_text_field_holding_a_conversation_formats_as_one():
    formatter = mapped_formatter({"text": "messages"}, ["id", "messages"])
    record = {"id": 0, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    assert formatter(record) == Formatted(text="user: Hi\nassistant: Hello",
                                          turns=(("user", "Hi"), ("assistant", "Hello")))


@pytest.mark.parametrize("formatter, record, message", [
    (mapped_formatter({"text": "meta"}, ["meta"]), {"meta": {"body": "x"}},
     "field 'meta' holds an object with keys body, not text: a text field takes text, a list of strings or a "
     "conversation; name the text inside with a dotted path, e.g. meta.body"),
    (mapped_formatter({"question": "q", "answer": "a"}, ["q", "a"]), {"q": "Q", "a": [{"x": 1}]},
     "field 'a' holds a list of objects, not text: a text field takes text, a list of strings or a conversation"),
    (format_text, {"text": {"body": "x"}}, "field 'text' holds an object with keys body, not text: a text field "
     "takes text, a list of strings or a conversation; name the text inside with a dotted path, e.g. text.body"),
    (format_gsm8k, {"question": {"stem": "Q"}, "answer": "x #### 1"}, "a field holds an object with keys stem, "
     "not text"),
])
def test_objects_are_never_rendered_as_reprs(formatter, record: dict, message: str):
    with pytest.raises(FieldValueError) as err:
        formatter(record)
    assert str(err.value) == message


def test_text_formatter_joins_a_list_as_paragraphs():
    assert format_text({"text": ["One.", "Two."]}) == Formatted(text="One.\n\nTwo.")


def test_chat_catalog_entries_recognise_chat_files():
    from cola.data.schemas import schema_for_columns

    assert schema_for_columns({"id", "messages"}) is CATALOG["ultrachat"].schema
    assert schema_for_columns({"conversations"}) is CATALOG["openhermes"].schema
    assert {CATALOG[n].formatter for n in ("ultrachat", "openhermes")} == {"chat"}
