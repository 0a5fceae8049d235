"""Candidate pools: local files, Hugging Face hub datasets and the embedded offline pool.

A source spec (`SOURCE[@CAPABILITY][#FIELD+FIELD...]`, parsed by `cola.data.specs`) names what to read. A
local file's fields and capability come from the schema its columns match (`cola.data.schemas`).

A source's capability is a hint that wins when given: its `@label`, else its schema's (by the catalog name,
or by a local file's columns), else the embedded part's. A source with none of these is scored by Stage 1 against
every capability's reference set and takes the one it matches best ("coverage"); with Stage 1 off it is
"general" by default. `capability_origin` records which rule decided (see CAPABILITY_ORIGINS).

Every source is read as a stream and reduced to at most `max_candidates` texts by seeded reservoir
sampling (local files, embedded) or a seeded shuffle buffer (hub streams), so no source is ever held or
tokenized whole; a text longer than MAX_TEXT_CHARS characters is cut there, so one huge record costs no
more than that bound in the stages after reading.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cola.data.fields import FieldValueError, missing_field, record_text, render_value
from cola.data.schemas import DEFAULT_CAPABILITY, DatasetSchema, schema_for_columns
from cola.data.specs import SourceSpec, parse_source, parse_sources
from cola.errors import ColaError, first_line
from cola.io import FILE_FORMATS, RowNumber, read_records
from cola.spill import object_store, text_store

log = logging.getLogger(__name__)

__all__ = ["CAPABILITY_ORIGINS", "DEFAULT_CAPABILITY", "FILE_FORMATS", "HUB_SHUFFLE_BUFFER", "MAX_TEXT_CHARS", "Source",
           "SourceSpec", "load_source", "parse_source", "parse_sources", "record_text", "render_value",
           "reservoir_sample"]

HUB_SHUFFLE_BUFFER = 10_000
# The longest text one record may give: about 50k tokens of English for a subword tokenizer (24 samples of 2048
# tokens, more than one window even at a 32k context). Stage 2 packs every text into windows and Stage 3 embeds
# every window, so the pool grows with the characters read: unbounded, one 16.8 MB record made 525k windows at
# sequence length 32 and ran for many minutes; cut at 1M characters it still made 31k windows and took 5 minutes
# on a shared CPU.
MAX_TEXT_CHARS = 200_000
# Where a source's capability came from (the manifest's `capability_origin`).
CAPABILITY_ORIGINS = {
    "label": "given with SOURCE@CAPABILITY",
    "catalog": "the schema's (cola.data.schemas), by the catalog dataset's name or a local file's columns",
    "embedded": "the embedded pool part's own",
    "coverage": "Stage 1: the capability whose reference set the source's samples match best",
    "default": f"{DEFAULT_CAPABILITY!r}: no label, no catalog schema, and nothing scored it (Stage 1 off, or "
               "Stage 2 left none of its samples)",
}
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Source:
    """A loaded source: its sampled texts in a deterministic order, and how they were made."""

    spec: SourceSpec
    capability: str
    fields: tuple[str, ...]
    texts: Sequence[str]            # each record rendered from `fields` (the text Stage 2 starts from)
    records_seen: int
    empty_skipped: int
    records: Sequence[dict[str, Any]] = ()  # the sampled raw records, aligned with texts, for formatters
    rows: Sequence[str] = ()        # where each sampled record is in its source ("line 7"), aligned with texts
    texts_cut: int = 0              # records whose text was cut to MAX_TEXT_CHARS
    records_key: str | None = None  # the top-level key of a JSON document whose list holds the records
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

    @property
    def origin(self) -> str:
        """How errors name the source: a file's path, else the spec."""
        return self.spec.origin

    def describe(self) -> dict[str, Any]:
        """The manifest entry for this source."""
        return {"spec": self.spec.spec, "name": self.spec.name, "kind": self.spec.kind,
                "location": self.spec.location, "config": self.spec.config, "split": self.spec.split,
                "capability": self.capability, "capability_origin": self.capability_origin,
                "fields": list(self.fields), "records_key": self.records_key,
                "records_seen": self.records_seen, "empty_skipped": self.empty_skipped,
                "texts_cut": self.texts_cut, "candidates": len(self.texts), "content_sha256": self.content_sha256}


def _choose_fields(spec: SourceSpec, fields: tuple[str, ...] | None, first: dict[str, Any],
                   ) -> tuple[tuple[str, ...], str, str]:
    """Decide (fields, capability, capability origin) for a source once its first record is known: the schema
    its columns (or the fields named) match gives both, unless the spec names them."""

    def capability(schema: DatasetSchema | None) -> tuple[str, str]:
        if spec.capability is not None:
            return spec.capability, spec.capability_origin or "label"
        if schema is None or schema.capability is None:
            return DEFAULT_CAPABILITY, "default"
        return schema.capability, "catalog"

    if fields is not None:
        for field in fields:
            problem = missing_field(first, field)
            if problem:
                raise ColaError(f"{spec.spec}: {problem}")
        return fields, *capability(schema_for_columns(fields))
    schema = schema_for_columns(first)
    if schema is None:
        raise ColaError(f"{spec.spec}: cannot tell which field holds the text; its fields are: "
                        f"{', '.join(map(str, first))}. Name them as {spec.spec}#field or #field+field (a dotted "
                        "path reaches into objects: #meta.body)")
    return schema.text_fields, *capability(schema)


def _cut_text(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at the last paragraph, line or word end in its second half."""
    for separator in ("\n\n", "\n", " "):
        end = text.rfind(separator, limit // 2, limit)
        if end > 0:
            return text[:end]
    return text[:limit]


def bound_strings(value: Any, limit: int = MAX_TEXT_CHARS) -> tuple[Any, int]:
    """(`value` with every string longer than `limit` cut to it, how many were cut), through objects and lists."""
    if isinstance(value, str):
        return (_cut_text(value, limit), 1) if len(value) > limit else (value, 0)
    if isinstance(value, dict):
        pairs = {k: bound_strings(v, limit) for k, v in value.items()}
        cut = sum(n for _, n in pairs.values())
        return ({k: v for k, (v, _) in pairs.items()}, cut) if cut else (value, 0)
    if isinstance(value, list):
        items = [bound_strings(v, limit) for v in value]
        cut = sum(n for _, n in items)
        return ([v for v, _ in items], cut) if cut else (value, 0)
    return value, 0


def _stream_file(spec: SourceSpec) -> tuple[Iterator[tuple[RowNumber, dict[str, Any]]], str | None]:
    """(position, record) pairs of a local file, and the JSON document key they were read from."""
    path = Path(spec.location)
    hint = spec.fields[0] if spec.fields else None
    records = read_records(path, records_key=hint)
    return records.rows, records.records_key


def _stream_hub(spec: SourceSpec, seed: int) -> Iterator[tuple[RowNumber, dict[str, Any]]]:
    import datasets

    from cola.hub import quiet_hub_retries, require_hub

    if Path(spec.location).is_dir():  # a local copy is no download: stop datasets reporting one to the hub
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    else:
        require_hub(f"hub dataset {spec.location!r} ({spec.name})", "give a local file path instead")
    with quiet_hub_retries():
        try:
            stream = datasets.load_dataset(spec.location, spec.config, split=spec.split, streaming=True)
            shuffled = stream.shuffle(seed=seed, buffer_size=HUB_SHUFFLE_BUFFER)
            for number, record in enumerate(shuffled, start=1):
                yield RowNumber(number, "record"), record
        except Exception as exc:  # noqa: BLE001 - offline, missing, gated or mistyped datasets raise many types
            raise ColaError(f"cannot load hub dataset {spec.location!r} ({spec.name}): "
                            f"{first_line(exc)}. Without network access, give a local file path "
                            "instead") from exc


def _stream_embedded(spec: SourceSpec, seed: int) -> Iterator[tuple[RowNumber, dict[str, Any]]]:
    from cola.data.embedded import embedded_records

    for number, record in enumerate(embedded_records(spec.location, seed=seed), start=1):
        yield RowNumber(number, "record"), record


def reservoir_sample(items: Iterable[T], k: int, rng: random.Random) -> tuple[list[T], int]:
    """Uniform sample of k items from a stream in one pass (Algorithm R), keeping stream order; also the count."""
    items = list(items) if not isinstance(items, list) else items
    positions, seen = reservoir_positions(len(items), k, rng)
    return [items[i] for i in positions], seen


def reservoir_positions(count: int | Iterable[Any], k: int, rng: random.Random) -> tuple[np.ndarray, int]:
    """(the sorted 0-based positions Algorithm R keeps of a stream, the stream's length): the same draws as a
    reservoir of the items themselves, holding only k integers. `count`: the stream's length, or the stream."""
    reservoir = np.empty(k, dtype=np.int64)
    seen = 0
    for seen, _ in enumerate(range(count) if isinstance(count, int) else count, start=1):
        if seen <= k:
            reservoir[seen - 1] = seen - 1
        else:
            slot = rng.randrange(seen)
            if slot < k:
                reservoir[slot] = seen - 1
    return np.sort(reservoir[:min(seen, k)]), seen


def load_source(spec: SourceSpec, *, max_candidates: int, seed: int, role: str = "source") -> Source:
    """Read one source as a stream and keep at most `max_candidates` non-empty texts, sampled with `seed`.

    A record whose text fields hold something that is not text (an object, numbers only), or that lacks all
    of them, raises a ColaError naming the source and the record's row."""
    fields, records_key = spec.fields, None
    if spec.kind == "file":
        records, records_key = _stream_file(spec)
        if records_key is not None and fields and fields[0] == records_key:
            fields = fields[1:] or None  # `FILE.json#data`: the key of the records, not a field
    elif spec.kind == "hub":
        records = _stream_hub(spec, seed)
    else:
        records = _stream_embedded(spec, seed)
    first = next(records, None)
    if first is None:
        raise ColaError(f"{spec.spec}: the source is empty")
    records = itertools.chain([first], records)
    fields, capability, capability_origin = _choose_fields(spec, fields, first[1])
    origin = spec.origin
    empty = cut = 0

    def texts(records: Iterator[tuple[RowNumber, dict[str, Any]]], first_pass: bool = True,
              ) -> Iterator[tuple[str, dict[str, Any], str]]:
        nonlocal empty, cut
        for row, record in records:
            record, shortened = bound_strings(record)
            where = row.describe()
            if shortened and first_pass:
                cut += 1
                log.warning("%s: %s holds a text longer than %d characters; it is cut there", origin, where,
                            MAX_TEXT_CHARS)
            try:
                text = record_text(record, fields)
            except FieldValueError as exc:
                raise ColaError(f"{origin}: {where}: {exc}") from None
            if text:
                yield text, dict(record), where
            else:
                empty += first_pass

    # The sample goes to disk as it is read (`cola.spill`): a source of 10^6 records costs the memory of a batch.
    kept_texts, kept_records, kept_rows = text_store(), object_store(), text_store()

    def keep(sampled: Iterable[tuple[str, dict[str, Any], str]]) -> None:
        for text, record, where in sampled:
            kept_texts.append(text)
            kept_records.append(record)
            kept_rows.append(where)
        for store in (kept_texts, kept_records, kept_rows):
            store.close()

    if spec.kind == "hub":  # an endless stream: the shuffle buffer already randomised it
        keep(itertools.islice(texts(records), max_candidates))
        seen = len(kept_texts) + empty
    else:  # a file is read twice: which records the reservoir keeps (their positions only), then those records
        positions, seen = reservoir_positions(texts(records), max_candidates, random.Random(seed))
        reader_log, said_once = logging.getLogger("cola.io"), lambda record: False
        reader_log.addFilter(said_once)  # what the reader says of the file was said on the first pass
        try:
            again = _stream_file(spec)[0] if spec.kind == "file" else _stream_embedded(spec, seed)
            keep(_at_positions(texts(again, first_pass=False), positions))
        finally:
            reader_log.removeFilter(said_once)
        seen += empty
    if not len(kept_texts):
        raise ColaError(f"{spec.spec}: all {seen} texts are empty in fields {', '.join(fields)}")
    shown = capability if capability_origin != "default" else "no capability label"
    log.info("%s %s: %d texts from %d records (%s, fields %s)", role, spec.name, len(kept_texts), seen, shown,
             "+".join(fields))
    return Source(spec=spec, capability=capability, fields=fields, texts=kept_texts, records_seen=seen,
                  empty_skipped=empty, records=kept_records, rows=kept_rows, texts_cut=cut,
                  records_key=records_key, capability_origin=capability_origin)


def _at_positions(items: Iterable[T], positions: np.ndarray) -> Iterator[T]:
    """The items of a stream at the sorted 0-based `positions`."""
    wanted = iter(positions.tolist())
    target = next(wanted, None)
    for position, item in enumerate(items):
        if target is None:
            return
        if position == target:
            yield item
            target = next(wanted, None)
