"""The one dataset-schema table (cola.data.schemas): curation and evaluation read a file's columns the same way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cola.data.catalog import CAPABILITIES, CATALOG
from cola.data.formatters import FORMATTERS, format_multiple_choice, formatter_for_columns, get_formatter
from cola.data.schemas import DEFAULT_CAPABILITY, SCHEMAS, schema_for_columns
from cola.data.sources import load_source, parse_source
from cola.errors import ColaError
from cola.evaluate.tasks import READINGS, infer_capability, load_items, parse_task, read_text

from tests.conftest import SHARED_DATA, needs_shared_data, write_jsonl

# --- the table ------------------------------------------------------------------------------------------------


def test_every_schema_names_a_registered_formatter_and_an_evaluate_reading_of_its_kind():
    assert {s.formatter for s in SCHEMAS.values()} == set(FORMATTERS)
    for schema in SCHEMAS.values():
        if schema.evaluation in ("mc", "qa"):
            assert schema.name in {r.schema for r in READINGS[schema.evaluation]}, schema.name
    for kind in ("mc", "qa"):  # every reading evaluate has is of a schema the table says that kind reads
        assert {SCHEMAS[r.schema].evaluation for r in READINGS[kind]} == {kind}
    assert all(SCHEMAS[r.schema].capability for readings in READINGS.values() for r in readings)
    assert [s.name for s in SCHEMAS.values() if s.evaluation == "ppl"] == ["text"]  # ppl reads `text` fields


def test_catalog_entries_take_their_schemas_fields_capability_and_formatter():
    hellaswag = CATALOG["hellaswag"]
    assert (hellaswag.text_fields, hellaswag.capability, hellaswag.formatter) == (
        ("ctx", "endings"), "commonsense", "multiple_choice")
    assert (CATALOG["c4"].capability, CATALOG["c4"].formatter) == ("general", "text")  # free text: its own
    assert all(e.capability for e in CATALOG.values())
    assert CAPABILITIES == ("general", "commonsense", "math", "code")  # `cola datasets`' reference sets


@pytest.mark.parametrize("columns, name", [
    ({"question", "choices", "label", "answer"}, "multiple_choice"),  # ties with gsm8k: listed first wins
    ({"question", "choices"}, "multiple_choice"),
    ({"id", "question", "question_concept", "choices", "answerKey"}, "commonsense_qa"),  # larger signature wins
    ({"idx", "query", "endings", "label"}, "hellaswag_preprocessed"),
    ({"ind", "activity_label", "ctx", "ctx_a", "ctx_b", "endings", "label"}, "hellaswag"),
    ({"activity_label", "ctx_a", "ctx_b", "endings", "label"}, "hellaswag"),  # its second signature
    ({"question", "answer"}, "gsm8k"),
    ({"text", "code", "task_id"}, "mbpp"),
    ({"instruction", "output"}, "instruction"),
    ({"instruction", "input", "output", "answer"}, "instruction"),
    ({"text", "messages"}, "chat"),  # one column each: listed first wins
    ({"text", "url"}, "text"),
    ({"prefix", "gold_completion"}, None),
])
def test_one_matcher_and_one_tie_break(columns: set[str], name: str | None):
    schema = schema_for_columns(columns)
    assert (schema.name if schema else None) == name
    assert formatter_for_columns(columns) == (schema.formatter if schema else "text")


# --- the disagreements the three old tables had (issue 18) -----------------------------------------------------


HELLASWAG = [{"idx": i, "query": f"Roofing: A man is on roof {i}. he", "label": i % 4,
              "endings": ["sleeps.", "naps.", "rests.", "nails it."]} for i in range(4)]


def test_preprocessed_hellaswag_curates_and_evaluates_as_commonsense_multiple_choice(tmp_path: Path):
    """It was refused by curate ("cannot tell which field holds the text") and multiple choice in evaluate."""
    path = write_jsonl(tmp_path / "hellaswag.jsonl", HELLASWAG)
    source = load_source(parse_source(str(path)), max_candidates=10, seed=0)
    assert (source.capability, source.capability_origin, source.fields) == (
        "commonsense", "catalog", ("query", "endings"))
    formatted = format_multiple_choice(source.records[1])
    assert formatter_for_columns(source.records[1]) == "multiple_choice"
    assert formatted.text == ("Question: Roofing: A man is on roof 1. he\nA. sleeps.\nB. naps.\nC. rests.\n"
                              "D. nails it.\n\nAnswer: B. naps.")
    items, reading = load_items(parse_task(f"mc:{path}"), None)
    assert (reading.schema, reading.name) == ("hellaswag_preprocessed", "hellaswag (preprocessed)")
    assert (items[1].context, items[1].choices[items[1].label]) == ("Roofing: A man is on roof 1. he", "naps.")
    assert infer_capability(parse_task(f"qa:{path}"), reading) == "commonsense"  # the schema's, without a label


@pytest.mark.parametrize("records, fields, capability, formatter", [
    ([{"question": "Which is wet?", "choices": ["water", "sand"]}], ("question", "choices"), "commonsense",
     "multiple_choice"),  # the formatters' table read it as free text
    ([{"instruction": "Say hi.", "output": "Hi."}], ("instruction", "input", "output"), "general",
     "instruction"),  # the catalog refused it without an `input` column
])
def test_columns_the_old_tables_classified_differently(tmp_path: Path, records, fields, capability, formatter):
    path = write_jsonl(tmp_path / "pool.jsonl", records)
    source = load_source(parse_source(str(path)), max_candidates=10, seed=0)
    assert (source.fields, source.capability, source.capability_origin) == (fields, capability, "catalog")
    assert formatter_for_columns(records[0]) == formatter


def test_openbookqa_curates_and_evaluates_as_commonsense_multiple_choice(tmp_path: Path):
    """Stage 2 could format OpenBookQA's own schema, but curate refused it and evaluate did not read it."""
    record = {"id": "7-980", "question_stem": "The sun is responsible for", "fact1": "the sun is a source of energy",
              "choices": {"text": ["puppies learning", "plants sprouting"], "label": ["A", "B"]}, "answerKey": "B"}
    path = write_jsonl(tmp_path / "obqa.jsonl", [record])
    source = load_source(parse_source(str(path)), max_candidates=1, seed=0)
    assert (source.fields, source.capability) == (("question_stem", "choices"), "commonsense")
    assert get_formatter(formatter_for_columns(record))(record).text == (
        "Question: The sun is responsible for\nA. puppies learning\nB. plants sprouting\n\nReasoning:\n"
        "the sun is a source of energy\n\nAnswer: B. plants sprouting")
    (item,), reading = load_items(parse_task(f"mc:{path}"), None)
    assert (reading.name, item.context, item.choices, item.label) == (
        "openbookqa", "The sun is responsible for", ("puppies learning", "plants sprouting"), 1)


def test_hellaswag_without_ctx_formats_from_ctx_a_and_ctx_b():
    record = {"activity_label": "Baking", "ctx_a": "A man mixes flour.", "ctx_b": "then he",
              "endings": ["bakes it.", "runs."], "label": 0}
    assert schema_for_columns(record).name == "hellaswag"
    assert format_multiple_choice(record).question == "Baking: A man mixes flour. then he\nA. bakes it.\nB. runs."


def test_question_answer_is_math_in_evaluate_as_in_curate(tmp_path: Path):
    """evaluate called a question/answer file without gsm8k's `####` capability "qa"; curate called it math."""
    path = write_jsonl(tmp_path / "trivia.jsonl", [{"question": "Capital of France?", "answer": "Paris"}])
    task = parse_task(f"qa:{path}")
    _, reading = load_items(task, None)
    assert infer_capability(task, reading) == "math"
    assert load_source(parse_source(str(path)), max_candidates=1, seed=0).capability == "math"


# --- every shared data file: curate's reading and evaluate's agree ---------------------------------------------

DATA_SUFFIXES = (".jsonl", ".json", ".txt", ".gz")
# Files only one side (or neither) reads, and why. Any other file must be read by both, the same way.
CURATE_ONLY = {
    "alpaca/alpaca_5000.json": "instruction data: cola evaluate has no instruction task kind",
    **{f"commonsense_llm_adapters/{name}_train.json": "LLM-Adapters' instruction format (instruction, input, "
       "output, answer): curated as instruction data; evaluate reads the .parsed.jsonl files instead"
       for name in ("arc_challenge", "arc_easy", "boolq", "openbookqa")},
}
NEITHER = {
    "c4/c4_prefix_completion_1480.jsonl": "prefix + gold_completion is no known schema: curate it with "
                                          "#prefix+gold_completion; evaluate has no completion task kind",
}


def _shared_files() -> list[str]:
    if not SHARED_DATA.is_dir():
        return []
    return sorted(p.relative_to(SHARED_DATA).as_posix() for p in SHARED_DATA.rglob("*")
                  if p.is_file() and p.name.endswith(DATA_SUFFIXES))


def _curate_reading(path: Path) -> tuple[str, str] | None:
    """(schema, capability) as `cola curate` reads the file (sources, then Stage 2's formatter), or None when it
    refuses it. Every sampled record formats to text."""
    try:
        source = load_source(parse_source(str(path)), max_candidates=16, seed=0)
    except ColaError as exc:
        assert "cannot tell which field holds the text" in str(exc)
        return None
    schema = schema_for_columns(source.records[0])
    assert schema is not None and source.fields == schema.text_fields
    formatter = get_formatter(formatter_for_columns(source.records[0]))
    assert all(formatter(record).text for record in source.records)
    return schema.name, source.capability


def _evaluate_reading(path: Path, schema: str | None) -> tuple[str, str] | None:
    """(schema, capability) as `cola evaluate` reads the file with the task kind the schema table names, or None
    when no mc, qa or ppl task reads it."""
    kind = SCHEMAS[schema].evaluation if schema else None
    if kind == "ppl":
        task = parse_task(f"ppl:{path}")
        assert read_text(path)
        return "text", task.capability
    if kind is not None:
        task = parse_task(f"{kind}:{path}")
        items, reading = load_items(task, 16)
        assert len(items) == 16
        return reading.schema, infer_capability(task, reading)
    for kind in ("mc", "qa", "ppl"):
        with pytest.raises(ColaError, match="missing field"):
            (read_text(path) if kind == "ppl" else load_items(parse_task(f"{kind}:{path}"), 16))
    return None


@needs_shared_data
@pytest.mark.parametrize("relative", _shared_files() or ["(none)"])
def test_curate_and_evaluate_agree_on_every_shared_data_file(relative: str):
    path = SHARED_DATA / relative
    curated = _curate_reading(path)
    evaluated = _evaluate_reading(path, curated[0] if curated else None)
    if relative in NEITHER:
        assert (curated, evaluated) == (None, None), NEITHER[relative]
    elif relative in CURATE_ONLY:
        assert curated is not None and evaluated is None, CURATE_ONLY[relative]
    else:
        assert curated is not None and curated == evaluated
        assert curated[1] in CAPABILITIES


@needs_shared_data
def test_the_listed_exceptions_are_shared_data_files():
    assert set(CURATE_ONLY) | set(NEITHER) <= set(_shared_files())
    assert "hellaswag/hellaswag_val_full_preprocessed.jsonl" in _shared_files()


def test_free_text_takes_the_default_capability_on_both_sides(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph.\n\nSecond paragraph.\n", encoding="utf-8")
    assert load_source(parse_source(str(path)), max_candidates=4, seed=0).capability == DEFAULT_CAPABILITY
    assert parse_task(f"ppl:{path}").capability == DEFAULT_CAPABILITY
    assert re.fullmatch(r"ppl:notes", parse_task(f"ppl:{path}").name)
