"""Shared I/O: reading data files (curation's sources, evaluation's task files, cola's own JSON and YAML) and
describing a value in words for error messages (`describe_value`), so every reader says the same.

Each record comes with the values its file holds, strings staying strings.

JSON and JSON lines are read with Python's json module, one line at a time; CSV with the csv module, where
every cell is the text it holds (`true` and `007` stay as written); text files as paragraphs; parquet with
pyarrow, with its real types. No reader infers one type per column, so no column changes how another is read,
and a column cola does not use cannot break reading. Files may be compressed: .gz, .bz2, .xz (.zst with the
zstandard package).

JSON layouts: JSON lines (one object per line), a list of records, or an object: one top-level key holding the
list of records (`{"version": "1.0", "data": [...]}`; `FILE.json#data` names the key when several hold lists),
or an object of records (`{"q1": {...}, "q2": {...}}`, its values read in order).

Every record comes with its position, a `RowNumber` (the line of a JSON lines, CSV or text file; the record's
number in a JSON document or parquet file), so errors name the first offending row. A reader's own errors
become one ColaError line naming the file.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import logging
import lzma
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cola.errors import ColaError, first_line

log = logging.getLogger(__name__)

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
_CSV_FIELD_LIMIT = 2**31 - 1  # a cell may hold a whole document; the csv module's default stops at 131,072 chars
Record = dict[str, Any]
_SCALARS = (bool, int, float)


def describe_value(value: Any) -> str:
    """What a value is, in words, for errors: `an object with keys lang, body`, `the number 3`, `text`, never a
    repr."""
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


class RowNumber(int):
    """A record's position in its file, counted from 1: an int that also knows its unit ("line", "record")."""

    unit: str

    def __new__(cls, number: int, unit: str = "line") -> RowNumber:
        row = super().__new__(cls, number)
        row.unit = unit
        return row

    def describe(self) -> str:
        """`line 7`, `record 3`: how error messages name the row."""
        return f"{self.unit} {int(self)}"


@dataclass
class FileRecords:
    """A file's records as a stream of (position, record), and for a JSON document the top-level key they
    were read from."""

    rows: Iterator[tuple[RowNumber, Record]]
    records_key: str | None = None


def file_format(path: Path) -> str:
    """The format of a data file from its name ("json", "csv", "text", "parquet"); unknown types raise."""
    compressed = path.suffix in COMPRESSIONS
    inner = Path(path.stem).suffix if compressed else path.suffix
    kind = FILE_FORMATS.get(inner)
    if kind is None:
        raise ColaError(f"unsupported file type for {path}: use one of {', '.join(sorted(FILE_FORMATS))} "
                        f"(optionally compressed: {', '.join(COMPRESSIONS)})")
    if kind == "parquet" and compressed:
        raise ColaError(f"{path}: a parquet file is compressed inside; give the .parquet file itself")
    return kind


def open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed by its suffix."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    if path.suffix == ".xz":
        return lzma.open(path, "rb")
    if path.suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            raise ColaError(f"{path}: reading .zst files needs zstandard: pip install zstandard") from None
        return zstandard.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115 - closed by the caller's `with`


def open_text(path: Path, newline: str | None = None) -> IO[str]:
    """The file as UTF-8 text (a leading byte-order mark dropped; undecodable bytes become U+FFFD)."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", errors="replace", newline=newline)


def read_text_file(path: Path, *, what: str = "", remedy: str = "") -> str:
    """A whole text file (decompressed by its suffix), strictly UTF-8, a byte-order mark dropped.

    For cola's own and the user's small files (a manifest, a report, a YAML config, a perplexity text). A
    missing, unreadable or non-UTF-8 file raises one ColaError naming `what` (e.g. "--dense") and the file,
    ending with `remedy` when given.
    """
    label, tail = (f"{what} {path}" if what else str(path)), (f"; {remedy}" if remedy else "")
    try:
        with open_binary(path) as fh:
            data = fh.read()
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise ColaError(f"cannot read {label}: {getattr(exc, 'strerror', None) or exc}{tail}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ColaError(f"{label} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}"
                        f"{tail or '; convert it first (e.g. iconv -f latin1 -t utf-8)'}") from None


def read_mapping(path: Path, *, what: str = "", remedy: str = "", expected: str = "an object",
                 syntax: str = "JSON") -> dict[str, Any]:
    """The object (mapping) a JSON or YAML (`syntax`) file holds: `read_text_file`'s errors, plus one line for a
    file that does not parse or holds another value than a mapping (`expected` says what it should be)."""
    text = read_text_file(path, what=what, remedy=remedy)
    label, tail = (f"{what} {path}" if what else str(path)), (f"; {remedy}" if remedy else "")
    if syntax == "YAML":
        import yaml

        parse, parse_error = yaml.safe_load, yaml.YAMLError
    else:
        parse, parse_error = json.loads, json.JSONDecodeError
    try:
        value = parse(text)
    except parse_error as exc:
        where = (f"{exc.msg} at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError)
                 else " ".join(str(exc).split()))
        raise ColaError(f"{label} is not valid {syntax} ({where}){tail}") from None
    if not isinstance(value, dict):
        kind = f"a JSON {type(value).__name__}" if syntax == "JSON" else f"a YAML {type(value).__name__}"
        raise ColaError(f"{label} holds {kind}, not {expected}{tail}")
    return value


@contextmanager
def reader_errors(path: Path, kind: str) -> Iterator[None]:
    """Turn a reader's own exceptions (decompression, I/O, parsing) into one ColaError naming the file."""
    try:
        yield
    except ColaError:
        raise
    except (OSError, EOFError, ValueError, csv.Error, lzma.LZMAError, zlib.error) as exc:
        message = first_line(exc)
        raise ColaError(f"{path}: cannot read it as {kind}: {message}") from exc


def read_records(path: Path, *, records_key: str | None = None) -> FileRecords:
    """The records of a data file, streamed. `records_key` names the top-level key of a JSON document whose
    list holds the records (used only when the document is such an object); others ignore it."""
    kind = file_format(path)
    if path.stat().st_size == 0:
        return FileRecords(rows=iter(()))  # an empty file is an empty source; the caller says so
    if kind == "json":
        with reader_errors(path, "JSON"):
            return _json_records(path, records_key)
    rows = {"csv": _csv_rows, "text": _text_paragraphs, "parquet": _parquet_rows}[kind](path)
    return FileRecords(rows=_guarded(path, kind, rows))


def read_json_records(path: Path, records_key: str | None = None) -> Iterator[tuple[RowNumber, Record]]:
    """(position, record) of a JSON lines or JSON file, in any layout `read_records` knows; a malformed line
    or a non-object record is an error naming the file and the line or record."""
    if path.stat().st_size == 0:
        return iter(())
    with reader_errors(path, "JSON"):
        return _json_records(path, records_key).rows


def _guarded(path: Path, kind: str, rows: Iterator[tuple[RowNumber, Record]]) -> Iterator[tuple[RowNumber, Record]]:
    with reader_errors(path, kind):
        yield from rows


# --- JSON ---------------------------------------------------------------------------------------------------


def _json_records(path: Path, records_key: str | None) -> FileRecords:
    """Detect the layout from the first non-blank line: `[` is a document; `{` is JSON lines when that line is
    a whole object (and, for a .json file, not the file's only line), else a pretty-printed document."""
    is_json_file = (Path(path.stem).suffix if path.suffix in COMPRESSIONS else path.suffix) == ".json"
    with open_text(path) as fh:
        lines = ((n, line) for n, line in enumerate(fh, start=1) if line.strip())
        first = next(lines, None)
        if first is None:
            return FileRecords(rows=iter(()))
        lineno, line = first
        head = line.lstrip()[:1]
        line_error: json.JSONDecodeError | None = None
        if head == "{":
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                line_error = exc
            else:
                if not is_json_file or next(lines, None) is not None:
                    return FileRecords(rows=_guarded(path, "JSON lines", _json_lines(path)))
        elif head != "[":
            return FileRecords(rows=_guarded(path, "JSON lines", _json_lines(path)))
    with open_text(path) as fh:
        try:
            document = json.load(fh)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":  # one value, then more: lines of JSON values, read (and judged) one by one
                return FileRecords(rows=_guarded(path, "JSON lines", _json_lines(path)))
            if line_error is not None and not is_json_file:  # a .jsonl file: its first line is what is broken
                raise ColaError(f"{path}: malformed JSON on line {lineno}: {line_error.msg}") from None
            raise ColaError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from None
    key, records = _document_records(path, document, records_key)
    return FileRecords(rows=_numbered(path, records, key), records_key=key)


def _json_lines(path: Path) -> Iterator[tuple[RowNumber, Record]]:
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ColaError(f"{path}: malformed JSON on line {lineno}: {exc.msg}") from None
            if not isinstance(item, dict):
                raise ColaError(f"{path}: line {lineno} is not a JSON object (it holds {describe_value(item)})")
            yield RowNumber(lineno), item


def _document_records(path: Path, document: Any, records_key: str | None) -> tuple[str | None, list[Any]]:
    """(the top-level key read, the records) of a whole JSON document."""
    if isinstance(document, list):
        return None, document
    if not isinstance(document, dict):
        raise ColaError(f"{path}: the JSON document is {describe_value(document)}, not records: write a list of "
                        "objects, or one object per line (JSON lines)")
    if records_key is not None and isinstance(document.get(records_key), list):
        return records_key, document[records_key]
    listed = [k for k, v in document.items() if isinstance(v, list) and v and isinstance(v[0], Mapping)]
    if len(listed) == 1:
        log.info("%s: reading the %d records under its top-level key %r", path, len(document[listed[0]]), listed[0])
        return listed[0], document[listed[0]]
    if len(listed) > 1:
        raise ColaError(f"{path}: several top-level keys hold lists of records ({', '.join(listed)}): name one "
                        f"as {path}#{listed[0]}")
    if document and all(isinstance(v, Mapping) for v in document.values()):
        log.info("%s: a JSON object of %d records: reading its values", path, len(document))
        return None, list(document.values())
    empty = [k for k, v in document.items() if isinstance(v, list) and not v]
    if len(empty) == 1:
        return empty[0], []
    keys = "; ".join(f"{k}: {describe_value(v)}" for k, v in document.items()) or "none"
    raise ColaError(f"{path}: the top-level JSON object holds no list of records (its keys: {keys}); cola reads "
                    "a list of records, an object whose one key holds that list, an object of records, or JSON lines")


def _numbered(path: Path, records: list[Any], key: str | None) -> Iterator[tuple[RowNumber, Record]]:
    where = f" under {key!r}" if key else ""
    for number, item in enumerate(records, start=1):
        if not isinstance(item, dict):
            raise ColaError(f"{path}: record {number}{where} is not a JSON object (it holds {describe_value(item)})")
        yield RowNumber(number, "record"), item


# --- CSV, text, parquet -------------------------------------------------------------------------------------


def _csv_rows(path: Path) -> Iterator[tuple[RowNumber, Record]]:
    """Rows of a CSV file with a header, each cell the text it holds (an empty cell is ""; a missing one None)."""
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    with open_text(path, newline="") as fh:
        reader = csv.reader(fh, strict=True)
        start = 1
        try:
            header = next(reader, None)
            if header is None:
                return
            repeated = sorted({c for c in header if header.count(c) > 1})
            if repeated:
                raise ColaError(f"{path}: the CSV header names {', '.join(map(repr, repeated))} more than once")
            start = reader.line_num + 1
            for row in reader:
                if row:  # a blank line is no row
                    if len(row) > len(header):
                        raise ColaError(f"{path}: line {start} has {len(row)} values for the {len(header)} "
                                        "columns of the header")
                    yield RowNumber(start), {c: row[i] if i < len(row) else None for i, c in enumerate(header)}
                start = reader.line_num + 1
        except csv.Error as exc:
            hint = ": a quote opened there is never closed" if "end of data" in str(exc) else ""
            raise ColaError(f"{path}: malformed CSV at line {start} ({exc}){hint}") from None


def _text_paragraphs(path: Path) -> Iterator[tuple[RowNumber, Record]]:
    """Paragraphs of a text file (runs of non-blank lines) as `{"text": ...}` records, numbered by first line."""
    with open_text(path) as fh:
        lines: list[str] = []
        start = 0
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                start = start if lines else lineno
                lines.append(line)
            elif lines:
                yield RowNumber(start), {"text": "".join(lines).rstrip("\n")}
                lines = []
        if lines:
            yield RowNumber(start), {"text": "".join(lines).rstrip("\n")}


def _parquet_rows(path: Path) -> Iterator[tuple[RowNumber, Record]]:
    """Rows of a parquet file, a row group batch at a time, with their real types."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                number += 1
                yield RowNumber(number, "row"), record
    except pyarrow.ArrowException as exc:
        raise ColaError(f"{path}: cannot read it as parquet: {first_line(exc)}") from None
