"""Parsed YAML/JSON values checked against type hints: one generic check for every field of a config file.

`convert(value, hint, path, source=...)` returns `value` in the shape of the type hint (a list becomes a tuple
for a tuple hint, a string a Path for a Path hint, an integer a float for a float hint) or raises a one-line
ColaError naming the key path, the expected type and the value given:

    experiment config: seeds must be a list of integers, got '0, 1, 2' (a string)
    experiment config: methods.wanda50.sparsity must be a number, got 'half' (a string)

A dataclass hint stands for a mapping whose only keys are the dataclass's fields (an unknown key is an error
listing the valid ones); it comes back as a dict of converted values, and the caller builds the instance, so
the dataclass's own value checks run there. A tuple of pairs (`tuple[tuple[str, float], ...]`) may be written
as a mapping. Booleans are not integers here: `num_samples: true` is an error, as is `name: off` (YAML reads
an unquoted off/on/yes/no as a boolean; the message says to quote it).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

from cola.errors import ColaError, unknown_choice

_NONE = type(None)
_NAMES: dict[Any, tuple[str, str]] = {  # hint -> (singular with article, plural)
    bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
    str: ("a string", "strings"), Path: ("a path (a string)", "paths"), _NONE: ("null", "nulls"),
    Any: ("any value", "values")}
_KINDS: tuple[tuple[type, str], ...] = (  # what a parsed value is, for the message
    (bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"), (Mapping, "a mapping"),
    (list, "a list"), (tuple, "a list"), (_NONE, "null"))
SHOWN_CHARS = 60


def describe(hint: Any, *, plural: bool = False) -> str:
    """The type hint in words: `a list of integers`, `a mapping of strings to numbers`, `a string or null`."""
    if hint in _NAMES:
        return _NAMES[hint][plural]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(arm, plural=plural) for arm in sorted(args, key=lambda a: a is _NONE))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if _pairs(hint):
        key, value = typing.get_args(args[0])
        return f"{'mappings' if plural else 'a mapping'} of {describe(key, plural=True)} to " \
               f"{describe(value, plural=True)}"
    if origin in (tuple, list) and (origin is list or args[-1:] == (Ellipsis,)):
        return f"{'lists' if plural else 'a list'} of {describe(args[0], plural=True)}"
    if origin is tuple:
        return f"{'lists' if plural else 'a list'} of {len(args)} items"
    if origin in (dict, Mapping):
        if args[1] is Any:
            return "mappings" if plural else "a mapping"
        return f"{'mappings' if plural else 'a mapping'} of {describe(args[0], plural=True)} to " \
               f"{describe(args[1], plural=True)}"
    if dataclasses.is_dataclass(hint):
        return "mappings" if plural else "a mapping"
    name = getattr(hint, "__name__", str(hint))
    return f"{name} values" if plural else f"a {name}"


def shown(value: Any) -> str:
    """`'0, 1, 2' (a string)`: the value (cut to SHOWN_CHARS) and what it is."""
    text = repr(value)
    if len(text) > SHOWN_CHARS:
        text = text[:SHOWN_CHARS - 3] + "..."
    kind = next((name for cls, name in _KINDS if isinstance(value, cls)), f"a {type(value).__name__}")
    return f"{text} ({kind})"


def _pairs(hint: Any) -> bool:
    """tuple[tuple[K, V], ...]: key/value pairs, which YAML writes as a mapping."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is not tuple or args[-1:] != (Ellipsis,):
        return False
    inner = args[0]
    return typing.get_origin(inner) is tuple and len(typing.get_args(inner)) == 2 and \
        Ellipsis not in typing.get_args(inner)


def join(path: str, key: Any) -> str:
    """`calibration` + `num_samples` -> `calibration.num_samples`; an index is written `seeds[1]`."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def convert(value: Any, hint: Any, path: str, *, source: str) -> Any:
    """`value` checked against `hint` and in its shape; a mismatch is a ColaError `{source}: {path} must be ...`."""

    def mismatch() -> ColaError:
        hint_text = ""
        if isinstance(value, bool) and _accepts(hint, str):
            hint_text = " (YAML reads an unquoted off/on/yes/no/true/false as a boolean: quote it)"
        return ColaError(f"{source}: {path} must be {describe(hint)}, got {shown(value)}{hint_text}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        shaped = [arm for arm in args if arm is not _NONE and _same_shape(value, arm)]
        if len(shaped) == 1 and _container(shaped[0]):  # its deeper error (layers[2]) is the useful one
            return convert(value, shaped[0], path, source=source)
        for arm in shaped:
            try:
                return convert(value, arm, path, source=source)
            except ColaError:
                continue
        raise mismatch()
    if hint is bool or hint is str or hint is _NONE:
        if not isinstance(value, hint):
            raise mismatch()
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise mismatch()
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise mismatch()
        return float(value)
    if hint is Path:
        if isinstance(value, Path):
            return value
        if not isinstance(value, str) or not value:
            raise mismatch()
        return Path(value)
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in args):  # True is not 1 here
            raise mismatch()
        return value
    if _pairs(hint) and isinstance(value, Mapping):
        key_hint, value_hint = typing.get_args(args[0])
        return tuple((convert(k, key_hint, f"a key of {path}", source=source),
                      convert(v, value_hint, join(path, k), source=source)) for k, v in value.items())
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise mismatch()
        if origin is list or args[-1:] == (Ellipsis,):
            items = [convert(v, args[0], join(path, i), source=source) for i, v in enumerate(value)]
        elif len(value) != len(args):
            raise mismatch()
        else:
            items = [convert(v, a, join(path, i), source=source) for i, (v, a) in enumerate(zip(value, args))]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise mismatch()
        return {convert(k, args[0], f"a key of {path}", source=source): convert(v, args[1], join(path, k),
                                                                               source=source)
                for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):  # a config object given whole (Python API)
            return value
        if not isinstance(value, Mapping):
            raise mismatch()
        return convert_fields(value, hint, path, source=source)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise mismatch()
    return value


def convert_fields(data: Any, cls: type, path: str, *, source: str,
                   hints: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A mapping as keyword arguments of dataclass `cls`, each value converted by its field's type hint.

    An unknown key is an error naming the valid ones; `hints` replaces some fields' hints (where the file
    writes a field in another shape than the dataclass holds it). Fields not given are left out.
    """
    if not isinstance(data, Mapping):
        raise ColaError(f"{source}: {path or 'the top level'} must be a mapping, got {shown(data)}")
    field_hints = {**typing.get_type_hints(cls), **(hints or {})}
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    converted = {}
    for key, value in data.items():
        if key not in valid:
            raise unknown_choice(f"key in {source} `{path or 'top level'}`", str(key), valid)
        converted[key] = convert(value, field_hints[key], join(path, key), source=source)
    return converted


def _accepts(hint: Any, cls: type) -> bool:
    if hint is cls:
        return True
    return typing.get_origin(hint) in (Union, types.UnionType) and cls in typing.get_args(hint)


def _container(hint: Any) -> bool:
    return typing.get_origin(hint) in (tuple, list, dict, Mapping) or dataclasses.is_dataclass(hint)


def _same_shape(value: Any, hint: Any) -> bool:
    """Whether `value` is the kind of thing `hint` describes (a list for a list, a mapping for a mapping, ...)."""
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return isinstance(value, (list, tuple)) or (_pairs(hint) and isinstance(value, Mapping))
    if origin in (dict, Mapping) or dataclasses.is_dataclass(hint):
        return isinstance(value, Mapping)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is Path:
        return isinstance(value, (str, Path))
    if origin is Literal:
        return value in typing.get_args(hint)
    return isinstance(hint, type) and isinstance(value, hint)
