"""Candidate pools: local files, Hugging Face hub datasets and the embedded offline pool.

A source spec is `SOURCE[@CAPABILITY][#FIELD+FIELD...]`, where SOURCE is a catalog name (`gsm8k`), a
path (`data/train.jsonl`), a hub id (`user/dataset`) or an embedded pool (`embedded`, `embedded-math`).
`@math` sets the capability, `#question+answer` names the fields whose values make up the text; a
field is a column or a dotted path into nested objects (`#meta.body`). An existing file's path is taken
whole, even when it holds `@` or `#`.

A source's capability is a hint that wins when given: its `@label`, else the catalog's (by name, or by a
local file's columns), else the embedded part's. A source with none of these is scored by Stage 1 against
every capability's reference set and takes the one it matches best ("coverage"); with Stage 1 off it is
"general" by default. `capability_origin` records which rule decided (see CAPABILITY_ORIGINS).

Every source is read as a stream and reduced to at most `max_candidates` texts by seeded reservoir
sampling (local files, embedded) or a seeded shuffle buffer (hub streams), so no source is ever held or
tokenized whole; a text longer than MAX_TEXT_CHARS characters is cut there, so one huge record costs no
more than that bound in the stages after reading.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cola.data.catalog import CATALOG, EMBEDDED_SOURCES, catalog_entry, entry_for_columns
from cola.data.formatters import FieldValueError, missing_field, record_text, render_value
from cola.data.readers import COMPRESSIONS, FILE_FORMATS, RowNumber, file_format, read_json_records, read_records
from cola.errors import ColaError, first_line

log = logging.getLogger(__name__)

__all__ = ["CAPABILITY_ORIGINS", "DEFAULT_CAPABILITY", "FILE_FORMATS", "HUB_SHUFFLE_BUFFER", "MAX_TEXT_CHARS", "Source",
           "SourceSpec", "load_source", "parse_source", "parse_sources", "read_json_records", "record_text",
           "render_value", "reservoir_sample"]

_CAPABILITY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
HUB_SHUFFLE_BUFFER = 10_000
# The longest text one record may give: about 50k tokens of English for a subword tokenizer (24 samples of 2048
# tokens, more than one window even at a 32k context). Stage 2 packs every text into windows and Stage 3 embeds
# every window, so the pool grows with the characters read: unbounded, one 16.8 MB record made 525k windows at
# sequence length 32 and ran for many minutes; cut at 1M characters it still made 31k windows and took 5 minutes
# on a shared CPU.
MAX_TEXT_CHARS = 200_000
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
    rows: tuple[str, ...] = ()      # where each sampled record is in its source ("line 7"), aligned with texts
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
        return _origin(self.spec)

    def describe(self) -> dict[str, Any]:
        """The manifest entry for this source."""
        return {"spec": self.spec.spec, "name": self.spec.name, "kind": self.spec.kind,
                "location": self.spec.location, "config": self.spec.config, "split": self.spec.split,
                "capability": self.capability, "capability_origin": self.capability_origin,
                "fields": list(self.fields), "records_key": self.records_key,
                "records_seen": self.records_seen, "empty_skipped": self.empty_skipped,
                "texts_cut": self.texts_cut, "candidates": len(self.texts), "content_sha256": self.content_sha256}


_GENERIC_STEMS = {"train", "test", "validation", "valid", "val", "dev", "data", "dataset", "all"}


def _file_source_name(path: Path, depth: int = 0, whole_name: bool = False) -> str:
    """A readable dataset name for a file: its stem, prefixed by its folder when the stem is generic, and by
    `depth` more folders; with `whole_name`, its file name with the extension (to tell apart files of one
    name)."""
    stem = path.name.split(".")[0]
    folders = 1 if stem.lower() in _GENERIC_STEMS else 0
    parents = [p.name for p in path.parents if p.name][: folders + depth]
    return "/".join([*reversed(parents), path.name if whole_name else stem])


def _names_apart(paths: list[Path], taken: set[str]) -> list[str]:
    """The shortest readable names telling `paths` apart, none of them in `taken`: more folders first, then
    the whole file name; the whole path if nothing shorter does."""
    for whole_name in (False, True):
        for depth in range(max(len(p.parents) for p in paths) + 1):
            names = [_file_source_name(p, depth, whole_name) for p in paths]
            if len(set(names)) == len(names) and not set(names) & taken:
                return names
    return [str(p) for p in paths]


def _origin(spec: SourceSpec) -> str:
    return spec.location if spec.kind == "file" else spec.spec


def _is_file(text: str) -> bool:
    try:
        return Path(text).expanduser().is_file()
    except (OSError, ValueError):  # a name too long for the file system, or holding a NUL byte
        return False


def _looks_like_file(body: str) -> bool:
    return Path(body).suffix in FILE_FORMATS or Path(body).suffix in COMPRESSIONS


def _split_spec(spec: str) -> tuple[str, str]:
    """(SOURCE, the `@CAPABILITY#FIELDS` rest): the longest prefix that is an existing file wins, so a path
    holding `@` or `#` can be named; otherwise SOURCE ends at the first `#` and the last `@` before it."""
    cuts = sorted({len(spec), *(i for i, c in enumerate(spec) if c in "@#")}, reverse=True)
    for cut in cuts:
        if cut and _is_file(spec[:cut]):
            return spec[:cut], spec[cut:]
    body, hash_sign, fields = spec.partition("#")
    head, at_sign, capability = body.rpartition("@") if "@" in body else (body, "", "")
    if at_sign and not _CAPABILITY_RE.match(capability) and _looks_like_file(body):
        head, at_sign, capability = body, "", ""  # `user@host.jsonl`: the @ belongs to a (missing) file's name
    if hash_sign and not _looks_like_file(head) and _looks_like_file(spec):
        return spec, ""  # `runs#3.jsonl`: so does the #
    return head, f"{at_sign}{capability}{hash_sign}{fields}"


def parse_source(spec: str) -> SourceSpec:
    """Parse `SOURCE[@CAPABILITY][#FIELD+FIELD]` into a SourceSpec; unknown names raise with suggestions."""
    body, rest = _split_spec(spec)
    rest, has_fields, field_part = rest.partition("#")
    if rest and not rest.startswith("@"):
        raise ColaError(f"cannot read source spec {spec!r}: write SOURCE[@CAPABILITY][#FIELD+FIELD]")
    has_capability, capability = bool(rest), rest[1:]
    fields = tuple(f for f in field_part.split("+") if f) if has_fields else None
    if has_fields and not fields:
        raise ColaError(f"empty field list in source spec {spec!r}: write PATH#field or PATH#field+field")
    if fields and any(not part for f in fields for part in f.split(".")):
        raise ColaError(f"empty field name in source spec {spec!r}: a dotted path is FIELD.SUBFIELD")
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
    if path.exists() or _looks_like_file(body):
        if not path.is_file():
            raise ColaError(f"dataset file not found: {body}")
        file_format(path)
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


def _identity(spec: SourceSpec) -> tuple[str, ...]:
    """What makes two specs the same dataset: the same file (however its path is spelt), hub split, or pool."""
    location = str(Path(spec.location).resolve()) if spec.kind == "file" else spec.location
    return spec.kind, location, str(spec.config), spec.split


def parse_sources(specs: Iterable[str]) -> list[SourceSpec]:
    """Parse several source specs; `embedded` expands into its general, math and code parts.

    Files of the same name in different folders are named apart by their folders (`a/pool`, `b/pool`); one
    dataset named twice raises."""
    parsed: list[SourceSpec] = []
    for spec in specs:
        body, rest = _split_spec(spec)
        if body == "embedded":
            parsed.extend(parse_source(f"{name}{rest}") for name in EMBEDDED_SOURCES[1:])
        else:
            parsed.append(parse_source(spec))
    identities = [_identity(p) for p in parsed]
    same = sorted({p.name for p, i in zip(parsed, identities) if identities.count(i) > 1})
    if same:
        raise ColaError(f"the same dataset is named twice: {', '.join(same)}")
    for _ in range(len(parsed)):  # each pass names one clashing group apart
        names = [p.name for p in parsed]
        clash = next((n for n in names if names.count(n) > 1), None)
        if clash is None:
            return parsed
        files = [i for i, n in enumerate(names) if n == clash and parsed[i].kind == "file"]
        if not files:
            raise ColaError(f"two datasets have the same name: {clash}")
        taken = {n for i, n in enumerate(names) if i not in files}
        for i, name in zip(files, _names_apart([Path(parsed[i].location).resolve() for i in files], taken)):
            parsed[i] = dataclasses.replace(parsed[i], name=name)
    return parsed


def _choose_fields(spec: SourceSpec, fields: tuple[str, ...] | None, first: dict[str, Any],
                   ) -> tuple[tuple[str, ...], str, str]:
    """Decide (fields, capability, capability origin) for a source once its first record is known."""
    columns = list(first)
    listed = ", ".join(map(str, columns))

    def capability(entry: Any) -> tuple[str, str]:
        if spec.capability is not None:
            return spec.capability, spec.capability_origin or "label"
        return (entry.capability, "catalog") if entry is not None else (DEFAULT_CAPABILITY, "default")

    if fields is not None:
        for field in fields:
            problem = missing_field(first, field)
            if problem:
                raise ColaError(f"{spec.spec}: {problem}")
        return fields, *capability(entry_for_columns(set(fields)))
    entry = entry_for_columns(set(columns))
    if entry is not None:
        return entry.text_fields, *capability(entry)
    if "text" in columns:
        return ("text",), *capability(None)
    raise ColaError(f"{spec.spec}: cannot tell which field holds the text; its fields are: {listed}. "
                    f"Name them as {spec.spec}#field or #field+field (a dotted path reaches into objects: "
                    "#meta.body)")


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
    origin = _origin(spec)
    empty = cut = 0

    def texts() -> Iterator[tuple[str, dict[str, Any], str]]:
        nonlocal empty, cut
        for row, record in records:
            record, shortened = bound_strings(record)
            where = row.describe()
            if shortened:
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
                empty += 1

    if spec.kind == "hub":  # an endless stream: the shuffle buffer already randomised it
        sampled = list(itertools.islice(texts(), max_candidates))
        seen = len(sampled) + empty
    else:
        sampled, seen = reservoir_sample(texts(), max_candidates, random.Random(seed))
        seen += empty
    if not sampled:
        raise ColaError(f"{spec.spec}: all {seen} texts are empty in fields {', '.join(fields)}")
    shown = capability if capability_origin != "default" else "no capability label"
    log.info("%s %s: %d texts from %d records (%s, fields %s)", role, spec.name, len(sampled), seen, shown,
             "+".join(fields))
    return Source(spec=spec, capability=capability, fields=fields, texts=tuple(t for t, _, _ in sampled),
                  records_seen=seen, empty_skipped=empty, records=tuple(r for _, r, _ in sampled),
                  rows=tuple(w for _, _, w in sampled), texts_cut=cut, records_key=records_key,
                  capability_origin=capability_origin)
