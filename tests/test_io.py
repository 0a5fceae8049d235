"""Tests for reading users' data files (cola.io): every value as the file holds it, every layout of
JSON, and the readers' own errors as one line naming the file and the row."""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
from pathlib import Path

import pytest

from cola.io import RowNumber, file_format, read_json_records, read_records
from cola.data.sources import load_source, parse_source
from cola.errors import ColaError


def load(spec: str | Path, max_candidates: int = 1000, seed: int = 0):
    return load_source(parse_source(str(spec)), max_candidates=max_candidates, seed=seed)


def load_error(spec: str | Path) -> str:
    with pytest.raises(ColaError) as err:
        load(spec)
    return str(err.value)


def rows(path: Path, records_key: str | None = None) -> list[tuple[str, dict]]:
    return [(row.describe(), record) for row, record in read_records(path, records_key=records_key).rows]


# --- values stay what the file holds ------------------------------------------------------------------------


def test_jsonl_text_column_of_mixed_types_keeps_every_string(tmp_path: Path):
    """A list value in one row made datasets' json builder re-type the whole column: JSON text came back as a
    Python repr, "true" as True, and "null" vanished as an empty row."""
    path = tmp_path / "mixed.jsonl"
    lines = ['{"text": "{\\"name\\": \\"demo-package\\", \\"private\\": true}"}', '{"text": "true"}',
             '{"text": "null"}', '{"text": "007"}', '{"text": ["first paragraph", "second paragraph"]}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = load(path)
    assert source.texts == ('{"name": "demo-package", "private": true}', "true", "null", "007",
                            "first paragraph\n\nsecond paragraph")
    assert (source.records_seen, source.empty_skipped) == (5, 0)


def test_a_column_cola_does_not_use_cannot_affect_reading(tmp_path: Path):
    path = tmp_path / "meta.jsonl"
    records = [{"text": "one", "meta": 1}, {"text": "two", "meta": {"a": [1, "x"]}}, {"text": "three", "meta": "s"},
               {"text": "four", "meta": None}, {"text": "five", "meta": [True, 2.5]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    source = load(path)
    assert source.texts == ("one", "two", "three", "four", "five")
    assert source.records == tuple(records)


def test_csv_cells_stay_the_text_they_hold(tmp_path: Path):
    path = tmp_path / "cells.csv"
    path.write_text('text,id\ntrue,1\n007,2\nnull,3\n1e3,4\n,5\n"two\nlines",6\n', encoding="utf-8")
    source = load(path)
    assert source.texts == ("true", "007", "null", "1e3", "two\nlines")
    assert source.empty_skipped == 1
    assert source.records[1] == {"text": "007", "id": "2"}
    assert source.rows == ("line 2", "line 3", "line 4", "line 5", "line 7")


def test_csv_row_with_fewer_values_leaves_the_rest_empty(tmp_path: Path):
    path = tmp_path / "short.csv"
    path.write_text("question,answer\nWhat is 2+2?,4\nAnything?\n", encoding="utf-8")
    assert load(path).records == ({"question": "What is 2+2?", "answer": "4"}, {"question": "Anything?",
                                                                                 "answer": None})


def test_parquet_keeps_its_types(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "typed.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "What is 6 x 7?", "answer": 42, "tags": ["a", "b"]}]), path)
    source = load(f"{path}#question+answer")
    assert source.records == ({"question": "What is 6 x 7?", "answer": 42, "tags": ["a", "b"]},)
    assert source.texts == ("What is 6 x 7?\n\n42",)
    assert source.rows == ("row 1",)


def test_parquet_number_in_the_text_field_is_an_error(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [7, 8, 9]}), path)
    assert load_error(path) == f"{path}: row 1: field 'text' holds the number 7, not text"


def test_byte_order_mark_is_dropped(tmp_path: Path):
    jsonl, csv_path = tmp_path / "bom.jsonl", tmp_path / "bom.csv"
    jsonl.write_bytes('\ufeff{"text": "first"}\n'.encode())
    csv_path.write_bytes("\ufefftext\nfirst\n".encode())
    assert load(jsonl).texts == load(csv_path).texts == ("first",)


@pytest.mark.parametrize("name, opener", [("prose.jsonl.gz", gzip.open), ("prose.jsonl.bz2", bz2.open),
                                          ("prose.jsonl.xz", lzma.open), ("prose.csv.gz", gzip.open),
                                          ("prose.txt.xz", lzma.open)])
def test_compressed_files(tmp_path: Path, name: str, opener):
    path = tmp_path / name
    body = {"jsonl": '{"text": "alpha"}\n{"text": "beta"}\n', "csv": "text\nalpha\nbeta\n",
            "txt": "alpha\n\nbeta\n"}[name.split(".")[1]]
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.write(body)
    source = load(path)
    assert source.texts == ("alpha", "beta")
    assert source.spec.name == "prose"


def test_zst_without_zstandard_names_the_package(tmp_path: Path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_zstandard(name, *args, **kwargs):
        if name == "zstandard":
            raise ImportError("no zstandard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_zstandard)
    path = tmp_path / "prose.jsonl.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd")
    assert load_error(path) == f"{path}: reading .zst files needs zstandard: pip install zstandard"


def test_compressed_parquet_is_refused(tmp_path: Path):
    path = tmp_path / "t.parquet.gz"
    path.write_bytes(gzip.compress(b"x"))
    with pytest.raises(ColaError) as err:
        file_format(path)
    assert str(err.value) == f"{path}: a parquet file is compressed inside; give the .parquet file itself"


def test_text_paragraphs_split_on_blank_lines_and_are_numbered_by_first_line(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_text("First line\nsecond line\n  \n\nNext paragraph.\n\n\n\nLast.", encoding="utf-8")
    assert rows(path) == [("line 1", {"text": "First line\nsecond line"}), ("line 5", {"text": "Next paragraph."}),
                          ("line 9", {"text": "Last."})]


def test_row_number_is_an_int_that_names_its_unit():
    row = RowNumber(7, "record")
    assert row == 7 and f"{row}" == "7" and row.describe() == "record 7"
    assert RowNumber(3).describe() == "line 3"


# --- JSON layouts -------------------------------------------------------------------------------------------

SQUAD_LIKE = {"version": "1.0", "data": [{"title": "Rivers", "text": "The Nile is long."},
                                         {"title": "Mills", "text": "Mills grind grain."}]}


def test_json_object_with_one_list_of_records_is_read_and_said(tmp_path: Path, caplog):
    """A valid pretty-printed document was reported as 'malformed JSON on line 1'."""
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(SQUAD_LIKE, indent=2), encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="cola.io"):
        source = load(path)
    assert source.texts == ("The Nile is long.", "Mills grind grain.")
    assert source.records_key == "data" and source.describe()["records_key"] == "data"
    assert source.rows == ("record 1", "record 2")
    assert [r.getMessage() for r in caplog.records if r.name == "cola.io"] == [
        f"{path}: reading the 2 records under its top-level key 'data'"]


def test_json_records_key_named_explicitly(tmp_path: Path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": [{"text": "a train text"}], "test": [{"text": "a test text"}]}),
                    encoding="utf-8")
    assert load_error(path) == (f"{path}: several top-level keys hold lists of records (train, test): name one "
                                f"as {path}#train")
    assert load(f"{path}#test").texts == ("a test text",)
    source = load(f"{path}#train")
    assert (source.texts, source.fields, source.records_key) == (("a train text",), ("text",), "train")


def test_json_records_key_then_fields(tmp_path: Path):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(SQUAD_LIKE), encoding="utf-8")
    source = load(f"{path}#data+title+text")
    assert source.fields == ("title", "text")
    assert source.texts == ("Rivers\n\nThe Nile is long.", "Mills\n\nMills grind grain.")


def test_json_object_of_records_reads_its_values(tmp_path: Path):
    path = tmp_path / "keyed.json"
    path.write_text(json.dumps({"q1": {"question": "1+1?", "answer": "2"}, "q2": {"question": "2+2?", "answer": "4"}},
                               indent=1), encoding="utf-8")
    source = load(path)
    assert source.texts == ("1+1?\n\n2", "2+2?\n\n4")
    assert source.capability == "math"


@pytest.mark.parametrize("document, keys", [
    ({"text": "one record only"}, "text: text"),
    ({"version": "1.0", "count": 3, "tags": ["a", "b"]}, "version: text; count: the number 3; tags: a list of strings"),
])
def test_json_object_without_records_lists_its_keys(tmp_path: Path, document: dict, keys: str):
    """A .json holding one object used to end in 'num_samples 4 is larger than the pool of 0 candidates'."""
    path = tmp_path / "one.json"
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    assert load_error(path) == (f"{path}: the top-level JSON object holds no list of records (its keys: {keys}); "
                                "cola reads a list of records, an object whose one key holds that list, an object "
                                "of records, or JSON lines")


@pytest.mark.parametrize("name, content, texts", [
    pytest.param("pretty.jsonl", json.dumps(SQUAD_LIKE, indent=2), ("The Nile is long.", "Mills grind grain."),
                 id="pretty-printed-object-in-a-jsonl-file"),
    pytest.param("one.jsonl", '{"text": "just one"}\n', ("just one",), id="single-line-jsonl-is-one-record"),
    pytest.param("lines.json", '{"text": "a"}\n{"text": "b"}\n', ("a", "b"), id="json-lines-in-a-json-file"),
])
def test_valid_json_is_read(tmp_path: Path, name: str, content: str, texts: tuple[str, ...]):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert load(path).texts == texts


@pytest.mark.parametrize("name, content, problem", [
    pytest.param("number.json", "\n  42\n", "line 2 is not a JSON object (it holds the number 42)",
                 id="document-of-a-number"),
    pytest.param("broken.json", '{\n  "data": [\n    {"text": "a"},\n    {"text": "b",}\n  ]\n}\n',
                 "malformed JSON at line 4: Expecting property name enclosed in double quotes",
                 id="broken-pretty-printed-document"),
    pytest.param("broken.jsonl", '{"text": "a"\n{"text": "b"}\n', "malformed JSON on line 1: Expecting ',' delimiter",
                 id="broken-first-line-of-a-jsonl-file"),
    pytest.param("arrays.jsonl", '["a", "b"]\n["c"]\n', "line 1 is not a JSON object (it holds a list of strings)",
                 id="lines-of-arrays"),
    pytest.param("two.json", '{\n "text": "a"\n}\n{\n "text": "b"\n}\n',
                 "malformed JSON on line 1: Expecting property name enclosed in double quotes",
                 id="two-pretty-printed-documents"),
    pytest.param("odd.json", json.dumps({"data": [{"text": "a"}, "b"]}),
                 "record 2 under 'data' is not a JSON object (it holds text)", id="non-object-record-under-a-key"),
])
def test_json_errors_name_the_line_or_record(tmp_path: Path, name: str, content: str, problem: str):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert load_error(path) == f"{path}: {problem}"


def test_read_json_records_keeps_int_line_numbers(tmp_path: Path):
    """evaluate's task files read through the same reader and name rows as `path:line`."""
    path = tmp_path / "task.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert [(int(n), r) for n, r in read_json_records(path)] == [(1, {"a": 1}), (3, {"a": 2})]


# --- readers' own errors: one line, naming the file and the row --------------------------------------------


@pytest.mark.parametrize("name, content, problem", [
    pytest.param("quote.csv", b'question,answer\nWhat is 2+2?,4\n"What is 3+3?,6\nWhat is 4+4?,8\n',
                 "malformed CSV at line 3 (unexpected end of data): a quote opened there is never closed",
                 id="csv-unterminated-quote"),
    pytest.param("wide.csv", b"text,id\nfine,1\ntoo,many,values\n",
                 "line 3 has 3 values for the 2 columns of the header", id="csv-too-many-values"),
    pytest.param("twice.csv", b"text,text\na,b\n", "the CSV header names 'text' more than once",
                 id="csv-repeated-column"),
    pytest.param("notes.parquet", b"These are notes, not a parquet file.\n" * 3,
                 "cannot read it as parquet: Parquet magic bytes not found in footer. Either the file is corrupted "
                 "or this is not a parquet file.", id="text-renamed-parquet"),
    pytest.param("prose.jsonl.gz", b'{"text": "a"}\n', "cannot read it as JSON: Not a gzipped file (b'{\"')",
                 id="plain-file-named-gz"),
    pytest.param("cut.jsonl.gz", gzip.compress(b'{"text": "a"}\n' * 50)[:30],
                 "cannot read it as JSON lines: Compressed file ended before the end-of-stream marker was reached",
                 id="truncated-gzip"),
])
def test_reader_errors_are_one_line_naming_the_file(tmp_path: Path, name: str, content: bytes, problem: str):
    """Another library's words (pandas, pyarrow, gzip) used to reach the user without the file's name."""
    path = tmp_path / name
    path.write_bytes(content)
    assert load_error(path) == f"{path}: {problem}"


def test_atomic_writes_get_the_permissions_a_plain_write_gets(tmp_path):
    import os

    from cola.atomic import write_json

    write_json(tmp_path / "r.json", {"a": 1})
    (tmp_path / "plain.json").write_text("{}")
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777
    assert os.access(tmp_path / "r.json", os.R_OK)
