"""Stage 2's format step: structured records become Q&A text with an explicit reasoning chain.

COLA (arXiv 2510.10618, Sec. 4.1) formats calibration data as question, reasoning chain and answer, so the
activations it produces cover how a model reasons, not only what it reads. Each dataset schema of
`cola.data.schemas` names one formatter (a function `record -> Formatted`) registered here by name;
`formatter_for_columns` picks it from a file's columns through that table, and `mapped_formatter` serves any
other file given a `question=...,answer=...` mapping.

Every formatter strips its values; a record whose question or answer is empty formats to `text == ""`,
so the caller can count and skip it. Values are rendered by `cola.data.fields`, never `str()`-ed. Chat
datasets (`messages` with role/content turns, ShareGPT `conversations` with from/value turns) format to
conversations whose turns Stage 2 renders with the model's chat template, or as plain `role: content` lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cola.data.answers import last_boxed, strip_calculator_annotations
from cola.data.fields import FieldValueError as FieldValueError  # what formatters raise, for their callers
from cola.data.fields import (CONVERSATION_FIELDS, LETTERS, conversation_turns, field_value, is_conversation,
                              missing_field, plain_turns, record_text, render_value, strip_text)
from cola.data.schemas import schema_for_columns
from cola.errors import ColaError, unknown_choice

QA_TEMPLATE = "Question: {question}\n\nReasoning:\n{reasoning}\n\nAnswer: {answer}"
QA_TEMPLATE_NO_REASONING = "Question: {question}\n\nAnswer: {answer}"


@dataclass(frozen=True)
class Formatted:
    """One formatted record: its text, and for Q&A records the parts the text was made from."""

    text: str
    question: str | None = None
    reasoning: str | None = None
    answer: str | None = None
    reasoning_optional: bool = False  # complete without a reasoning chain (code with tests, instructions)
    turns: tuple[tuple[str, str], ...] = ()  # a conversation's (role, content) turns; `text` renders them plainly

    @property
    def needs_reasoning(self) -> bool:
        """A Q&A record with a question and an answer but no reasoning chain (one could be generated)."""
        return bool(self.question and self.answer and not self.reasoning and not self.reasoning_optional)

    @property
    def templatable(self) -> bool:
        """Whether a chat template can render it: a conversation, or a Q&A record (one user/assistant exchange)."""
        return bool(self.turns or (self.question and self.answer))


def chat_messages(formatted: Formatted) -> list[dict[str, str]]:
    """The chat turns of a formatted record, as `apply_chat_template` takes them: a conversation's own turns,
    or a Q&A record as one exchange (the question from the user; reasoning and `Answer: ...` from the assistant)."""
    if formatted.turns:
        return [{"role": role, "content": content} for role, content in formatted.turns]
    reply = (f"{formatted.reasoning}\n\nAnswer: {formatted.answer}" if formatted.reasoning
             else str(formatted.answer))
    return [{"role": "user", "content": str(formatted.question)}, {"role": "assistant", "content": reply}]


Formatter = Callable[[Mapping[str, Any]], Formatted]


def qa_text(question: str, reasoning: str | None, answer: str) -> str:
    """The Q&A text; the Reasoning section is left out when there is no reasoning."""
    question, answer, reasoning = question.strip(), answer.strip(), (reasoning or "").strip()
    if reasoning:
        return QA_TEMPLATE.format(question=question, reasoning=reasoning, answer=answer)
    return QA_TEMPLATE_NO_REASONING.format(question=question, answer=answer)


def fields_formatter(fields: Sequence[str]) -> Formatter:
    """Free text from explicitly named fields (`PATH#a+b`, `--fields text=a`; dotted paths allowed). A single
    field holding a conversation formats to that conversation (its turns, for the chat template)."""
    fields = tuple(fields)

    def format_fields(record: Mapping[str, Any]) -> Formatted:
        if len(fields) == 1:
            value = field_value(record, fields[0])
            if is_conversation(value, fields[0]):
                turns = conversation_turns(value, fields[0])
                return Formatted(text=plain_turns(turns), turns=turns)
        return Formatted(text=record_text(record, fields))

    return format_fields


def _code(value: Any) -> str:
    """Source code with Unix line ends and no trailing spaces; indentation is kept."""
    return "\n".join(line.rstrip() for line in str(value or "").splitlines()).strip("\n")


def _python_block(code: str) -> str:
    return f"```python\n{code}\n```" if code else ""


def _qa(question: Any, reasoning: Any, answer: Any, *, reasoning_optional: bool = False) -> Formatted:
    """A Formatted Q&A record, or an empty one when the question or the answer is empty."""
    question, reasoning, answer = strip_text(question), strip_text(reasoning) or None, strip_text(answer)
    if not question or not answer:
        return Formatted(text="")
    return Formatted(text=qa_text(question, reasoning, answer), question=question, reasoning=reasoning,
                     answer=answer, reasoning_optional=reasoning_optional)


# --- gsm8k ------------------------------------------------------------------------------------------------


def format_gsm8k(record: Mapping[str, Any]) -> Formatted:
    """GSM8K (Cobbe et al., 2021): the worked solution before `####` is the reasoning, the number after it
    the answer; calculator annotations `<<48/2=24>>` are removed. Without `####` the whole answer field
    is the answer (and the record needs reasoning)."""
    solution = strip_calculator_annotations(strip_text(record.get("answer")))
    reasoning, marker, final = solution.rpartition("####")
    if not marker:
        return _qa(record.get("question"), None, solution)
    return _qa(record.get("question"), reasoning, final)


# --- MATH -------------------------------------------------------------------------------------------------


def format_math(record: Mapping[str, Any]) -> Formatted:
    """MATH (Hendrycks et al., 2021): problem as question, solution as reasoning, the content of the last
    `\\boxed{}` as answer (a separate `answer` field, as in MATH-500, when the solution has no box)."""
    solution = strip_text(record.get("solution"))
    answer = last_boxed(solution) or record.get("answer")
    return _qa(record.get("problem"), solution, answer)


# --- code -------------------------------------------------------------------------------------------------


def format_mbpp(record: Mapping[str, Any]) -> Formatted:
    """MBPP (Austin et al., 2021): the task and its test asserts as question, the code as answer. Complete
    without a reasoning chain: problem, solution and tests."""
    question = strip_text(record.get("text"))
    tests = _code(strip_text(record.get("test_list")))
    if question and tests:
        question = f"{question}\n\nYour code should pass these tests:\n{tests}"
    return _qa(question, None, _python_block(_code(record.get("code"))), reasoning_optional=True)


def format_humaneval(record: Mapping[str, Any]) -> Formatted:
    """HumanEval (Chen et al., 2021): the prompt (signature + docstring) as question; as answer the complete
    program the official harness runs: prompt + canonical solution + tests + `check(entry_point)`."""
    solution = _code(record.get("canonical_solution"))
    program = _code(f"{record.get('prompt') or ''}{record.get('canonical_solution') or ''}") if solution else ""
    tests = _code(record.get("test"))
    if program and tests:
        entry_point = strip_text(record.get("entry_point"))
        program = f"{program}\n\n\n{tests}" + (f"\n\n\ncheck({entry_point})" if entry_point else "")
    return _qa(_code(record.get("prompt")), None, _python_block(program), reasoning_optional=True)


# --- multiple choice --------------------------------------------------------------------------------------

_RATIONALE_FIELDS = ("rationale", "explanation", "reasoning", "fact1")  # fact1: OpenBookQA's supporting fact
_NUMBERED_ANSWER = re.compile(r"(?:answer|solution|option|ending|choice)\s*(\d+)", re.IGNORECASE)


def _choice_list(value: Any) -> tuple[list[str], list[str] | None]:
    """(texts, the record's own labels or None) from `{"text": [...], "label": [...]}`, a list of
    `{"label", "text"}` dicts or a plain list of strings."""
    if isinstance(value, Mapping):
        texts, labels = list(value.get("text") or ()), value.get("label")
        return [strip_text(t) for t in texts], [strip_text(x) for x in labels] if isinstance(labels, list) else None
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(c, Mapping) for c in value):
            return [strip_text(c.get("text")) for c in value], [strip_text(c.get("label")) for c in value]
        return [strip_text(c) for c in value], None
    return [], None


def _question_and_choices(record: Mapping[str, Any]) -> tuple[str, list[str], list[str] | None]:
    """(question, choice texts, their labels) for ARC / CommonsenseQA / OpenBookQA / LLM-Adapters,
    HellaSwag (`query` or `ctx`, else `ctx_a` + `ctx_b`, + `endings`) and PIQA (`goal` + `sol1`, `sol2`)."""
    question = record.get("question")
    choices: Any = record.get("choices")
    if isinstance(question, Mapping):  # original CommonsenseQA / OpenBookQA: question = {stem, choices}
        question, choices = question.get("stem"), question.get("choices", choices)
    if question is None:
        question = record.get("question_stem") or record.get("query") or record.get("goal")
    context = record.get("ctx")
    if context is None and record.get("ctx_a") is not None:  # HellaSwag's ctx is ctx_a + " " + ctx_b
        context = " ".join(part for part in (strip_text(record["ctx_a"]), strip_text(record.get("ctx_b"))) if part)
    if question is None and context is not None:
        activity = strip_text(record.get("activity_label"))
        question = f"{activity}: {strip_text(context)}" if activity else context
    if choices is None:
        choices = record.get("endings")
    if choices is None and "sol1" in record:
        choices = [record[f"sol{i}"] for i in range(1, len(record) + 1) if f"sol{i}" in record]
    texts, labels = _choice_list(choices)
    return strip_text(question), texts, labels


def _index_from_key(key: str, labels: list[str] | None, *, digit_base: int) -> int | None:
    """A gold key as a 0-based index: the record's own label, a letter, or a digit counted from `digit_base`."""
    if labels and key in labels:
        return labels.index(key)
    if len(key) == 1 and key.upper() in LETTERS:
        return LETTERS.index(key.upper())
    if key.isdigit():
        return int(key) - digit_base
    return None


def _gold_index(record: Mapping[str, Any], texts: list[str], labels: list[str] | None) -> int | None:
    """The gold choice's 0-based index from the first gold field present: `answerKey` (letter, or digit
    counted from 1 as in ARC), `label` (0-based int or digit, or letter), `answer` (a choice's text, a letter,
    or LLM-Adapters' `answerN` / `solutionN` / `optionN` counted from 1)."""
    key, label, answer = record.get("answerKey"), record.get("label"), record.get("answer")
    if strip_text(key):
        index = _index_from_key(strip_text(key), labels, digit_base=1)
    elif isinstance(label, (int, float)) and not isinstance(label, bool) and float(label).is_integer():
        index = int(label)
    elif strip_text(label):
        index = _index_from_key(strip_text(label), labels, digit_base=0)
    elif strip_text(answer):
        answer = strip_text(answer)
        folded = [t.casefold() for t in texts]
        numbered = _NUMBERED_ANSWER.fullmatch(answer)
        if answer.casefold() in folded:
            index = folded.index(answer.casefold())
        elif numbered:
            index = int(numbered.group(1)) - 1
        else:
            index = _index_from_key(answer, labels, digit_base=1)
    else:
        index = None
    return index if index is not None and 0 <= index < len(texts) else None


def format_multiple_choice(record: Mapping[str, Any]) -> Formatted:
    """Multiple choice (ARC, CommonsenseQA, OpenBookQA, HellaSwag, PIQA, LLM-Adapters parsed files): the
    question with lettered choices as question, `B. the text` of the gold choice as answer, and a rationale
    (`rationale`, `explanation`, OpenBookQA's `fact1`) as reasoning when the record has one."""
    question, texts, labels = _question_and_choices(record)
    index = _gold_index(record, texts, labels)
    if not question or index is None or not all(texts) or len(texts) > len(LETTERS):
        return Formatted(text="")
    options = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(texts))
    reasoning = next((record[f] for f in _RATIONALE_FIELDS if strip_text(record.get(f))), None)
    return _qa(f"{question}\n{options}", reasoning, f"{LETTERS[index]}. {texts[index]}")


# --- instructions and free text ---------------------------------------------------------------------------


def format_instruction(record: Mapping[str, Any]) -> Formatted:
    """Alpaca-style instructions (Taori et al., 2023): instruction (+ input) as question, output as answer;
    complete as they are, without a reasoning chain."""
    question, extra = strip_text(record.get("instruction")), strip_text(record.get("input"))
    if question and extra:
        question = f"{question}\n\nInput: {extra}"
    return _qa(question, None, record.get("output"), reasoning_optional=True)


def format_text(record: Mapping[str, Any]) -> Formatted:
    """Free text stays free text (web pages, articles); a list of strings is joined as paragraphs."""
    if "text" not in record:
        raise ColaError(f"the text formatter needs a 'text' field; this record's fields are: "
                        f"{', '.join(map(str, record))}. Map its fields with question=...,answer=...")
    return _TEXT_FIELD(record)


_TEXT_FIELD = fields_formatter(("text",))


def format_chat(record: Mapping[str, Any]) -> Formatted:
    """Chat datasets: `messages` (OpenAI style, role/content turns) or `conversations` (ShareGPT, from/value
    turns) become the conversation itself; Stage 2 renders it with the model's chat template when it uses one,
    else as plain `role: content` lines."""
    field = next((f for f in CONVERSATION_FIELDS if f in record), "messages")
    return fields_formatter((field,))(record)


# --- registry ---------------------------------------------------------------------------------------------

# Which schema uses which formatter is said once, in cola.data.schemas.SCHEMAS.
FORMATTERS: dict[str, Formatter] = {
    "multiple_choice": format_multiple_choice, "gsm8k": format_gsm8k, "math": format_math, "mbpp": format_mbpp,
    "humaneval": format_humaneval, "instruction": format_instruction, "chat": format_chat, "text": format_text}


def get_formatter(name: str) -> Formatter:
    """The formatter registered as `name`; unknown names get close-match suggestions."""
    if name not in FORMATTERS:
        raise unknown_choice("formatter", name, FORMATTERS)
    return FORMATTERS[name]


def formatter_for_columns(columns: set[str]) -> str:
    """The formatter of the schema a record with these columns is read as (`cola.data.schemas`); 'text' when
    no schema matches."""
    schema = schema_for_columns(columns)
    return schema.formatter if schema is not None else "text"


# --- user files: a field mapping ----------------------------------------------------------------------------

MAPPING_KEYS = ("question", "reasoning", "answer", "text")


def _check_mapping_keys(mapping: Mapping[str, str]) -> None:
    for key in mapping:
        if key not in MAPPING_KEYS:
            raise unknown_choice("field mapping key", key, MAPPING_KEYS)
    if "text" in mapping and len(mapping) > 1:
        raise ColaError("a field mapping names either text=FIELD alone or question=,answer= (and reasoning=), "
                        f"not both: got {', '.join(mapping)}")
    if "text" not in mapping and not {"question", "answer"} <= set(mapping):
        raise ColaError(f"a field mapping needs question= and answer= (reasoning= optional) or text=; "
                        f"got {', '.join(mapping) or 'nothing'}")


def parse_field_mapping(spec: str) -> dict[str, str]:
    """Parse `question=q,reasoning=r,answer=a` (or `text=body`) into {"question": "q", ...}."""
    mapping: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, field = (s.strip() for s in part.partition("="))
        if not sep or not key or not field:
            raise ColaError(f"bad field mapping {spec!r}: write KEY=FIELD pairs separated by commas, "
                            f"KEY one of {', '.join(MAPPING_KEYS)} (e.g. question=q,answer=a)")
        if key in mapping:
            raise ColaError(f"field mapping {spec!r} names {key!r} twice")
        mapping[key] = field
    _check_mapping_keys(mapping)
    return mapping


def mapped_formatter(mapping: dict[str, str], columns: Sequence[str] | Mapping[str, Any]) -> Formatter:
    """A formatter for a user's file: `mapping` says which fields (columns or dotted paths) hold question,
    reasoning, answer (or free text). `columns` is the file's column names or one of its records (which
    dotted paths are checked against). Such records need reasoning when the mapping names none."""
    _check_mapping_keys(mapping)
    example = columns if isinstance(columns, Mapping) else dict.fromkeys(columns)
    for field in mapping.values():
        problem = missing_field(example, field)
        if problem:
            raise ColaError(problem)
    fields = dict(mapping)
    if "text" in fields:
        return fields_formatter((fields["text"],))

    def part(record: Mapping[str, Any], role: str) -> str:
        return render_value(field_value(record, fields[role]), fields[role]) if role in fields else ""

    def format_mapped(record: Mapping[str, Any]) -> Formatted:
        return _qa(part(record, "question"), part(record, "reasoning"), part(record, "answer"))

    return format_mapped
