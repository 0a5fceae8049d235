"""Evaluation tasks: names and `KIND[/CAPABILITY]:PATH` specs → files → items (texts, choices, Q&A pairs).

Nothing here touches a model. A built-in name is a file under the data directory (the layout of the
upstream releases: `wikitext2/wiki.test.raw.txt`, `hellaswag/...`); a user's file is named with its kind.
A file's records are matched to a dataset schema by the one table curation uses too (`cola.data.schemas`);
each task kind has a reading of the schemas it scores: the fields it needs and its prompt format.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from cola.data.answers import strip_calculator_annotations
from cola.data.schemas import DEFAULT_CAPABILITY, SCHEMAS, schema_for_columns
from cola.evaluate.builtins import BUILTINS, RENAMED, renamed
from cola.errors import ColaError, unknown_choice
from cola.io import describe_value, read_json_records, read_text_file

DATA_DIR_ENV = "COLA_DATA_DIR"

# kind → (primary metric, higher is better, default capability)
KINDS: dict[str, tuple[str, bool, str | None]] = {
    "ppl": ("perplexity", False, "general"),
    "mc": ("acc_norm", True, "commonsense"),
    "qa": ("nll", False, None),  # math or code, from the file's schema (cola.data.schemas)
    "gsm8k_em": ("exact_match", True, "math"),
    "humaneval_pass1": ("pass@1", True, "code"),
}
EXECUTES_CODE = frozenset({"humaneval_pass1"})  # kinds that run model-generated programs (opt-in only)


@dataclass(frozen=True)
class TaskSpec:
    """One task to run: what it is called, how it is scored, which file it reads."""

    name: str
    kind: str
    path: Path
    capability: str | None = None  # None: inferred from the file's schema (qa)
    note: str = ""
    plain_answers: bool = False    # qa: calculator annotations <<48/2=24>> removed from the answers

    @property
    def metric(self) -> str:
        return KINDS[self.kind][0]

    @property
    def higher_is_better(self) -> bool:
        return KINDS[self.kind][1]


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The folder built-in tasks live in: `data_dir`, else $COLA_DATA_DIR."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    if not chosen:
        raise ColaError(f"built-in tasks read their files from a data directory: pass --data_dir DIR "
                        f"(data_dir= in Python) or set {DATA_DIR_ENV}")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise ColaError(f"data directory not found: {path}")
    return path


def _file_stem(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    return name.rsplit(".", 1)[0] if "." in name else name


def refuse_duplicate_names(names: Sequence[str]) -> None:
    """One task per name: ColaError listing the names given twice."""
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise ColaError(f"task name(s) given twice: {', '.join(duplicates)}")


def parse_task(spec: str | TaskSpec, data_dir: str | Path | None = None) -> TaskSpec:
    """`wikitext2` (a built-in name) or `KIND[/CAPABILITY]:PATH`, e.g. `mc:arc.jsonl`, `qa/math:my.jsonl`.

    The file must exist, so a typo fails before any model loads.
    """
    if isinstance(spec, TaskSpec):
        return spec
    head, sep, file = spec.partition(":")
    if not sep:
        spec = renamed(spec) if spec in RENAMED else spec
        if spec not in BUILTINS:
            raise unknown_choice("task", spec, [*BUILTINS, *(f"{k}:PATH" for k in KINDS)])
        builtin = BUILTINS[spec]
        path = resolve_data_dir(data_dir) / builtin.relpath
        if not path.is_file():
            raise ColaError(f"task {spec!r} expects the file {builtin.relpath} under the data directory; "
                            f"{path} not found")
        return TaskSpec(spec, builtin.kind, path, builtin.capability, builtin.note, builtin.plain_answers)
    kind, _, capability = head.partition("/")
    if kind not in KINDS:
        raise unknown_choice("task kind", kind, KINDS)
    path = Path(file).expanduser()
    if not file or not path.is_file():
        raise ColaError(f"task file not found: {file!r} (in {spec!r})")
    return TaskSpec(f"{kind}:{_file_stem(path)}", kind, path, capability or KINDS[kind][2])


# --- reading files -------------------------------------------------------------------------------------------

RECORD_SUFFIXES = (".jsonl", ".json")  # (optionally .gz) read as records; any other file is plain text


class RecordError(ValueError):
    """A record whose fields are present but unusable; `load_items` adds the file and line."""


def require(record: dict[str, Any], fields: tuple[str, ...], path: Path, line: int, what: str) -> None:
    """Fail with file, line and field when a record lacks one of `fields`."""
    for field in fields:
        if field not in record:
            raise ColaError(f"{path}:{line}: missing field {field!r} ({what} records need "
                            f"{', '.join(fields)})")


def text_field(record: dict[str, Any], name: str, *, empty: bool = True) -> str:
    """`record[name]` as text: a string (or a number, written out); None, lists and objects are errors."""
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RecordError(f"field {name!r} must be text, got {describe_value(value)}")
    text = str(value)
    if not empty and not text.strip():
        raise RecordError(f"field {name!r} is empty")
    return text


def records(path: Path) -> Any:
    """read_json_records, with unreadable or corrupt files as one-line errors."""
    try:
        yield from read_json_records(path)
    except (OSError, EOFError) as exc:
        raise ColaError(f"cannot read {path}: {exc}") from None


def read_text(path: Path) -> str:
    """The `text` fields of a .jsonl/.json file joined by blank lines; any other file as plain UTF-8 text."""
    if Path(path.name.removesuffix(".gz")).suffix not in RECORD_SUFFIXES:
        return read_text_file(path)
    texts = []
    for line, record in records(path):
        require(record, ("text",), path, line, "perplexity")
        try:
            texts.append(text_field(record, "text"))
        except RecordError as exc:
            raise ColaError(f"{path}:{line}: {exc}") from None
    if not texts:
        raise ColaError(f"{path}: no records")
    return "\n\n".join(texts)


# --- multiple choice -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChoiceItem:
    context: str
    choices: tuple[str, ...]   # scored as continuation " " + choice
    label: int


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag cleaning: WikiHow `[title]` markers become sentence ends, other brackets go."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def choices_field(record: dict[str, Any], name: str) -> tuple[str, ...]:
    """A list of at least two text choices."""
    value = record[name]
    if not isinstance(value, list):
        raise RecordError(f"field {name!r} must be a list of choices, got {describe_value(value)}")
    if len(value) < 2:
        raise RecordError(f"field {name!r} has {len(value)} choice{'s' if len(value) != 1 else ''}; multiple choice "
                          "needs at least 2 choices")
    for index, choice in enumerate(value):
        if isinstance(choice, bool) or not isinstance(choice, (str, int, float)):
            raise RecordError(f"choice {index} of {name!r} must be text, got {describe_value(choice)}")
    return tuple(map(str, value))


def label_field(record: dict[str, Any], name: str, choices: int) -> int:
    """A 0-based index into the choices: a whole number (or its digits as a string, as in HF hellaswag)."""
    value = record[name]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"field {name!r} must be the 0-based index of the right choice, got {value!r}")
    if not 0 <= value < choices:
        raise RecordError(f"{name} {value} is out of range for {choices} choices (0-based: 0 to {choices - 1})")
    return value


def _choice_item(context: str, choices: tuple[str, ...], record: dict[str, Any], label: str) -> ChoiceItem:
    return ChoiceItem(context, choices, label_field(record, label, len(choices)))


def _generic_choice(record: dict[str, Any]) -> ChoiceItem:
    return _choice_item(text_field(record, "question"), choices_field(record, "choices"), record, "label")


def _hellaswag_preprocessed(record: dict[str, Any]) -> ChoiceItem:
    return _choice_item(text_field(record, "query"), choices_field(record, "endings"), record, "label")


def _hellaswag_original(record: dict[str, Any]) -> ChoiceItem:
    ctx = text_field(record, "ctx_a") + " " + text_field(record, "ctx_b").capitalize()
    endings = tuple(hellaswag_preprocess(e) for e in choices_field(record, "endings"))
    return _choice_item(hellaswag_preprocess(text_field(record, "activity_label") + ": " + ctx), endings, record,
                        "label")


def _labelled_choices(record: dict[str, Any], question: str) -> ChoiceItem:
    """Choices as `{"label": [...], "text": [...]}` and the gold's label in `answerKey` (CommonsenseQA, ARC,
    OpenBookQA); `question` names the field holding the question."""
    table = record["choices"]
    if not isinstance(table, dict) or not {"label", "text"} <= set(table):
        raise RecordError(f"field 'choices' must be an object with 'label' and 'text' lists, got "
                          f"{describe_value(table)}")
    letters, texts = choices_field(table, "label"), choices_field(table, "text")
    if len(letters) != len(texts):
        raise RecordError(f"'choices' has {len(letters)} labels but {len(texts)} texts")
    key = text_field(record, "answerKey")
    if key not in letters:
        raise RecordError(f"answerKey {key!r} is not one of the choice labels {', '.join(letters)}")
    return ChoiceItem(text_field(record, question), texts, letters.index(key))


@dataclass(frozen=True)
class Reading:
    """How a task kind reads records of one dataset schema (a `cola.data.schemas` name): the fields it needs,
    how a record becomes an item, and the name errors give it. Its capability is the schema's."""

    name: str
    schema: str
    fields: tuple[str, ...]
    build: Callable[[dict[str, Any]], Any]  # record → item

    @property
    def capability(self) -> str | None:
        return SCHEMAS[self.schema].capability


CHOICE_READINGS = (
    Reading("hellaswag (preprocessed)", "hellaswag_preprocessed", ("query", "endings", "label"),
            _hellaswag_preprocessed),
    Reading("hellaswag (original)", "hellaswag", ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
            _hellaswag_original),
    Reading("commonsense_qa", "commonsense_qa", ("question", "choices", "answerKey"),
            lambda record: _labelled_choices(record, "question")),
    Reading("openbookqa", "openbookqa", ("question_stem", "choices", "answerKey"),
            lambda record: _labelled_choices(record, "question_stem")),
    Reading("multiple choice", "multiple_choice", ("question", "choices", "label"), _generic_choice),
)


# --- question / answer ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnswerItem:
    prompt: str
    answer: str     # scored given the prompt
    reference: str = ""  # gsm8k_em: the gold final answer; humaneval: unused
    record: Any = None   # humaneval_pass1: the problem for the execution harness


def gsm8k_final_answer(text: str) -> str:
    """The number after the last `####` (gsm8k's marker), commas removed."""
    return text.rsplit("####", 1)[-1].strip().replace(",", "")


def _gsm8k(record: dict[str, Any]) -> AnswerItem:
    answer = text_field(record, "answer", empty=False)
    return AnswerItem(f"Question: {text_field(record, 'question')}\nAnswer:", " " + answer, gsm8k_final_answer(answer))


def _gsm8k_final(record: dict[str, Any]) -> AnswerItem:
    """gsm8k_em: the answer must end in `#### N`, the number the model's final number is compared with."""
    item = _gsm8k(record)
    if GSM8K_MARKER not in item.answer or not item.reference:
        raise RecordError(f"answer has no final number after {GSM8K_MARKER!r} (gsm8k_em compares the model's "
                          "final number with it)")
    return item


def _math(record: dict[str, Any]) -> AnswerItem:
    return AnswerItem(f"Problem: {text_field(record, 'problem')}\nSolution:",
                      " " + text_field(record, "solution", empty=False))


def _mbpp(record: dict[str, Any]) -> AnswerItem:
    code = text_field(record, "code", empty=False).replace("\r\n", "\n")
    return AnswerItem(f'"""{text_field(record, "text")}"""\n', code)


def _humaneval(record: dict[str, Any]) -> AnswerItem:
    return AnswerItem(text_field(record, "prompt"), text_field(record, "canonical_solution", empty=False),
                      record=record)


def _humaneval_program(record: dict[str, Any]) -> AnswerItem:
    """humaneval_pass1: a prompt to complete, its tests defining `check`, and the function they check."""
    entry = text_field(record, "entry_point", empty=False)
    if not entry.isidentifier():
        raise RecordError(f"entry_point {entry!r} is not a Python function name")
    problem = {"prompt": text_field(record, "prompt", empty=False), "test": text_field(record, "test", empty=False),
               "entry_point": entry, "task_id": str(record.get("task_id", ""))}
    return AnswerItem(problem["prompt"], "", record=problem)


GSM8K_MARKER = "####"
ANSWER_READINGS = (
    Reading("MATH", "math", ("problem", "solution"), _math),
    Reading("mbpp", "mbpp", ("text", "code"), _mbpp),
    Reading("humaneval", "humaneval", ("prompt", "canonical_solution"), _humaneval),
    Reading("question/answer", "gsm8k", ("question", "answer"), _gsm8k),
)
# Per task kind, its readings; the last one also reads a file whose schema the kind has no reading of (so its
# error names the fields that kind needs).
READINGS: dict[str, tuple[Reading, ...]] = {
    "mc": CHOICE_READINGS,
    "qa": ANSWER_READINGS,
    "gsm8k_em": (Reading("gsm8k", "gsm8k", ("question", "answer"), _gsm8k_final),),
    "humaneval_pass1": (Reading("humaneval", "humaneval", ("prompt", "test", "entry_point"), _humaneval_program),),
}


def reading_for(kind: str, record: dict[str, Any]) -> Reading:
    """How `kind` reads a file whose first record is `record`: its reading of the schema the record's columns
    match (`cola.data.schemas.schema_for_columns`, the matcher curation uses), else the kind's generic one."""
    schema = schema_for_columns(record)
    readings = READINGS[kind]
    return next((r for r in readings if schema is not None and r.schema == schema.name), readings[-1])


def load_items(task: TaskSpec, limit: int | None) -> tuple[list[Any], Reading]:
    """The first `limit` items of a mc/qa/generation task file and the reading its first record chose."""
    items: list[Any] = []
    reading: Reading | None = None
    for line, record in islice(records(task.path), limit):
        reading = reading or reading_for(task.kind, record)
        require(record, reading.fields, task.path, line, reading.name)
        if task.plain_answers and isinstance(record.get("answer"), str):
            record = {**record, "answer": strip_calculator_annotations(record["answer"])}
        try:
            items.append(reading.build(record))
        except RecordError as exc:
            raise ColaError(f"{task.path}:{line}: {reading.name} record: {exc}") from None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ColaError(f"{task.path}:{line}: malformed {reading.name} record ({exc})") from None
    if reading is None:
        raise ColaError(f"{task.path}: no records")
    return items, reading


def infer_capability(task: TaskSpec, reading: Reading) -> str:
    """The task's own capability (`KIND/CAPABILITY:PATH`, or the kind's), else its schema's."""
    return task.capability or reading.capability or DEFAULT_CAPABILITY
