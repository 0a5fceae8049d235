"""Source specs: `SOURCE[@CAPABILITY][#FIELD+FIELD...]` parsed into what to read, under which name.

SOURCE is a catalog name (`gsm8k`), a path (`data/train.jsonl`), a hub id (`user/dataset`) or an embedded
pool (`embedded`, `embedded-math`). `@math` sets the capability, `#question+answer` names the fields whose
values make up the text; a field is a column or a dotted path into nested objects (`#meta.body`). An existing
file's path is taken whole, even when it holds `@` or `#`. `cola.data.sources` loads what a spec names.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cola.data.catalog import CATALOG, EMBEDDED_SOURCES, catalog_entry
from cola.errors import ColaError
from cola.io import COMPRESSIONS, FILE_FORMATS, file_format

_CAPABILITY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


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

    @property
    def origin(self) -> str:
        """How errors name the source: a file's path, else the spec."""
        return self.location if self.kind == "file" else self.spec


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


def _is_file(text: str) -> bool:
    try:
        return Path(text).expanduser().is_file()
    except (OSError, ValueError):  # a name too long for the file system, or holding a NUL byte
        return False


def looks_like_file(body: str) -> bool:
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
    if at_sign and not _CAPABILITY_RE.match(capability) and looks_like_file(body):
        head, at_sign, capability = body, "", ""  # `user@host.jsonl`: the @ belongs to a (missing) file's name
    if hash_sign and not looks_like_file(head) and looks_like_file(spec):
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
    if path.exists() or looks_like_file(body):
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
