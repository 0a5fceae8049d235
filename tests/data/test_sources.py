"""Tests for candidate sources (cola.data.sources, cola.data.specs) and the dataset catalog (cola.data.catalog)."""

from __future__ import annotations

import gzip
import json
import logging
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from cola.data.catalog import CATALOG, EMBEDDED_SOURCES
from cola.data.sources import (
    FILE_FORMATS,
    HUB_SHUFFLE_BUFFER,
    MAX_TEXT_CHARS,
    SourceSpec,
    bound_strings,
    load_source,
    parse_source,
    parse_sources,
    record_text,
    render_value,
    reservoir_positions,
    reservoir_sample,
)
from cola.data.fields import FieldValueError
from cola.data.schemas import schema_for_columns
from cola.errors import ColaError
from cola.spill import RowStore

from tests.conftest import SHARED_DATA, needs_shared_data


@pytest.fixture()
def http_calls(monkeypatch) -> list[tuple[str, str, str]]:
    """Record every HTTP request made through httpx (huggingface_hub / datasets) or requests, and refuse it,
    so a test stays offline and fast and can assert how many calls were attempted."""
    import httpx
    import requests

    calls: list[tuple[str, str, str]] = []

    def httpx_send(self, request, *args, **kwargs):
        calls.append(("httpx", request.method, str(request.url)))
        raise httpx.ConnectError("network access blocked by the test", request=request)

    def requests_request(self, method, url, *args, **kwargs):
        calls.append(("requests", method, str(url)))
        raise requests.ConnectionError("network access blocked by the test")

    monkeypatch.setattr(httpx.Client, "send", httpx_send)
    monkeypatch.setattr(requests.Session, "request", requests_request)
    return calls


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_table(path: Path, records: list[dict]) -> Path:
    """`records` written in the format the file name says (.jsonl, .json, .csv, .txt paragraphs, .parquet)."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        return write_jsonl(path, records)
    if path.suffix == ".json":
        path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    elif path.suffix == ".txt":
        path.write_text("\n\n".join(r["text"] for r in records) + "\n", encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def load(spec: str | Path, max_candidates: int = 1000, seed: int = 0):
    return load_source(parse_source(str(spec)), max_candidates=max_candidates, seed=seed)

def expect_exact_error(spec: str | Path, message: str) -> None:
    """Loading `spec` raises a ColaError whose message is exactly `message`."""
    with pytest.raises(ColaError) as err:
        load(spec)
    assert str(err.value) == message


def expect_load_error(path: Path, pattern: str) -> None:
    """Loading `path` raises a ColaError matching `pattern` that names the file."""
    with pytest.raises(ColaError, match=pattern) as err:
        load(path)
    assert str(path) in str(err.value)



def qa_records(n: int) -> list[dict]:
    return [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}. #### {2 * i}"} for i in range(n)]


# --- parse_source / parse_sources ---------------------------------------------------------------------


def test_parse_catalog_name():
    spec = parse_source("gsm8k")
    assert (spec.kind, spec.name, spec.location) == ("hub", "gsm8k", "openai/gsm8k")
    assert (spec.config, spec.split) == ("main", "train")
    assert spec.capability == "math"
    assert spec.fields == ("question", "answer")
    assert spec.spec == "gsm8k"


def test_parse_catalog_name_with_overrides():
    spec = parse_source("gsm8k@general#question")
    assert spec.kind == "hub" and spec.location == "openai/gsm8k"
    assert spec.capability == "general"
    assert spec.fields == ("question",)


def test_parse_path_with_capability(tmp_path: Path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"text": "x"}])
    spec = parse_source(f"{path}@code")
    assert (spec.kind, spec.location, spec.name) == ("file", str(path), "pool")
    assert spec.capability == "code"
    assert spec.fields is None


def test_parse_path_with_fields(tmp_path: Path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"a": "x", "b": "y"}])
    spec = parse_source(f"{path}#a+b")
    assert (spec.kind, spec.location) == ("file", str(path))
    assert spec.capability is None
    assert spec.fields == ("a", "b")


def test_parse_path_with_capability_and_fields(tmp_path: Path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"a": "x", "b": "y"}])
    spec = parse_source(f"{path}@my_cap-2#a+b")
    assert spec.kind == "file"
    assert spec.capability == "my_cap-2"
    assert spec.fields == ("a", "b")
    assert spec.spec == f"{path}@my_cap-2#a+b"


def test_generic_file_names_get_their_folder(tmp_path: Path):
    path = write_jsonl(tmp_path / "gsm8k" / "train.jsonl", qa_records(2))
    assert parse_source(str(path)).name == "gsm8k/train"


def test_parse_hub_id():
    spec = parse_source("someone/some-dataset@math#problem")
    assert (spec.kind, spec.name, spec.location) == ("hub", "someone/some-dataset", "someone/some-dataset")
    assert spec.capability == "math" and spec.fields == ("problem",)
    assert spec.config is None and spec.split == "train"


def test_parse_embedded_math():
    spec = parse_source("embedded-math")
    assert (spec.kind, spec.name, spec.location) == ("embedded", "embedded-math", "math")
    assert spec.capability == "math"
    assert spec.fields == ("text",)


def test_parse_bare_embedded_points_to_parse_sources():
    with pytest.raises(ColaError, match="parse_sources"):
        parse_source("embedded")


def test_parse_sources_expands_embedded():
    specs = parse_sources(["embedded"])
    assert [s.name for s in specs] == ["embedded-general", "embedded-math", "embedded-code"]
    assert [s.capability for s in specs] == ["general", "math", "code"]
    assert [s.location for s in specs] == ["general", "math", "code"]
    assert all(s.kind == "embedded" and s.fields == ("text",) for s in specs)


def test_parse_sources_embedded_keeps_override():
    specs = parse_sources(["embedded@x"])
    assert [s.name for s in specs] == ["embedded-general", "embedded-math", "embedded-code"]
    assert [s.capability for s in specs] == ["x", "x", "x"]
    assert [s.spec for s in specs] == ["embedded-general@x", "embedded-math@x", "embedded-code@x"]


def test_parse_sources_mixed_keeps_order(tmp_path: Path):
    path = write_jsonl(tmp_path / "prose.jsonl", [{"text": "x"}])
    specs = parse_sources(["gsm8k", str(path), "embedded-code"])
    assert [s.name for s in specs] == ["gsm8k", "prose", "embedded-code"]
    assert [s.kind for s in specs] == ["hub", "file", "embedded"]


@pytest.mark.parametrize("specs, dup", [
    (["gsm8k", "gsm8k@math"], "gsm8k"),
    (["embedded", "embedded-math"], "embedded-math"),
])
def test_parse_sources_rejects_duplicate_names(specs, dup):
    with pytest.raises(ColaError, match="named twice") as err:
        parse_sources(specs)
    assert dup in str(err.value)


def test_parse_sources_names_apart_files_with_the_same_readable_name(tmp_path: Path):
    a = write_jsonl(tmp_path / "a" / "gsm8k" / "train.jsonl", qa_records(2))
    b = write_jsonl(tmp_path / "b" / "gsm8k" / "train.jsonl", qa_records(3))
    assert [s.name for s in parse_sources([str(a), str(b)])] == ["a/gsm8k/train", "b/gsm8k/train"]


@pytest.mark.parametrize("spec", ["gsm8k@1math", "gsm8k@ma th", "gsm8k@math!", "gsm8k@-x"])
def test_invalid_capability_rejected(spec):
    with pytest.raises(ColaError, match="invalid capability") as err:
        parse_source(spec)
    assert repr(spec) in str(err.value)


@pytest.mark.parametrize("suffix", ["#+", "#++"])
def test_empty_field_list_rejected(tmp_path: Path, suffix):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"text": "x"}])
    with pytest.raises(ColaError, match="empty field list"):
        parse_source(f"{path}{suffix}")
    with pytest.raises(ColaError, match="empty field list"):
        parse_source(f"gsm8k{suffix}")




def test_parse_plain_hub_id():
    spec = parse_source("user/dataset")
    assert (spec.kind, spec.name, spec.location) == ("hub", "user/dataset", "user/dataset")
    assert spec.capability is None and spec.fields is None
    assert spec.config is None and spec.split == "train"
    assert spec.spec == "user/dataset"


@pytest.mark.parametrize("stem", ["train", "test", "validation", "data"])
def test_generic_file_names_get_their_folder_for_any_type(tmp_path: Path, stem):
    path = tmp_path / "gsm8k" / f"{stem}.jsonl.gz"
    path.parent.mkdir()
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "x"}) + "\n")
    spec = parse_source(str(path))
    assert (spec.kind, spec.name) == ("file", f"gsm8k/{stem}")


def test_specific_file_names_keep_their_stem(tmp_path: Path):
    path = write_jsonl(tmp_path / "gsm8k" / "math_pool.jsonl", qa_records(2))
    assert parse_source(str(path)).name == "math_pool"


@pytest.mark.parametrize("name, content", [("x.gz", gzip.compress(b'{"text": "x"}\n')),
                                           ("pool.xml", b"<root><text>x</text></root>")])
def test_unsupported_file_type_rejected(tmp_path: Path, name: str, content: bytes):
    path = tmp_path / name  # a .gz with no inner type, or an existing file of an unknown type
    path.write_bytes(content)
    with pytest.raises(ColaError, match="unsupported file type") as err:
        parse_source(str(path))
    message = str(err.value)
    assert str(path) in message
    assert all(ext in message for ext in FILE_FORMATS)


def test_bare_hash_is_an_empty_field_list(tmp_path: Path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"text": "x"}])
    for spec in (f"{path}#", "gsm8k#", f"{path}@math#"):
        with pytest.raises(ColaError, match="empty field list") as err:
            parse_source(spec)
        assert repr(spec) in str(err.value)


@pytest.mark.parametrize("spec", ["gsm8k@", "gsm8k@#question"])
def test_bare_at_is_an_invalid_capability(spec):
    with pytest.raises(ColaError, match="invalid capability ''"):
        parse_source(spec)


def test_bare_at_on_a_path_is_an_invalid_capability(tmp_path: Path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"text": "x"}])
    with pytest.raises(ColaError, match="invalid capability ''"):
        parse_source(f"{path}@")


def test_parse_sources_embedded_with_fields_override():
    specs = parse_sources(["embedded@x#text"])
    assert [s.spec for s in specs] == ["embedded-general@x#text", "embedded-math@x#text", "embedded-code@x#text"]
    assert all(s.fields == ("text",) and s.capability == "x" for s in specs)


def test_parse_sources_same_file_names_from_different_folders_are_fine(tmp_path: Path):
    a = write_jsonl(tmp_path / "gsm8k" / "train.jsonl", qa_records(2))
    b = write_jsonl(tmp_path / "math" / "train.jsonl", qa_records(2))
    assert [s.name for s in parse_sources([str(a), str(b)])] == ["gsm8k/train", "math/train"]


@pytest.mark.parametrize("name, suggestion", [
    ("gsm8", "gsm8k"), ("wikitxt", "wikitext"), ("embeded-math", "embedded-math")])
def test_unknown_name_suggests_close_matches(name, suggestion):
    with pytest.raises(ColaError, match="unknown dataset") as err:
        parse_source(name)
    message = str(err.value)
    assert repr(name) in message
    hint = message.split("Valid choices")[0]
    assert "Did you mean" in hint and repr(suggestion) in hint


def test_unknown_name_without_close_match_lists_choices():
    with pytest.raises(ColaError, match="unknown dataset 'zzzzqqq'") as err:
        parse_source("zzzzqqq")
    assert "Did you mean" not in str(err.value)
    assert all(name in str(err.value) for name in [*CATALOG, *EMBEDDED_SOURCES])


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.csv", "missing.jsonl.gz", "sub/missing.parquet"])
def test_missing_file_path_raises_naming_it(tmp_path: Path, name):
    path = tmp_path / name
    with pytest.raises(ColaError, match="dataset file not found") as err:
        parse_source(f"{path}@math")
    assert str(path) in str(err.value)


def test_directory_is_not_a_file(tmp_path: Path):
    with pytest.raises(ColaError, match="dataset file not found"):
        parse_source(str(tmp_path))


# --- load_source: local file types --------------------------------------------------------------------


TEXTS = ["Alpha paragraph.", "Beta paragraph.", "Gamma paragraph.", "Delta paragraph."]


def test_load_jsonl(tmp_path: Path):
    path = write_jsonl(tmp_path / "prose.jsonl", [{"text": t} for t in TEXTS])
    source = load(path)
    assert source.texts == tuple(TEXTS)
    assert source.records_seen == 4 and source.empty_skipped == 0
    assert (source.capability, source.fields) == ("general", ("text",))


def test_load_json_array(tmp_path: Path):
    path = tmp_path / "prose.json"
    path.write_text(json.dumps([{"text": t} for t in TEXTS], indent=2), encoding="utf-8")
    source = load(path)
    assert source.texts == tuple(TEXTS)
    assert source.records_seen == 4


def test_load_json_array_with_leading_whitespace(tmp_path: Path):
    path = tmp_path / "prose.json"
    path.write_text("\n\n  \n\t" + json.dumps([{"text": t} for t in TEXTS]), encoding="utf-8")
    source = load(path)
    assert source.texts == tuple(TEXTS)
    assert source.records_seen == 4


def test_load_parquet(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qa.parquet"
    records = qa_records(5)
    pq.write_table(pa.Table.from_pylist(records), path)
    source = load(path)
    assert source.texts == tuple(f"{r['question']}\n\n{r['answer']}" for r in records)
    assert source.records_seen == 5
    assert (source.capability, source.fields) == ("math", ("question", "answer"))


def test_load_csv(tmp_path: Path):
    import csv

    path = tmp_path / "qa.csv"
    records = qa_records(6)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows(records)
    source = load(path)
    assert source.texts == tuple(f"{r['question']}\n\n{r['answer']}" for r in records)
    assert source.records_seen == 6
    assert source.capability == "math"


def test_load_txt_paragraphs(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph,\nstill the first.\n\nSecond paragraph.\n\nThird\nparagraph.\n", encoding="utf-8")
    source = load(path)
    assert source.texts == ("First paragraph,\nstill the first.", "Second paragraph.", "Third\nparagraph.")
    assert source.records_seen == 3
    assert (source.capability, source.fields) == ("general", ("text",))


def test_load_jsonl_gz(tmp_path: Path):
    path = tmp_path / "prose.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    source = load(path)
    assert source.texts == tuple(TEXTS)
    assert source.records_seen == 4
    assert source.spec.name == "prose"


def test_load_respects_max_candidates(tmp_path: Path):
    path = write_jsonl(tmp_path / "prose.jsonl", [{"text": f"text {i}"} for i in range(30)])
    source = load(path, max_candidates=7)
    assert len(source.texts) == 7
    assert source.records_seen == 30


# --- load_source: capability and fields ---------------------------------------------------------------


def test_question_answer_is_math(tmp_path: Path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q", "answer": "A", "id": 1}])
    source = load(path)
    assert (source.capability, source.fields) == ("math", ("question", "answer"))
    assert source.texts == ("Q\n\nA",)


def test_text_and_code_is_code(tmp_path: Path):
    path = write_jsonl(tmp_path / "mbpp.jsonl", [{"task_id": 1, "text": "Add two numbers.",
                                                  "code": "def add(a, b):\n    return a + b"}])
    source = load(path)
    assert (source.capability, source.fields) == ("code", ("text", "code"))
    assert source.texts == ("Add two numbers.\n\ndef add(a, b):\n    return a + b",)


def test_multiple_choice_is_commonsense(tmp_path: Path):
    path = write_jsonl(tmp_path / "mc.jsonl", [{"question": "Which is wet?", "choices": ["water", "sand"]}])
    source = load(path)
    assert (source.capability, source.fields) == ("commonsense", ("question", "choices"))
    assert source.texts == ("Which is wet?\n\nwater\nsand",)


def test_multiple_choice_with_label_and_answer_is_commonsense(tmp_path: Path):
    """LLM-Adapters parsed files carry `answer` beside `question` and `choices`: still commonsense, not math."""
    path = write_jsonl(tmp_path / "arc_easy_train.parsed.jsonl", [
        {"question": "Which factor causes a fever?", "choices": ["a leg muscle", "bacteria", "viral particles"],
         "label": 1, "answer": "answer2"},
        {"question": "What do algae supply?", "choices": ["carbon dioxide", "food"], "label": 1, "answer": "answer2"},
    ])
    source = load(path)
    assert (source.capability, source.fields) == ("commonsense", ("question", "choices"))
    assert source.texts == ("Which factor causes a fever?\n\na leg muscle\nbacteria\nviral particles",
                            "What do algae supply?\n\ncarbon dioxide\nfood")
    assert schema_for_columns({"question", "choices", "label", "answer"}).capability == "commonsense"


def test_hub_style_choices_render_with_labels(tmp_path: Path):
    path = write_jsonl(tmp_path / "arc.jsonl", [{"question": "Q?", "choices": {"text": ["x", "y"], "label": ["A", "B"]},
                                                 "answerKey": "A"}])
    source = load(path)
    assert source.capability == "commonsense"
    assert source.texts == ("Q?\n\nA. x\nB. y",)


def test_only_text_is_general(tmp_path: Path):
    path = write_jsonl(tmp_path / "prose.jsonl", [{"text": "Some prose.", "meta": "m"}])
    source = load(path)
    assert (source.capability, source.fields) == ("general", ("text",))
    assert source.texts == ("Some prose.",)


def test_field_override(tmp_path: Path):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_records(3))
    source = load(f"{path}#answer")
    assert source.fields == ("answer",)
    assert source.texts == tuple(r["answer"] for r in qa_records(3))
    assert source.capability == "general"


def test_field_override_keeps_catalog_capability(tmp_path: Path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"q": "x", "question": "Q", "answer": "A"}])
    source = load(f"{path}#answer+question")
    assert source.fields == ("answer", "question")
    assert source.texts == ("A\n\nQ",)
    assert source.capability == "math"


def test_capability_override(tmp_path: Path):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_records(3))
    source = load(f"{path}@reasoning")
    assert source.capability == "reasoning"
    assert source.fields == ("question", "answer")


def test_capability_and_field_override(tmp_path: Path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"body": "B", "title": "T"}])
    source = load(f"{path}@code#title+body")
    assert (source.capability, source.fields, source.texts) == ("code", ("title", "body"), ("T\n\nB",))


def test_missing_named_field_lists_the_file_fields(tmp_path: Path):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_records(2))
    with pytest.raises(ColaError, match="no field 'problem'") as err:
        load(f"{path}#question+problem")
    message = str(err.value)
    assert "its fields are: question, answer" in message
    assert str(path) in message


def test_no_text_like_column_lists_the_file_fields(tmp_path: Path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"foo": "x", "bar": "y"}])
    with pytest.raises(ColaError, match="cannot tell which field holds the text") as err:
        load(path)
    message = str(err.value)
    assert "its fields are: foo, bar" in message
    assert f"{path}#field" in message


def test_empty_texts_are_skipped_and_counted(tmp_path: Path):
    path = write_jsonl(tmp_path / "prose.jsonl", [
        {"text": "one"}, {"text": ""}, {"text": "   "}, {"text": "two"}, {"text": None}, {"text": "three"}])
    source = load(path)
    assert source.texts == ("one", "two", "three")
    assert source.empty_skipped == 3
    assert source.records_seen == 6
    described = source.describe()
    assert (described["records_seen"], described["empty_skipped"], described["candidates"]) == (6, 3, 3)


def test_list_of_empty_strings_counts_as_empty(tmp_path: Path):
    path = write_jsonl(tmp_path / "mc.jsonl", [{"question": "", "choices": ["", ""]},
                                               {"question": "Q", "choices": ["a", ""]}])
    source = load(path)
    assert source.texts == ("Q\n\na",)
    assert source.empty_skipped == 1 and source.records_seen == 2


def test_all_empty_raises(tmp_path: Path):
    path = write_jsonl(tmp_path / "prose.jsonl", [{"text": ""}, {"text": " "}, {"text": "\n"}])
    with pytest.raises(ColaError, match="all 3 texts are empty") as err:
        load(path)
    assert str(path) in str(err.value) and "text" in str(err.value)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.txt", "empty.csv", "empty.parquet"])
def test_empty_file_raises(tmp_path: Path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(ColaError) as err:
        load(path)
    message = str(err.value)
    assert str(path) in message
    assert "empty" in message or "cannot read" in message


def _zero_row_parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)


@pytest.mark.parametrize("name, content", [
    ("blank.jsonl", b"\n\n  \n"),
    ("empty_array.json", b"[]"),
    ("header_only.csv", b"question,answer\n"),
    ("blank.txt", b"\n\n\n"),
    ("zero_rows.parquet", None),
    ("empty.txt.gz", gzip.compress(b"")),
    ("empty.csv.gz", gzip.compress(b"")),
    ("blank.jsonl.gz", gzip.compress(b"\n\n")),
    ("empty.jsonl.gz", gzip.compress(b"")),
    ("empty.json.gz", gzip.compress(b"")),
])
def test_file_without_records_raises(tmp_path: Path, name, content):
    """Files that are not 0 bytes but hold no record: a ColaError naming the file, never a raw exception."""
    path = tmp_path / name
    if content is None:
        _zero_row_parquet(path)
    else:
        path.write_bytes(content)
    with pytest.raises(ColaError) as err:
        load(path)
    assert str(path) in str(err.value)


# --- malformed json -----------------------------------------------------------------------------------


def test_broken_jsonl_line_is_named(tmp_path: Path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"\n{"text": "d"}\n', encoding="utf-8")
    with pytest.raises(ColaError, match="line 3") as err:
        load(path)
    assert str(path) in str(err.value)
    assert "malformed JSON" in str(err.value)


def test_blank_lines_count_in_line_numbers(tmp_path: Path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a"}\n\n   \n{"text": "b"}\n{text: c}\n', encoding="utf-8")
    expect_load_error(path, r"on line 5\b")


def test_blank_lines_in_valid_jsonl_are_ignored(tmp_path: Path):
    path = tmp_path / "gappy.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n\n', encoding="utf-8")
    source = load(path)
    assert source.texts == ("a", "b") and source.records_seen == 2


def test_broken_jsonl_gz_line_is_named(tmp_path: Path):
    path = tmp_path / "broken.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n{"text": \n')
    expect_load_error(path, r"line 4\b")


@pytest.mark.parametrize("bad_line, lineno", [("42", 3), ('["a", "b"]', 2), ('"just a string"', 1), ("null", 2)])
def test_jsonl_line_that_is_not_an_object(tmp_path: Path, bad_line, lineno):
    lines = ['{"text": "a"}', '{"text": "b"}', '{"text": "c"}']
    lines.insert(lineno - 1, bad_line)
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expect_load_error(path, rf"line {lineno} is not a JSON object")


def test_broken_json_array_line_is_named(tmp_path: Path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b"},\n  {"text": "c",,},\n  {"text": "d"}\n]\n', encoding="utf-8")
    expect_load_error(path, r"at line 4\b")


# --- reservoir sampling -------------------------------------------------------------------------------


def test_reservoir_sample_exact_k_in_order():
    items = [f"item {i:03d}" for i in range(100)]
    sample, seen = reservoir_sample(iter(items), 10, random.Random(3))
    assert seen == 100
    assert len(sample) == 10 and len(set(sample)) == 10
    assert sample == sorted(sample, key=items.index)
    assert set(sample) <= set(items)


def test_reservoir_sample_short_stream_keeps_everything():
    assert reservoir_sample(iter(["a", "b", "c"]), 10, random.Random(0)) == (["a", "b", "c"], 3)
    assert reservoir_sample(iter([]), 10, random.Random(0)) == ([], 0)


def test_reservoir_sample_seeded():
    items = [str(i) for i in range(200)]
    first = reservoir_sample(items, 15, random.Random(7))
    assert first == reservoir_sample(items, 15, random.Random(7))
    assert first[0] != reservoir_sample(items, 15, random.Random(8))[0]


def test_reservoir_sample_is_uniform():
    """Over 4000 fixed seeds each of 10 items is picked ~1200 times (k=3); the band (about +-4.5 sigma) rejects
    'take the first k' and an off-by-one slot (randrange(seen + 1) picks the first k items ~1450 times)."""
    n, k, runs = 10, 3, 4000
    counts = Counter()
    for seed in range(runs):
        sample, seen = reservoir_sample(range(n), k, random.Random(seed))
        assert seen == n and len(sample) == k
        counts.update(sample)
    expected = runs * k / n
    assert set(counts) == set(range(n))
    assert all(abs(counts[i] - expected) < 130 for i in range(n)), counts


def test_load_source_samples_uniformly(tmp_path: Path):
    n, k, runs = 10, 3, 150
    path = write_jsonl(tmp_path / "items.jsonl", [{"text": f"item {i}"} for i in range(n)])
    spec = parse_source(str(path))
    counts = Counter()
    for seed in range(runs):
        texts = load_source(spec, max_candidates=k, seed=seed).texts
        assert len(texts) == k
        assert list(texts) == sorted(texts, key=lambda t: int(t.split()[1]))  # file order kept
        counts.update(texts)
    expected = runs * k / n  # 45, sigma ~5.6
    assert all(abs(counts[f"item {i}"] - expected) < 25 for i in range(n)), counts


def test_load_source_sampling_is_seeded(tmp_path: Path):
    path = write_jsonl(tmp_path / "items.jsonl", [{"text": f"item {i}"} for i in range(60)])
    a = load(path, max_candidates=8, seed=1)
    assert a.texts == load(path, max_candidates=8, seed=1).texts
    assert a.texts != load(path, max_candidates=8, seed=2).texts
    assert a.content_sha256 == load(path, max_candidates=8, seed=1).content_sha256


# --- Source.describe ----------------------------------------------------------------------------------


def test_content_sha256(tmp_path: Path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in TEXTS])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": t} for t in TEXTS])
    c = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in TEXTS[:-1]] + [{"text": "Delta paragraph!"}])
    sha_a, sha_b, sha_c = (load(p).content_sha256 for p in (a, b, c))
    assert re.fullmatch(r"[0-9a-f]{64}", sha_a)
    assert sha_a == sha_b
    assert sha_a != sha_c


def test_content_sha256_separates_texts(tmp_path: Path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "ab"}, {"text": "c"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "a"}, {"text": "bc"}])
    assert load(a).content_sha256 != load(b).content_sha256


def test_describe(tmp_path: Path):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_records(5) + [{"question": "", "answer": ""}])
    source = load(f"{path}@math", max_candidates=3)
    described = source.describe()
    assert described["spec"] == f"{path}@math"
    assert described["name"] == "qa"
    assert described["kind"] == "file"
    assert described["location"] == str(path)
    assert described["capability"] == "math"
    assert described["fields"] == ["question", "answer"]
    assert described["candidates"] == 3
    assert described["records_seen"] == 6
    assert described["empty_skipped"] == 1
    assert described["content_sha256"] == source.content_sha256
    json.dumps(described)  # a manifest entry must be JSON-serialisable


# --- render_value / record_text -----------------------------------------------------------------------


def test_render_multiple_choice_dict():
    assert render_value({"text": ["red", "blue", "green"], "label": ["A", "B", "C"]}) == "A. red\nB. blue\nC. green"


@pytest.mark.parametrize("value, described", [
    ({"text": ["x", "y"], "label": ["A"]}, "an object with keys text, label"),
    ({"a": "1", "b": 2}, "an object with keys a, b"),
    (["one", 3], "a list of numbers"),
    ([{"a": 1}], "a list of objects"),
    ([["x"]], "a list of lists"),
])
def test_render_refuses_objects_and_odd_lists_naming_the_field(value, described):
    """An object or a list of anything but strings is never rendered as a repr (`{'a': '1'}`) or key lines."""
    with pytest.raises(FieldValueError) as err:
        render_value(value, "body")
    assert str(err.value).startswith(f"field 'body' holds {described}, not text: a text field takes text, "
                                     "a list of strings or a conversation")


def test_render_object_error_suggests_the_dotted_path_of_its_longest_text():
    with pytest.raises(FieldValueError) as err:
        render_value({"lang": "en", "body": "A long body text.", "n": 3}, "meta")
    assert str(err.value) == ("field 'meta' holds an object with keys lang, body, n, not text: a text field "
                              "takes text, a list of strings or a conversation; name the text inside with a "
                              "dotted path, e.g. meta.body")


def test_render_list_of_strings_as_paragraphs():
    assert render_value(["one", " two ", "", None]) == "one\n\ntwo"


def test_render_multiple_choice_list_line_by_line():
    assert render_value(["one", " two ", "", None, 3], "choices") == "one\ntwo\n3"
    assert render_value(["a", "b"], "endings") == "a\nb"
    assert render_value([{"label": "A", "text": "red"}, {"label": "B", "text": "blue"}], "choices") == \
        "A. red\nB. blue"


def test_render_empty_values():
    assert render_value(["", "", ""]) == ""
    assert render_value([]) == ""
    assert render_value(None) == ""
    assert render_value("   \n") == ""


def test_render_scalars():
    assert render_value("  padded  ") == "padded"
    assert render_value(42) == "42"
    assert render_value(1.5) == "1.5"


def test_record_text_joins_non_empty_parts():
    record = {"question": "Q?", "context": "", "choices": ["", ""], "answer": "A", "none": None}
    assert record_text(record, ("question", "context", "choices", "answer", "none")) == "Q?\n\nA"
    assert record_text(record, ("context", "choices", "none")) == ""
    assert record_text({"a": "x", "b": "y"}, ("b", "a")) == "y\n\nx"


# --- embedded and hub sources -------------------------------------------------------------------------


def test_load_embedded_math():
    source = load_source(parse_source("embedded-math"), max_candidates=25, seed=0)
    assert len(source.texts) == 25
    assert source.capability == "math"
    assert source.fields == ("text",)
    assert all(text.strip() for text in source.texts)
    assert source.spec.kind == "embedded"


def test_hub_code_path_on_local_folder(tmp_path: Path, monkeypatch, http_calls):
    import datasets

    folder = tmp_path / "hubcopy"
    write_jsonl(folder / "train.jsonl", [{"text": f"record {i}"} for i in range(50)])
    load_calls: list[tuple[tuple, dict]] = []
    shuffle_calls: list[dict] = []
    real_load_dataset = datasets.load_dataset
    real_shuffle = datasets.IterableDataset.shuffle

    def spy_load_dataset(*args, **kwargs):
        load_calls.append((args, kwargs))
        return real_load_dataset(*args, **kwargs)

    def spy_shuffle(self, *args, **kwargs):
        shuffle_calls.append({"args": args, **kwargs})
        return real_shuffle(self, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy_load_dataset)
    monkeypatch.setattr(datasets.IterableDataset, "shuffle", spy_shuffle)

    def hub_load(seed: int):
        spec = SourceSpec(kind="hub", location=str(folder), name="hubcopy", spec="hubcopy", capability=None,
                          fields=None, split="train")
        return load_source(spec, max_candidates=7, seed=seed)

    first = hub_load(11)
    assert load_calls == [((str(folder), None), {"split": "train", "streaming": True})]
    assert shuffle_calls == [{"args": (), "seed": 11, "buffer_size": HUB_SHUFFLE_BUFFER}]
    assert HUB_SHUFFLE_BUFFER == 10_000
    assert len(first.texts) == 7 and len(set(first.texts)) == 7
    assert set(first.texts) <= {f"record {i}" for i in range(50)}
    assert (first.capability, first.fields) == ("general", ("text",))
    assert first.records_seen == 7
    assert first.texts == hub_load(11).texts
    assert first.texts != hub_load(12).texts


def test_unreachable_hub_id_offline_raises(monkeypatch, http_calls):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = parse_source("nonexistent-user-xyz/nonexistent-dataset")
    with pytest.raises(ColaError, match="local file path") as err:
        load_source(spec, max_candidates=5, seed=0)
    assert "nonexistent-user-xyz/nonexistent-dataset" in str(err.value)


@pytest.mark.parametrize("name", ["prose.jsonl", "prose.json", "prose.csv", "prose.txt", "prose.parquet"])
def test_local_file_load_makes_no_network_call(tmp_path: Path, monkeypatch, http_calls, name):
    """datasets.load_dataset() sends a HEAD request to count a 'download' even for a local json file unless
    HF_UPDATE_DOWNLOAD_COUNTS is off; local files are read without datasets, so with the flag on and the hub
    reachable in principle, no call is made."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    path = write_table(tmp_path / name, [{"text": t} for t in TEXTS])
    source = load(path)
    assert source.texts == tuple(TEXTS)
    assert http_calls == []


# --- real data (the shared data folder) ---------------------------------------------------------------


@needs_shared_data
@pytest.mark.parametrize("relative, capability, fields, records, marker", [
    ("gsm8k/train.jsonl", "math", ("question", "answer"), 7473, "####"),
    ("humaneval/HumanEval.jsonl.gz", "code", ("prompt", "canonical_solution"), 164, "def "),
    ("commonsense_llm_adapters/arc_easy_train.parsed.jsonl", "commonsense", ("question", "choices"), 2251, "\n\n"),
])
def test_real_shared_data(relative, capability, fields, records, marker):
    source = load(SHARED_DATA / relative, max_candidates=10, seed=0)
    assert (source.capability, source.fields, source.records_seen) == (capability, fields, records)
    assert len(source.texts) == 10
    assert all(marker in text for text in source.texts)



# --- structured values in text fields (issue 17) ------------------------------------------------------------

CHAT = [{"id": 0, "messages": [{"role": "system", "content": "You are terse."},
                               {"role": "user", "content": "What is 2+3?"},
                               {"role": "assistant", "content": "5."}]},
        {"id": 1, "messages": [{"role": "user", "content": "Name a colour."},
                               {"role": "assistant", "content": " Blue. "}]}]
CHAT_TEXTS = ("system: You are terse.\nuser: What is 2+3?\nassistant: 5.", "user: Name a colour.\nassistant: Blue.")
NESTED = [{"id": 0, "meta": {"lang": "en", "body": "The river ran past the mill."}},
          {"id": 1, "meta": {"lang": "fr", "body": "La riviere passait le moulin."}}]


@pytest.mark.parametrize("suffix", ["", "#messages"])
def test_chat_messages_become_conversations_not_reprs(tmp_path: Path, suffix: str):
    """`#messages` used to pack `[{'role': 'system', 'content': ...}]` reprs; without a field the file was refused."""
    path = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    source = load(f"{path}{suffix}")
    assert source.texts == CHAT_TEXTS
    assert (source.fields, source.capability) == (("messages",), "general")


def test_sharegpt_conversations_are_recognised(tmp_path: Path):
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [{"conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"},
        {"from": "gpt", "value": "Hello."}]}])
    source = load(path)
    assert source.fields == ("conversations",)
    assert source.texts == ("system: Be brief.\nuser: Hi?\nassistant: Hello.",)


@pytest.mark.parametrize("turn, problem", [
    ({"role": "bot", "content": "x"}, "turn 2 of field 'messages' has the unknown role 'bot'; valid roles: "
                                      "assistant, gpt, human, system, user"),
    ({"role": "assistant"}, "turn 2 of field 'messages' (assistant) has no 'content'"),
    ({"role": "assistant", "content": None}, "turn 2 of field 'messages' (assistant) has no 'content'"),
    ({"role": "assistant", "content": {"text": "x"}}, "turn 2 of field 'messages' (assistant): 'content' holds an "
                                                      "object with keys text, not text"),
    ({"content": "x"}, "turn 2 of field 'messages' has no 'role' (or ShareGPT 'from'); its keys are: content"),
])
def test_bad_chat_turn_names_the_file_row_and_turn(tmp_path: Path, turn: dict, problem: str):
    path = write_jsonl(tmp_path / "chat.jsonl", [CHAT[1], {"messages": [{"role": "user", "content": "Q"}, turn]}])
    expect_exact_error(path, f"{path}: line 2: {problem}")


def test_chat_content_given_as_text_parts(tmp_path: Path):
    path = write_jsonl(tmp_path / "parts.jsonl", [{"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "text", "text": "a cat."}]},
        {"role": "assistant", "content": "A cat."}]}])
    assert load(path).texts == ("user: Look:\na cat.\nassistant: A cat.",)


def test_dotted_path_reads_a_nested_field(tmp_path: Path):
    """`#meta.body` used to be refused with "no field 'meta.body'"."""
    path = write_jsonl(tmp_path / "nested.jsonl", NESTED)
    source = load(f"{path}#meta.body")
    assert source.texts == ("The river ran past the mill.", "La riviere passait le moulin.")
    assert source.fields == ("meta.body",)
    assert source.describe()["fields"] == ["meta.body"]


def test_column_named_with_a_dot_wins_over_the_path(tmp_path: Path):
    path = write_jsonl(tmp_path / "dotted.jsonl", [{"meta.body": "the column", "meta": {"body": "the path"}}])
    assert load(f"{path}#meta.body").texts == ("the column",)


def test_object_in_a_text_field_is_an_error_naming_field_and_row(tmp_path: Path):
    """`#meta` used to pack `{'lang': 'en', 'body': ...}` reprs into the calibration set."""
    path = write_jsonl(tmp_path / "nested.jsonl", NESTED)
    expect_exact_error(f"{path}#meta", f"{path}: line 1: field 'meta' holds an object with keys lang, body, not "
                       "text: a text field takes text, a list of strings or a conversation; name the text inside "
                       "with a dotted path, e.g. meta.body")


@pytest.mark.parametrize("field, problem", [
    ("meta.bdy", "no field 'meta.bdy': the fields of 'meta' are: lang, body"),
    ("mta.body", "no field 'mta.body'; its fields are: id, meta"),
    ("meta.body.x", "no field 'meta.body.x': 'meta.body' holds text, not fields"),
])
def test_dotted_path_that_does_not_exist_lists_the_fields_at_that_level(tmp_path: Path, field: str, problem: str):
    path = write_jsonl(tmp_path / "nested.jsonl", NESTED)
    expect_exact_error(f"{path}#{field}", f"{path}#{field}: {problem}")


def test_empty_part_of_a_dotted_path_is_refused(tmp_path: Path):
    path = write_jsonl(tmp_path / "nested.jsonl", NESTED)
    with pytest.raises(ColaError, match=r"empty field name in source spec .*: a dotted path is FIELD.SUBFIELD"):
        parse_source(f"{path}#meta..body")


def test_list_of_strings_is_joined_as_paragraphs(tmp_path: Path):
    path = write_jsonl(tmp_path / "paras.jsonl", [{"text": ["First paragraph.", " Second one. ", None, ""]}])
    assert load(path).texts == ("First paragraph.\n\nSecond one.",)


@pytest.mark.parametrize("value, shown", [(7, "the number 7"), (True, "the boolean true"), (2.5, "the number 2.5")])
def test_text_field_of_numbers_is_an_error(tmp_path: Path, value, shown: str):
    """A JSON-lines file whose text values are integers used to end in 'pool of 0 candidates after Stage 2'."""
    path = write_jsonl(tmp_path / "numbers.jsonl", [{"text": value}, {"text": "words"}])
    expect_exact_error(path, f"{path}: line 1: field 'text' holds {shown}, not text")


def test_number_beside_text_is_rendered(tmp_path: Path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "What is 6 x 7?", "answer": 42}])
    assert load(path).texts == ("What is 6 x 7?\n\n42",)


def test_rows_of_mixed_schemas_name_the_first_odd_row(tmp_path: Path):
    """Rows of different schemas used to end in 'num_samples 4 is larger than the pool of 0 candidates'."""
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"text": "a"}, {"text": "b"}, {"body": "c", "id": 3}])
    expect_exact_error(path, f"{path}: line 3: the record has none of the fields text (its fields: body, id); its "
                       "rows do not share one schema")


def test_record_missing_one_of_several_fields_is_read(tmp_path: Path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q1", "answer": "A1"}, {"question": "Q2"}])
    assert load(path).texts == ("Q1\n\nA1", "Q2")


def test_rows_are_kept_aligned_with_texts(tmp_path: Path):
    path = tmp_path / "gappy.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": ""}\n{"text": "b"}\n', encoding="utf-8")
    source = load(path)
    assert (source.texts, source.rows) == (("a", "b"), ("line 1", "line 4"))


# --- one huge record ----------------------------------------------------------------------------------------


def test_huge_record_is_cut_to_the_documented_bound(tmp_path: Path, caplog):
    """A 16.8 MB record made half a million windows at sequence length 32 and ran past the audit's limit;
    each text is now cut at MAX_TEXT_CHARS, at a sentence end, and the cut is logged and counted."""
    sentence = "The river ran past the old mill and on into town. "
    huge = sentence * (3_000_000 // len(sentence))  # 3 MB on one line
    path = write_jsonl(tmp_path / "huge.jsonl", [{"text": "A small record."}, {"text": huge, "id": 1}])
    with caplog.at_level(logging.WARNING, logger="cola.data.sources"):
        source = load(path)
    cut = source.texts[1]
    assert source.texts[0] == "A small record."
    assert MAX_TEXT_CHARS - len(sentence) < len(cut) <= MAX_TEXT_CHARS
    assert cut == huge[:len(cut)].strip() and cut.endswith("into town.")
    assert source.records[1] == {"text": huge[:len(source.records[1]["text"])], "id": 1}
    assert len(source.records[1]["text"]) <= MAX_TEXT_CHARS
    assert (source.texts_cut, source.describe()["texts_cut"]) == (1, 1)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: line 2 holds a text longer than {MAX_TEXT_CHARS} characters; it is cut there"]


def test_bound_strings_reaches_into_conversations():
    turns = [{"role": "user", "content": "x" * 30}, {"role": "assistant", "content": "short"}]
    bounded, cut = bound_strings({"messages": turns}, limit=10)
    assert cut == 1
    assert bounded == {"messages": [{"role": "user", "content": "x" * 10}, {"role": "assistant", "content": "short"}]}
    assert turns[0]["content"] == "x" * 30  # the input is not changed


# --- naming files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["we@ird.jsonl", "a#b.jsonl", "x@y#z.jsonl"])
def test_existing_path_with_at_or_hash_wins_over_the_spec_syntax(tmp_path: Path, name: str):
    path = write_jsonl(tmp_path / name, [{"text": "kept", "body": "other"}])
    spec = parse_source(str(path))
    assert (spec.kind, spec.location, spec.capability, spec.fields) == ("file", str(path), None, None)
    spec = parse_source(f"{path}@math#body")
    assert (spec.location, spec.capability, spec.fields) == (str(path), "math", ("body",))
    assert load(f"{path}#body").texts == ("other",)


@pytest.mark.parametrize("name", ["user@host.jsonl", "runs#3.jsonl", "a@b#c.csv", "x@y.jsonl@math"])
def test_missing_path_with_at_or_hash_is_named_whole(tmp_path: Path, name: str):
    body = str(tmp_path / name).removesuffix("@math")
    with pytest.raises(ColaError) as err:
        parse_source(str(tmp_path / name))
    assert str(err.value) == f"dataset file not found: {body}"


def test_folder_with_at_or_hash_in_its_name(tmp_path: Path):
    path = write_jsonl(tmp_path / "runs#3@home" / "prose.jsonl", [{"text": "kept"}])
    assert load(path).texts == ("kept",)
    assert parse_source(f"{path}@code").capability == "code"


@pytest.mark.parametrize("first, second, names", [
    ("a/train.jsonl", "b/train.jsonl", ["a/train", "b/train"]),
    ("x/data.jsonl", "y/data.jsonl", ["x/data", "y/data"]),
    ("x/pool.jsonl", "y/pool.jsonl", ["x/pool", "y/pool"]),
    ("one/x/pool.jsonl", "two/x/pool.jsonl", ["one/x/pool", "two/x/pool"]),
    ("x/pool.jsonl", "x/pool.csv", ["pool.jsonl", "pool.csv"]),
    ("x/train.jsonl", "x/train.csv", ["x/train.jsonl", "x/train.csv"]),
])
def test_different_files_of_the_same_name_are_named_apart(tmp_path: Path, first: str, second: str, names):
    """Two different files with one name in different folders were refused as 'the same dataset is named twice'."""
    a = write_table(tmp_path / first, [{"text": "one"}])
    b = write_table(tmp_path / second, [{"text": "two"}])
    assert [s.name for s in parse_sources([str(a), str(b)])] == names
    assert [s.name for s in parse_sources([str(a), "gsm8k", str(b)])] == [names[0], "gsm8k", names[1]]


def test_the_same_file_named_twice_is_refused(tmp_path: Path):
    path = write_jsonl(tmp_path / "sub" / "pool.jsonl", [{"text": "one"}])
    other_spelling = tmp_path / "sub" / ".." / "sub" / "pool.jsonl"
    with pytest.raises(ColaError) as err:
        parse_sources([str(path), f"{other_spelling}@math"])
    assert str(err.value) == "the same dataset is named twice: pool"


def test_file_named_like_a_catalog_dataset_is_named_by_its_folder(tmp_path: Path):
    path = write_jsonl(tmp_path / "mine" / "gsm8k.jsonl", qa_records(2))
    assert [s.name for s in parse_sources(["gsm8k", str(path)])] == ["gsm8k", "mine/gsm8k"]


def _algorithm_r(items: list, k: int, rng: random.Random) -> list:
    """Algorithm R over the items themselves, as the reference the position-only reservoir must reproduce."""
    reservoir: list = []
    for seen, item in enumerate(items, start=1):
        if len(reservoir) < k:
            reservoir.append((seen, item))
        elif (slot := rng.randrange(seen)) < k:
            reservoir[slot] = (seen, item)
    return [item for _, item in sorted(reservoir)]


@pytest.mark.parametrize("count, k", [(0, 5), (3, 5), (5, 5), (200, 7), (1000, 64)])
def test_reservoir_positions_draw_what_a_reservoir_of_the_items_draws(count: int, k: int):
    for seed in range(5):
        positions, seen = reservoir_positions(iter(range(count)), k, random.Random(seed))
        assert seen == count
        assert positions.tolist() == _algorithm_r(list(range(count)), k, random.Random(seed))


def test_a_file_source_is_sampled_in_two_passes_onto_disk(tmp_path: Path):
    """The sample (texts, records, rows) is the one Algorithm R makes of the non-empty records, held on disk;
    empty records are counted once, not once per pass."""
    records = [{"text": f"text number {i}" if i % 7 else ""} for i in range(300)]
    source = load(write_jsonl(tmp_path / "pool.jsonl", records), max_candidates=40, seed=3)
    non_empty = [(r["text"], r, f"line {i + 1}") for i, r in enumerate(records) if r["text"]]
    expected = _algorithm_r(non_empty, 40, random.Random(3))
    assert all(isinstance(column, RowStore) for column in (source.texts, source.records, source.rows))
    assert list(source.texts) == [t for t, _, _ in expected]
    assert list(source.records) == [r for _, r, _ in expected]
    assert list(source.rows) == [w for _, _, w in expected]
    assert (source.records_seen, source.empty_skipped) == (300, 43)
