"""Candidate pools: local files, Hugging Face hub datasets and the embedded offline pool.

A source spec is `SOURCE[@CAPABILITY][#FIELD+FIELD...]`, where SOURCE is a catalog name (`gsm8k`), a
path (`data/train.jsonl`), a hub id (`user/dataset`) or an embedded pool (`embedded`, `embedded-math`).
`@math` sets the capability, `#question+answer` names the fields whose values make up the text.

A source's capability is a hint that wins when given: its `@label`, else the catalog's (by name, or by a
local file's columns), else the embedded part's. A source with none of these is scored by Stage 1 against
every capability's reference set and takes the one it matches best ("coverage"); with Stage 1 off it is
"general" by default. `capability_origin` records which rule decided (see CAPABILITY_ORIGINS).

Every source is read as a stream and reduced to at most `max_candidates` texts by seeded reservoir
sampling (local files, embedded) or a seeded shuffle buffer (hub streams), so no source is ever held or
tokenized whole.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cola.data.catalog import CATALOG, EMBEDDED_SOURCES, catalog_entry, entry_for_columns
from cola.errors import ColaError

log = logging.getLogger(__name__)

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
_CAPABILITY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
HUB_SHUFFLE_BUFFER = 10_000
DEFAULT_CAPABILITY = "general"
# Where a source's capability came from (the manifest's `capability_origin`).
CAPABILITY_ORIGINS = {
    "label": "given with SOURCE@CAPABILITY",
    "catalog": "the catalog's, by the dataset's name or a local file's columns",
    "embedded": "the embedded pool part's own",
    "coverage": "Stage 1: the capability whose reference set the source's samples match best",
    "default": f"{DEFAULT_CAPABILITY!r}: no label, no catalog schema, and nothing scored it (Stage 1 off, or "
               "Stage 2 left none of its samples)",
}
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class SourceSpec:
    """A parsed source spec: what to read, under which name and capability, from which fields."""

    spec: str                       # as the user wrote it
    name: str                       # the `dataset_name` written into calibration samples
    kind: str                       # "file", "hub" or "embedded"
    location: str                   # path, hub id or embedded part (general, math, code)
    capability: str | None          # None: decided when the columns are known
    fields: tuple[str, ...] | None  # None: decided when the columns are known
    config: str | None = None
    split: str = "train"
    capability_origin: str | None = None  # "label", "catalog" or "embedded" when `capability` is set


@dataclass(frozen=True, kw_only=True)
class Source:
    """A loaded source: its sampled texts in a deterministic order, and how they were made."""

    spec: SourceSpec
    capability: str
    fields: tuple[str, ...]
    texts: tuple[str, ...]          # each record rendered from `fields` (the text Stage 2 starts from)
    records_seen: int
    empty_skipped: int
    records: tuple[dict[str, Any], ...] = ()  # the sampled raw records, aligned with texts, for formatters
    capability_origin: str = "default"  # one of CAPABILITY_ORIGINS

    @property
    def capability_given(self) -> bool:
        """Whether a hint (label, catalog, embedded part) decided the capability, so Stage 1 must not."""
        return self.capability_origin in ("label", "catalog", "embedded")

    @property
    def content_sha256(self) -> str:
        """Hash of the sampled texts, so a manifest pins exactly which pool was used."""
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(hashlib.sha256(text.encode()).digest())
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """The manifest entry for this source."""
        return {"spec": self.spec.spec, "name": self.spec.name, "kind": self.spec.kind,
                "location": self.spec.location, "config": self.spec.config, "split": self.spec.split,
                "capability": self.capability, "capability_origin": self.capability_origin,
                "fields": list(self.fields), "records_seen": self.records_seen,
                "empty_skipped": self.empty_skipped, "candidates": len(self.texts),
                "content_sha256": self.content_sha256}


def _file_builder(path: Path) -> str:
    suffixes = path.suffixes[-2:] if path.suffix in (".gz", ".bz2", ".xz", ".zst") else path.suffixes[-1:]
    builder = FILE_BUILDERS.get(suffixes[0] if suffixes else "")
    if builder is None:
        raise ColaError(f"unsupported file type for {path}: use one of "
                        f"{', '.join(sorted(FILE_BUILDERS))} (optionally .gz)")
    return builder


_GENERIC_STEMS = {"train", "test", "validation", "valid", "val", "dev", "data", "dataset", "all"}


def _file_source_name(path: Path) -> str:
    """A readable dataset name for a file: its stem, prefixed by its folder when the stem is generic."""
    stem = path.name.split(".")[0]
    return f"{path.parent.name}/{stem}" if stem.lower() in _GENERIC_STEMS and path.parent.name else stem


def parse_source(spec: str) -> SourceSpec:
    """Parse `SOURCE[@CAPABILITY][#FIELD+FIELD]` into a SourceSpec; unknown names raise with suggestions."""
    body, has_fields, field_part = spec.partition("#")
    body, has_capability, capability = body.rpartition("@") if "@" in body else (body, "", "")
    fields = tuple(f for f in field_part.split("+") if f) if has_fields else None
    if has_fields and not fields:
        raise ColaError(f"empty field list in source spec {spec!r}: write PATH#field or PATH#field+field")
    if has_capability and not _CAPABILITY_RE.match(capability):
        raise ColaError(f"invalid capability {capability!r} in source spec {spec!r}: use letters, digits, - or _")
    cap = capability or None
    labelled = "label" if cap else None  # the capability origin when a label gives it
    if body in EMBEDDED_SOURCES:
        if body == "embedded":
            raise ColaError("'embedded' is several sources: expand it with parse_sources()")
        part = body.removeprefix("embedded-")
        return SourceSpec(spec=spec, name=body, kind="embedded", location=part, capability=cap or part,
                          fields=fields or ("text",), capability_origin=labelled or "embedded")
    path = Path(body).expanduser()
    if path.exists() or Path(body).suffix in FILE_BUILDERS or body.endswith(".gz"):
        if not path.is_file():
            raise ColaError(f"dataset file not found: {body}")
        _file_builder(path)
        return SourceSpec(spec=spec, name=_file_source_name(path), kind="file", location=str(path),
                          capability=cap, fields=fields, capability_origin=labelled)
    if body in CATALOG:
        entry = CATALOG[body]
        return SourceSpec(spec=spec, name=body, kind="hub", location=entry.hub_id, config=entry.config,
                          split=entry.split, capability=cap or entry.capability, fields=fields or entry.text_fields,
                          capability_origin=labelled or "catalog")
    if "/" in body and not body.startswith((".", "/", "~")) and body.count("/") == 1:
        return SourceSpec(spec=spec, name=body, kind="hub", location=body, capability=cap, fields=fields,
                          capability_origin=labelled)
    catalog_entry(body)  # raises the unknown-name error with suggestions
    raise AssertionError("catalog_entry returned for a name not in the catalog")


def parse_sources(specs: Iterable[str]) -> list[SourceSpec]:
    """Parse several source specs; `embedded` expands into its general, math and code parts."""
    parsed: list[SourceSpec] = []
    for spec in specs:
        body, sep, rest = spec.partition("#")
        if body.split("@")[0] == "embedded":
            suffix = body[len("embedded"):] + sep + rest
            parsed.extend(parse_source(f"{name}{suffix}") for name in EMBEDDED_SOURCES[1:])
        else:
            parsed.append(parse_source(spec))
    names = [p.name for p in parsed]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ColaError(f"the same dataset is named twice: {', '.join(dup)}")
    return parsed


def render_value(value: Any) -> str:
    """Render one field's value as text: lists line by line, multiple-choice dicts as `A. option` lines."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, Mapping):
        texts, labels = value.get("text"), value.get("label")
        if isinstance(texts, list) and isinstance(labels, list) and len(texts) == len(labels):
            return "\n".join(f"{label}. {text}" for label, text in zip(labels, texts))
        return "\n".join(f"{k}: {render_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "\n".join(part for part in map(render_value, value) if part)
    return str(value)


def record_text(record: Mapping[str, Any], fields: tuple[str, ...]) -> str:
    """A candidate's text: the non-empty rendered values of `fields`, separated by blank lines."""
    return "\n\n".join(part for part in (render_value(record[f]) for f in fields) if part)


def _choose_fields(spec: SourceSpec, columns: list[str]) -> tuple[tuple[str, ...], str, str]:
    """Decide (fields, capability, capability origin) for a source once its columns are known."""
    listed = ", ".join(columns)

    def capability(entry: Any) -> tuple[str, str]:
        if spec.capability is not None:
            return spec.capability, spec.capability_origin or "label"
        return (entry.capability, "catalog") if entry is not None else (DEFAULT_CAPABILITY, "default")

    if spec.fields is not None:
        missing = [f for f in spec.fields if f not in columns]
        if missing:
            raise ColaError(f"{spec.spec}: no field {', '.join(map(repr, missing))}; its fields are: {listed}")
        return spec.fields, *capability(entry_for_columns(set(spec.fields)))
    entry = entry_for_columns(set(columns))
    if entry is not None:
        return entry.text_fields, *capability(entry)
    if "text" in columns:
        return ("text",), *capability(None)
    raise ColaError(f"{spec.spec}: cannot tell which field holds the text; its fields are: {listed}. "
                    f"Name them as {spec.spec}#field or #field+field")


def read_json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of a .jsonl(.gz) file, or (position, record) of a .json array; a malformed line
    or a non-object record is an error naming the file and the line (datasets' own errors name neither)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        head = fh.read(4096).lstrip()[:1]
        fh.seek(0)
        if head == "[":
            try:
                records = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ColaError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from exc
            lines: Iterable[tuple[int, Any]] = enumerate(records, start=1)
        else:
            lines = ((n, line) for n, line in enumerate(fh, start=1) if line.strip())
        for lineno, item in lines:
            if isinstance(item, str):
                try:
                    item = json.loads(item)
                except json.JSONDecodeError as exc:
                    raise ColaError(f"{path}: malformed JSON on line {lineno}: {exc.msg}") from exc
            if not isinstance(item, dict):
                raise ColaError(f"{path}: line {lineno} is not a JSON object")
            yield lineno, item


def _stream_file(spec: SourceSpec) -> Iterator[dict[str, Any]]:
    import datasets

    path = Path(spec.location)
    builder = _file_builder(path)
    if path.stat().st_size == 0:
        return  # an empty file is an empty source; load_source says so
    # Reading a local file is no download: stop datasets from reporting one to the hub (an HTTP call each).
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    kwargs: dict[str, Any] = {"sample_by": "paragraph"} if builder == "text" else {}
    # datasets' own json errors do not say which line is broken, and it fails oddly on empty (compressed) files.
    if builder == "json" and sum(1 for _ in read_json_records(path)) == 0:  # checks every line first
        return
    try:
        stream = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True, **kwargs)
        yield from stream
    except (ValueError, datasets.exceptions.DatasetGenerationError) as exc:
        raise ColaError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc


def _stream_hub(spec: SourceSpec, seed: int) -> Iterator[dict[str, Any]]:
    import datasets

    from cola.hub import quiet_hub_retries, require_hub

    if not Path(spec.location).exists():  # a local dataset folder loads without the hub
        require_hub(f"hub dataset {spec.location!r} ({spec.name})", "give a local file path instead")
    with quiet_hub_retries():
        try:
            stream = datasets.load_dataset(spec.location, spec.config, split=spec.split, streaming=True)
        except Exception as exc:  # noqa: BLE001 - offline, missing or gated datasets raise many types
            raise ColaError(f"cannot load hub dataset {spec.location!r} ({spec.name}): "
                            f"{str(exc).splitlines()[0]}. Without network access, give a local file path "
                            "instead") from exc
        yield from stream.shuffle(seed=seed, buffer_size=HUB_SHUFFLE_BUFFER)


def _stream_embedded(spec: SourceSpec, seed: int) -> Iterator[dict[str, Any]]:
    from cola.data.embedded import embedded_records

    yield from embedded_records(spec.location, seed=seed)


def reservoir_sample(items: Iterable[T], k: int, rng: random.Random) -> tuple[list[T], int]:
    """Uniform sample of k items from a stream in one pass (Algorithm R), keeping stream order; also the count."""
    reservoir: list[tuple[int, T]] = []
    seen = 0
    for seen, item in enumerate(items, start=1):
        if len(reservoir) < k:
            reservoir.append((seen, item))
        else:
            slot = rng.randrange(seen)
            if slot < k:
                reservoir[slot] = (seen, item)
    return [item for _, item in sorted(reservoir, key=lambda pair: pair[0])], seen


def load_source(spec: SourceSpec, *, max_candidates: int, seed: int) -> Source:
    """Read one source as a stream and keep at most `max_candidates` non-empty texts, sampled with `seed`."""
    if spec.kind == "file":
        records = _stream_file(spec)
    elif spec.kind == "hub":
        records = _stream_hub(spec, seed)
    else:
        records = _stream_embedded(spec, seed)
    first = next(records, None)
    if first is None:
        raise ColaError(f"{spec.spec}: the source is empty")
    records = itertools.chain([first], records)
    fields, capability, origin = _choose_fields(spec, list(first))
    empty = 0

    def texts() -> Iterator[tuple[str, dict[str, Any]]]:
        nonlocal empty
        for record in records:
            text = record_text(record, fields)
            if text:
                yield text, dict(record)
            else:
                empty += 1

    if spec.kind == "hub":  # an endless stream: the shuffle buffer already randomised it
        sampled = list(itertools.islice(texts(), max_candidates))
        seen = len(sampled) + empty
    else:
        sampled, seen = reservoir_sample(texts(), max_candidates, random.Random(seed))
        seen += empty
    if not sampled:
        raise ColaError(f"{spec.spec}: all {seen} texts are empty in fields {', '.join(fields)}")
    log.info("source %s: %d candidates from %d records (%s, fields %s)", spec.name, len(sampled), seen,
             capability, "+".join(fields))
    return Source(spec=spec, capability=capability, fields=fields, texts=tuple(t for t, _ in sampled),
                  records_seen=seen, empty_skipped=empty, records=tuple(r for _, r in sampled),
                  capability_origin=origin)
