"""Stage 2's format step: structured records become Q&A text with an explicit reasoning chain.

COLA (arXiv 2510.10618, Sec. 4.1) formats calibration data as question, reasoning chain and answer, so the
activations it produces cover how a model reasons, not only what it reads. Each dataset schema has one
formatter (a function `record -> Formatted`) registered by name; `formatter_for_columns` picks one from a
file's columns, and `mapped_formatter` serves any other file given a `question=...,answer=...` mapping.

Every formatter strips its values; a record whose question or answer is empty formats to `text == ""`,
so the caller can count and skip it.

Values are rendered, never `str()`-ed: `render_value` turns a text field's value into text (strings, lists of
strings, multiple-choice options, chat conversations) and raises FieldValueError naming the field for any
other object or list, so a record never becomes a Python repr. Fields are named by column or by a dotted path
into nested objects (`meta.body`). Chat datasets (`messages` with role/content turns, ShareGPT
`conversations` with from/value turns) format to conversations whose turns Stage 2 renders with the model's
chat template, or as plain `role: content` lines.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cola.data.catalog import MULTIPLE_CHOICE_FIELDS
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


# --- field values -----------------------------------------------------------------------------------------


class FieldValueError(ColaError):
    """A field's value is not text cola can read; the message names the field, the caller adds file and row."""


_MISSING = object()
CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant",
              "human": "user", "gpt": "assistant"}  # ShareGPT's `from` values beside the OpenAI-style roles
CONVERSATION_FIELDS = {"messages": ("role", "content"), "conversations": ("from", "value")}
_SCALARS = (bool, int, float)


def field_value(record: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """The value of a column (`text`) or of a dotted path into nested objects (`meta.body` is
    `record["meta"]["body"]`); a column whose own name holds the dot wins. `default` when there is none."""
    if path in record:
        return record[path]
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return default
        value = value[part]
    return value


def missing_field(record: Mapping[str, Any], path: str) -> str | None:
    """None when `record` has `path`; else the error text, listing the fields where the path stops."""
    if path in record:
        return None
    value: Any = record
    walked: list[str] = []
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return f"no field {path!r}: {'.'.join(walked)!r} holds {describe_value(value)}, not fields"
        if part not in value:
            fields = ", ".join(map(str, value)) or "(none)"
            where = f"; its fields are: {fields}" if not walked else \
                f": the fields of {'.'.join(walked)!r} are: {fields}"
            return f"no field {path!r}{where}"
        walked.append(part)
        value = value[part]
    return None


def describe_value(value: Any) -> str:
    """What a value is, in words, for errors: `an object with keys lang, body`, `the number 3`, never a repr."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        keys = [str(k) for k in value]
        return (f"an object with keys {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}" if keys
                else "an empty object")
    if isinstance(value, (list, tuple)):
        odd = next((v for v in value if v is not None and not isinstance(v, str)), None)
        kind = ("objects" if isinstance(odd, Mapping) else "lists" if isinstance(odd, (list, tuple))
                else "numbers" if isinstance(odd, _SCALARS) else "strings")
        return f"a list of {kind}" if value else "an empty list"
    return f"a {type(value).__name__} value"


def is_conversation(value: Any, field: str) -> bool:
    """A chat conversation: a list of turn objects in a `messages` / `conversations` field, or whose first
    turn has a `role` (OpenAI style) or `from` (ShareGPT style)."""
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(t, Mapping) for t in value):
        return False
    return field.rsplit(".", 1)[-1] in CONVERSATION_FIELDS or "role" in value[0] or "from" in value[0]


def _turn_content(content: Any) -> str | None:
    """A turn's content as text: a string, or OpenAI's list of `{"type": "text", "text": ...}` parts; else None."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, (list, tuple)) and all(
            isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "\n".join(p["text"].strip() for p in content)
    return None


def conversation_turns(value: Sequence[Mapping[str, Any]], field: str) -> tuple[tuple[str, str], ...]:
    """(role, content) turns of a conversation; roles are system, user, assistant (ShareGPT's human and gpt
    become user and assistant). A turn without a known role or without text content raises FieldValueError."""
    turns = []
    for number, turn in enumerate(value, start=1):
        role_key, content_key = CONVERSATION_FIELDS["messages" if "role" in turn or "from" not in turn
                                                    else "conversations"]
        if role_key not in turn:
            raise FieldValueError(f"turn {number} of field {field!r} has no 'role' (or ShareGPT 'from'); its keys "
                                  f"are: {', '.join(map(str, turn))}")
        role = turn[role_key]
        if not isinstance(role, str) or role.strip().lower() not in CHAT_ROLES:
            shown = repr(role) if isinstance(role, str) else describe_value(role)
            raise FieldValueError(f"turn {number} of field {field!r} has the unknown role {shown}; valid roles: "
                                  f"{', '.join(sorted(CHAT_ROLES))}")
        if content_key not in turn or turn[content_key] is None:
            raise FieldValueError(f"turn {number} of field {field!r} ({role}) has no {content_key!r}")
        content = _turn_content(turn[content_key])
        if content is None:
            raise FieldValueError(f"turn {number} of field {field!r} ({role}): {content_key!r} holds "
                                  f"{describe_value(turn[content_key])}, not text")
        turns.append((CHAT_ROLES[role.strip().lower()], content))
    return tuple(turns)


def plain_turns(turns: Sequence[tuple[str, str]]) -> str:
    """A conversation as plain text, one `role: content` turn after another (for models without a template)."""
    return "\n".join(f"{role}: {content}" for role, content in turns if content)


def _lettered_choices(value: Any) -> str | None:
    """Multiple-choice options as `A. option` lines, from `{"text": [...], "label": [...]}` or a list of
    `{"label", "text"}` objects; None for anything else."""
    if isinstance(value, Mapping):
        texts, labels = value.get("text"), value.get("label")
        if isinstance(texts, list) and isinstance(labels, list) and len(texts) == len(labels):
            return "\n".join(f"{_text(label)}. {_text(text)}" for label, text in zip(labels, texts))
        return None
    if isinstance(value, (list, tuple)) and value and all(isinstance(c, Mapping) and "text" in c for c in value):
        return "\n".join(f"{_text(c.get('label')) or _LETTERS[i % 26]}. {_text(c['text'])}"
                         for i, c in enumerate(value))
    return None


def render_value(value: Any, field: str = "text") -> str:
    """A text field's value as text.

    Strings are stripped; null is empty; a number is its digits. A list of strings is joined as paragraphs
    (one option per line in a multiple-choice field, `choices` or `endings`); multiple-choice options given
    as `{"text": [...], "label": [...]}` or `{"label", "text"}` objects become `A. option` lines; a
    conversation becomes plain `role: content` lines. Any other object or list raises FieldValueError naming
    `field`: a record is never rendered as a Python repr.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, _SCALARS):
        return str(value)
    choices = field.rsplit(".", 1)[-1] in MULTIPLE_CHOICE_FIELDS
    lettered = _lettered_choices(value)
    if lettered is not None and (choices or isinstance(value, Mapping)):
        return lettered
    if isinstance(value, (list, tuple)):
        if is_conversation(value, field):
            return plain_turns(conversation_turns(value, field))
        if all(v is None or isinstance(v, str) or (choices and isinstance(v, _SCALARS)) for v in value):
            return ("\n" if choices else "\n\n").join(part for part in (render_value(v) for v in value) if part)
    hint = ""
    if isinstance(value, Mapping):
        texts = sorted((k for k, v in value.items() if isinstance(v, str) and v.strip()),
                       key=lambda k: -len(value[k]))
        if texts:
            hint = f"; name the text inside with a dotted path, e.g. {field}.{texts[0]}"
    raise FieldValueError(f"field {field!r} holds {describe_value(value)}, not text: a text field takes text, "
                          f"a list of strings or a conversation{hint}")


def record_text(record: Mapping[str, Any], fields: Sequence[str]) -> str:
    """A candidate's text: the non-empty rendered values of `fields` (columns or dotted paths), separated by
    blank lines. A record with none of the fields (rows of mixed schemas), or whose text would be only
    numbers or booleans, raises FieldValueError."""
    values = [field_value(record, f, _MISSING) for f in fields]
    if all(v is _MISSING for v in values):
        raise FieldValueError(f"the record has none of the fields {', '.join(fields)} (its fields: "
                              f"{', '.join(map(str, record)) or 'none'}); its rows do not share one schema")
    parts, textual = [], False
    for field, value in zip(fields, values):
        text = render_value(None if value is _MISSING else value, field)
        if text:
            parts.append(text)
            textual = textual or not isinstance(value, _SCALARS)
    if parts and not textual:
        field, value = next((f, v) for f, v in zip(fields, values) if isinstance(v, _SCALARS))
        raise FieldValueError(f"field {field!r} holds {describe_value(value)}, not text")
    return "\n\n".join(parts)


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


def _text(value: Any) -> str:
    """A formatter's part as stripped text: None is empty, lists are joined line by line, numbers are their
    digits; an object raises FieldValueError (formatters read known schemas; anything else is not text)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (list, tuple)):
        return "\n".join(part for part in map(_text, value) if part)
    if isinstance(value, Mapping):
        raise FieldValueError(f"a field holds {describe_value(value)}, not text")
    return str(value).strip()


def _code(value: Any) -> str:
    """Source code with Unix line ends and no trailing spaces; indentation is kept."""
    return "\n".join(line.rstrip() for line in str(value or "").splitlines()).strip("\n")


def _python_block(code: str) -> str:
    return f"```python\n{code}\n```" if code else ""


def _qa(question: Any, reasoning: Any, answer: Any, *, reasoning_optional: bool = False) -> Formatted:
    """A Formatted Q&A record, or an empty one when the question or the answer is empty."""
    question, reasoning, answer = _text(question), _text(reasoning) or None, _text(answer)
    if not question or not answer:
        return Formatted(text="")
    return Formatted(text=qa_text(question, reasoning, answer), question=question, reasoning=reasoning,
                     answer=answer, reasoning_optional=reasoning_optional)


# --- gsm8k ------------------------------------------------------------------------------------------------

_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")


def strip_calculator_annotations(text: str) -> str:
    """GSM8K's solutions without their calculator annotations: `48/2 = <<48/2=24>>24` -> `48/2 = 24`."""
    return _CALCULATOR_ANNOTATION.sub("", text)


def format_gsm8k(record: Mapping[str, Any]) -> Formatted:
    """GSM8K (Cobbe et al., 2021): the worked solution before `####` is the reasoning, the number after it
    the answer; calculator annotations `<<48/2=24>>` are removed. Without `####` the whole answer field
    is the answer (and the record needs reasoning)."""
    solution = strip_calculator_annotations(_text(record.get("answer")))
    reasoning, marker, final = solution.rpartition("####")
    if not marker:
        return _qa(record.get("question"), None, solution)
    return _qa(record.get("question"), reasoning, final)


# --- MATH -------------------------------------------------------------------------------------------------

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _braced(text: str, start: int) -> str | None:
    """The content of the brace group opening at `text[start] == '{'` (nested groups, `\\{` escapes)."""
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
        i += 1
    return None  # unbalanced


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` / `\\fbox{...}` in `text` (also `\\boxed 5`), or None."""
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        rest = match.end()
        while rest < len(text) and text[rest].isspace():
            rest += 1
        if rest < len(text) and text[rest] == "{":
            content = _braced(text, rest)
        else:  # `\boxed 5`: the argument is the next token
            token = re.match(r"[^\s${}]+", text[rest:])
            content = token.group(0) if token else None
        if content is not None and content.strip():
            return content.strip()
    return None


def format_math(record: Mapping[str, Any]) -> Formatted:
    """MATH (Hendrycks et al., 2021): problem as question, solution as reasoning, the content of the last
    `\\boxed{}` as answer (a separate `answer` field, as in MATH-500, when the solution has no box)."""
    solution = _text(record.get("solution"))
    answer = last_boxed(solution) or record.get("answer")
    return _qa(record.get("problem"), solution, answer)


# --- code -------------------------------------------------------------------------------------------------


def format_mbpp(record: Mapping[str, Any]) -> Formatted:
    """MBPP (Austin et al., 2021): the task and its test asserts as question, the code as answer. Complete
    without a reasoning chain: problem, solution and tests."""
    question = _text(record.get("text"))
    tests = _code(_text(record.get("test_list")))
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
        entry_point = _text(record.get("entry_point"))
        program = f"{program}\n\n\n{tests}" + (f"\n\n\ncheck({entry_point})" if entry_point else "")
    return _qa(_code(record.get("prompt")), None, _python_block(program), reasoning_optional=True)


# --- multiple choice --------------------------------------------------------------------------------------

_LETTERS = string.ascii_uppercase
_RATIONALE_FIELDS = ("rationale", "explanation", "reasoning", "fact1")  # fact1: OpenBookQA's supporting fact
_NUMBERED_ANSWER = re.compile(r"(?:answer|solution|option|ending|choice)\s*(\d+)", re.IGNORECASE)


def _choice_list(value: Any) -> tuple[list[str], list[str] | None]:
    """(texts, the record's own labels or None) from `{"text": [...], "label": [...]}`, a list of
    `{"label", "text"}` dicts or a plain list of strings."""
    if isinstance(value, Mapping):
        texts, labels = list(value.get("text") or ()), value.get("label")
        return [_text(t) for t in texts], [_text(x) for x in labels] if isinstance(labels, list) else None
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(c, Mapping) for c in value):
            return [_text(c.get("text")) for c in value], [_text(c.get("label")) for c in value]
        return [_text(c) for c in value], None
    return [], None


def _question_and_choices(record: Mapping[str, Any]) -> tuple[str, list[str], list[str] | None]:
    """(question, choice texts, their labels) for ARC / CommonsenseQA / OpenBookQA / LLM-Adapters,
    HellaSwag (`query` or `ctx` + `endings`) and PIQA (`goal` + `sol1`, `sol2`)."""
    question = record.get("question")
    choices: Any = record.get("choices")
    if isinstance(question, Mapping):  # original CommonsenseQA / OpenBookQA: question = {stem, choices}
        question, choices = question.get("stem"), question.get("choices", choices)
    if question is None:
        question = record.get("question_stem") or record.get("query") or record.get("goal")
    if question is None and record.get("ctx") is not None:
        activity = _text(record.get("activity_label"))
        question = f"{activity}: {_text(record['ctx'])}" if activity else record["ctx"]
    if choices is None:
        choices = record.get("endings")
    if choices is None and "sol1" in record:
        choices = [record[f"sol{i}"] for i in range(1, len(record) + 1) if f"sol{i}" in record]
    texts, labels = _choice_list(choices)
    return _text(question), texts, labels


def _index_from_key(key: str, labels: list[str] | None, *, digit_base: int) -> int | None:
    """A gold key as a 0-based index: the record's own label, a letter, or a digit counted from `digit_base`."""
    if labels and key in labels:
        return labels.index(key)
    if len(key) == 1 and key.upper() in _LETTERS:
        return _LETTERS.index(key.upper())
    if key.isdigit():
        return int(key) - digit_base
    return None


def _gold_index(record: Mapping[str, Any], texts: list[str], labels: list[str] | None) -> int | None:
    """The gold choice's 0-based index from the first gold field present: `answerKey` (letter, or digit
    counted from 1 as in ARC), `label` (0-based int or digit, or letter), `answer` (a choice's text, a letter,
    or LLM-Adapters' `answerN` / `solutionN` / `optionN` counted from 1)."""
    key, label, answer = record.get("answerKey"), record.get("label"), record.get("answer")
    if _text(key):
        index = _index_from_key(_text(key), labels, digit_base=1)
    elif isinstance(label, (int, float)) and not isinstance(label, bool) and float(label).is_integer():
        index = int(label)
    elif _text(label):
        index = _index_from_key(_text(label), labels, digit_base=0)
    elif _text(answer):
        answer = _text(answer)
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
    if not question or index is None or not all(texts) or len(texts) > len(_LETTERS):
        return Formatted(text="")
    options = "\n".join(f"{_LETTERS[i]}. {text}" for i, text in enumerate(texts))
    reasoning = next((record[f] for f in _RATIONALE_FIELDS if _text(record.get(f))), None)
    return _qa(f"{question}\n{options}", reasoning, f"{_LETTERS[index]}. {texts[index]}")


# --- instructions and free text ---------------------------------------------------------------------------


def format_instruction(record: Mapping[str, Any]) -> Formatted:
    """Alpaca-style instructions (Taori et al., 2023): instruction (+ input) as question, output as answer;
    complete as they are, without a reasoning chain."""
    question, extra = _text(record.get("instruction")), _text(record.get("input"))
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

# name, formatter, and the column sets that identify the format in a file. The most specific (largest)
# matching column set wins; on a tie the format listed first wins (multiple choice beats plain Q&A, since
# multiple-choice files often carry an `answer` column beside `question`).
_REGISTRY: tuple[tuple[str, Formatter, tuple[frozenset[str], ...]], ...] = tuple(
    (name, formatter, tuple(frozenset(s.split()) for s in signatures)) for name, formatter, signatures in (
        ("multiple_choice", format_multiple_choice, (
            "question choices answerKey", "question choices label", "question choices answer",
            "question_stem choices answerKey", "question answerKey", "query endings label", "ctx endings label",
            "goal sol1 sol2")),
        ("gsm8k", format_gsm8k, ("question answer",)),
        ("math", format_math, ("problem solution",)),
        ("mbpp", format_mbpp, ("text code",)),
        ("humaneval", format_humaneval, ("prompt canonical_solution",)),
        ("instruction", format_instruction, ("instruction output",)),
        ("chat", format_chat, ("messages", "conversations")),
        ("text", format_text, ("text",)),
    ))

FORMATTERS: dict[str, Formatter] = {name: formatter for name, formatter, _ in _REGISTRY}
FORMAT_COLUMNS: dict[str, tuple[frozenset[str], ...]] = {name: columns for name, _, columns in _REGISTRY}


def get_formatter(name: str) -> Formatter:
    """The formatter registered as `name`; unknown names get close-match suggestions."""
    if name not in FORMATTERS:
        raise unknown_choice("formatter", name, FORMATTERS)
    return FORMATTERS[name]


def formatter_for_columns(columns: set[str]) -> str:
    """The registered format whose identifying columns a record has (the most specific one); 'text' if none."""
    columns = set(columns)
    matches = [(len(signature), -position, name)
               for position, (name, _, signatures) in enumerate(_REGISTRY)
               for signature in signatures if signature <= columns]
    return max(matches)[2] if matches else "text"


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
