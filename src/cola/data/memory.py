"""Datasets the Python API is handed in memory: a `datasets.Dataset` or `IterableDataset`, a list of texts or of
records (dicts), alone, as a `(data, "math")` pair, or as `InMemory(data, capability=..., fields=...)`.

Each is written once to a JSON-lines file in cola's cache (`in-memory/NAME-SHA.jsonl`, named by the sha256 of
its content), and from there read like any file: the same schema table decides its text fields and capability,
the same Stage 2 processes it, and the manifest names it `NAME-SHA` with its path and content hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cola.errors import ColaError
from cola.schema import shown

MEMORY_DIR = "in-memory"        # under cola's cache folder (`cola.gguf_models.cache_dir`)
MAX_RECORDS = 1_000_000          # an IterableDataset is read up to this many records
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass(frozen=True)
class InMemory:
    """In-memory data for `COLA(available_datasets=[...])`, with what a file spec's `@CAPABILITY#FIELDS` says.

    `data`: a `datasets.Dataset` or `IterableDataset`, or a list of texts (str) or records (dicts). `capability`:
    the capability its texts serve (None: decided as for a file, from its columns, else by Stage 1). `fields`:
    the record fields holding the text (None: from the schema table). `name`: the dataset name's prefix
    (letters, digits, - and _), followed by the content's sha256.
    """

    data: Any
    capability: str | None = None
    fields: tuple[str, ...] | None = None
    name: str = "memory"


def as_in_memory(item: Any) -> InMemory | None:
    """`item` of available_datasets as InMemory where it is data: InMemory itself, a datasets.Dataset or
    IterableDataset, a list (of texts or dicts), or a `(data, "capability")` tuple of those; None for anything
    else (a name, a path, or what is neither)."""
    if isinstance(item, InMemory):
        return item
    if _is_hf_dataset(item) or isinstance(item, list):
        return InMemory(item)
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str):
        data = as_in_memory(item[0])
        return InMemory(data.data, capability=item[1]) if data and not isinstance(item[0], InMemory) else None
    return None


def dataset_items(available: Any) -> list[Any]:
    """`available_datasets` as a list of items: one name, path or in-memory dataset alone, else each of a
    list or tuple (a tuple `(data, "capability")` is one in-memory dataset)."""
    if isinstance(available, (str, os.PathLike)) or (not isinstance(available, list)
                                                      and as_in_memory(available) is not None):
        return [available]
    if isinstance(available, (list, tuple)):
        return list(available)
    raise ColaError(f"COLA: available_datasets must be a dataset name, a path, in-memory data or a list of them, "
                    f"got {shown(available, python=True)}")


def in_memory_spec(spec: InMemory, position: int) -> str:
    """The source spec of in-memory data `spec` (available_datasets[position]): its cache file, written if new,
    plus `@CAPABILITY` and `#FIELDS` where given. Raises ColaError for empty data, mixed or unsupported records,
    a name that is not a plain word, and records whose text column cannot be told."""
    from cola.data.schemas import schema_for_columns
    from cola.gguf_models import cache_dir

    where = f"COLA: available_datasets[{position}]"
    if not spec.name or not set(spec.name) <= _NAME_CHARS:
        raise ColaError(f"{where}: name {spec.name!r} must be letters, digits, - or _")
    records = _records(spec.data, where)
    if spec.fields is None and schema_for_columns(records[0]) is None:
        raise ColaError(f"{where}: cannot tell which column holds the text; its columns are: "
                        f"{', '.join(map(str, records[0]))}. Name them: cola.InMemory(data, fields=(\"column\",))")
    lines = "".join(json.dumps(record, ensure_ascii=False, default=str) + "\n" for record in records)
    digest = hashlib.sha256(lines.encode("utf-8")).hexdigest()
    path = cache_dir() / MEMORY_DIR / f"{spec.name}-{digest[:16]}.jsonl"
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        from cola.atomic import write_text

        write_text(path, lines)
    capability = f"@{spec.capability}" if spec.capability else ""
    fields = f"#{'+'.join(spec.fields)}" if spec.fields else ""
    return f"{path}{capability}{fields}"


def _is_hf_dataset(item: Any) -> bool:
    return type(item).__module__.startswith("datasets.") and type(item).__name__ in ("Dataset", "IterableDataset")


def _unsupported(item: Any, where: str) -> ColaError:
    return ColaError(f"COLA: {where} must be a dataset name, a path or in-memory data (a datasets.Dataset, a list "
                     f"of texts or of dicts, a (data, capability) pair, cola.InMemory), got {shown(item, python=True)}")


def _records(data: Any, where: str) -> list[dict[str, Any]]:
    """The records of `data` as dicts: a text becomes {"text": text}."""
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise ColaError(f"{where}: in-memory data must be a datasets.Dataset, a list of texts or a list of dicts, "
                        f"got {type(data).__name__}")
    records: list[dict[str, Any]] = []
    texts = None  # whether the data holds texts (str) or records (dicts), from its first row
    for row in data:
        if len(records) == MAX_RECORDS:
            break
        if not isinstance(row, (str, Mapping)):
            raise ColaError(f"{where}: row {len(records)} is a {type(row).__name__}; in-memory data holds texts "
                            "(str) or records (dicts)")
        if texts is None:
            texts = isinstance(row, str)
        elif texts != isinstance(row, str):
            raise ColaError(f"{where}: row {len(records)} mixes texts and records; give one kind")
        records.append({"text": row} if isinstance(row, str) else dict(row))
    if not records:
        raise ColaError(f"{where}: the in-memory dataset is empty")
    return records


def specs_of(available: Any) -> tuple[str, ...]:
    """`available_datasets` as source specs: names and paths as given, in-memory data as its cache file."""
    specs = []
    for position, item in enumerate(dataset_items(available)):
        if isinstance(item, (str, os.PathLike)):
            specs.append(_checked_name(os.fspath(item), position))
        elif (data := as_in_memory(item)) is not None:
            specs.append(in_memory_spec(data, position))
        else:  # None, a number, a (name, capability) tuple: `name@capability` is how a name takes one
            raise _unsupported(item, f"available_datasets[{position}]")
    return tuple(specs)


def _checked_name(name: str, position: int) -> str:
    """A name or path as given; a text handed where a name belongs gets told how to pass texts."""
    from cola.data.specs import looks_like_file

    words = " " in name.strip() and not looks_like_file(name) and not os.path.exists(os.path.expanduser(name))
    if words or "\n" in name or any(len(part) > 255 for part in name.split("/")):
        raise ColaError(f"COLA: available_datasets[{position}] looks like a text, not a dataset name or path: pass "
                        "texts as one list inside the list (available_datasets=[texts]) or as cola.InMemory(texts)")
    return name
