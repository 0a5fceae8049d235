"""Values checked against type hints: the one check behind every config file and every config object.

`convert(value, hint, path, source=...)` returns `value` in the shape of the type hint (a list becomes a tuple
for a tuple hint, a string a Path for a Path hint, an integer a float for a float hint) or raises a one-line
ColaError naming the key path, the expected type and the value given:

    experiment config: seeds must be a list of integers, got '0, 1, 2' (a string)
    CurateConfig: num_samples must be an integer, got '8' (a string)

Two readings of a dataclass hint:
- a config file (`python=False`, YAML/JSON): a mapping whose only keys are the dataclass's fields (an unknown key
  is an error listing the valid ones); it comes back as a dict of converted values, and the caller builds the
  instance, so the dataclass's own value checks run there. A tuple of pairs (`tuple[tuple[str, float], ...]`)
  may be written as a mapping.
- a Python object (`python=True`, what `check_field_types` uses at a config's construction): only an instance
  of that dataclass; numpy integers and floats count as numbers, and a single string where a list of strings
  belongs is one item, never its characters (`datasets="gsm8k"`).

Booleans are not numbers in either: `num_samples: true` is an error, as is `name: off` (YAML reads an unquoted
off/on/yes/no as a boolean; the message says to quote it).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

from cola.errors import YAML_BOOLEAN_HINT, ColaError, unknown_choice

_NONE = type(None)
_NAMES: dict[Any, tuple[str, str]] = {  # hint -> (singular with article, plural)
    bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
    str: ("a string", "strings"), Path: ("a path (a string)", "paths"), _NONE: ("null", "nulls"),
    Any: ("any value", "values")}
_PYTHON_NAMES: dict[Any, tuple[str, str]] = {bool: ("True or False", "booleans"), _NONE: ("None", "Nones"),
                                              Path: ("a path", "paths")}
_KINDS: tuple[tuple[type, str], ...] = (  # what a parsed value is, for the message
    (bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"), (Mapping, "a mapping"),
    (list, "a list"), (tuple, "a list"), (_NONE, "null"))
SHOWN_CHARS = 60


def describe(hint: Any, *, plural: bool = False, python: bool = False) -> str:
    """The type hint in words: `a list of integers`, `a mapping of strings to numbers`, `a string or null`
    (`python`: a dataclass is named, `a SelectionConfig`, where a config file writes it as a mapping)."""
    if python and hint in _PYTHON_NAMES:
        return _PYTHON_NAMES[hint][plural]
    if hint in _NAMES:
        return _NAMES[hint][plural]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(arm, plural=plural, python=python)
                           for arm in sorted(args, key=lambda a: a is _NONE))
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
    if dataclasses.is_dataclass(hint) and not python:
        return "mappings" if plural else "a mapping"
    name = getattr(hint, "__name__", str(hint))
    return f"{name} values" if plural else f"a {name}"


def shown(value: Any, *, python: bool = False) -> str:
    """`'0, 1, 2' (a string)`: the value (cut to SHOWN_CHARS) and what it is (`python`: None is None, not null)."""
    text = repr(value)
    if len(text) > SHOWN_CHARS:
        text = text[:SHOWN_CHARS - 3] + "..."
    if python and value is None:
        return text
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


def convert(value: Any, hint: Any, path: str, *, source: str, python: bool = False) -> Any:
    """`value` checked against `hint` and in its shape; a mismatch is a ColaError `{source}: {path} must be ...`.

    `python`: the value comes from Python, not a config file (see the module docstring)."""

    def mismatch() -> ColaError:
        hint_text = YAML_BOOLEAN_HINT if isinstance(value, bool) and _accepts(hint, str) else ""
        return ColaError(f"{source}: {path} must be {describe(hint, python=python)}, got "
                         f"{shown(value, python=python)}{hint_text}")

    def inner(item: Any, item_hint: Any, item_path: str) -> Any:
        return convert(item, item_hint, item_path, source=source, python=python)

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        shaped = [arm for arm in args if arm is not _NONE and _same_shape(value, arm, python)]
        if len(shaped) == 1 and _container(shaped[0]):  # its deeper error (layers[2]) is the useful one
            return inner(value, shaped[0], path)
        for arm in shaped:
            try:
                return inner(value, arm, path)
            except ColaError:
                continue
        raise mismatch()
    if hint is bool or hint is str or hint is _NONE:
        if not isinstance(value, hint):
            raise mismatch()
        return value
    if hint is int:
        if not _is_number(value, numbers.Integral if python else int):
            raise mismatch()
        return int(value)
    if hint is float:
        if not _is_number(value, numbers.Real if python else (int, float)):
            raise mismatch()
        return float(value)
    if hint is Path:
        if isinstance(value, Path):
            return value
        if python and isinstance(value, os.PathLike):
            return Path(value)
        if not isinstance(value, str) or not value:
            raise mismatch()
        return Path(value)
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in args):  # True is not 1 here
            raise mismatch()
        return value
    if _pairs(hint) and isinstance(value, Mapping):
        key_hint, value_hint = typing.get_args(args[0])
        return tuple((inner(k, key_hint, f"a key of {path}"), inner(v, value_hint, join(path, k)))
                     for k, v in value.items())
    if origin in (tuple, list):
        variadic = origin is list or args[-1:] == (Ellipsis,)
        if python and variadic and _accepts(args[0], str) and isinstance(value, (str, os.PathLike)):
            value = [value]  # one name or path, not its characters
        if not isinstance(value, (list, tuple)):
            raise mismatch()
        if variadic:
            items = [inner(v, args[0], join(path, i)) for i, v in enumerate(value)]
        elif len(value) != len(args):
            raise mismatch()
        else:
            items = [inner(v, a, join(path, i)) for i, (v, a) in enumerate(zip(value, args))]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise mismatch()
        return {inner(k, args[0], f"a key of {path}"): inner(v, args[1], join(path, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):  # a config object given whole (Python API)
            return value
        if python or not isinstance(value, Mapping):
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


def _same_shape(value: Any, hint: Any, python: bool = False) -> bool:
    """Whether `value` is the kind of thing `hint` describes (a list for a list, a mapping for a mapping, ...)."""
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        one_name = python and isinstance(value, (str, os.PathLike)) and _accepts(typing.get_args(hint)[0], str)
        return isinstance(value, (list, tuple)) or one_name or (_pairs(hint) and isinstance(value, Mapping))
    if origin in (dict, Mapping) or dataclasses.is_dataclass(hint):
        return isinstance(value, Mapping)
    if hint is float:
        return _is_number(value, numbers.Real)
    if hint is int:
        return _is_number(value, numbers.Integral)
    if hint is Path:
        return isinstance(value, (str, Path))
    if origin is Literal:
        return value in typing.get_args(hint)
    return isinstance(hint, type) and isinstance(value, hint)


def _is_number(value: Any, kind: Any) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_field_types(config: Any) -> None:
    """Check every field of the frozen dataclass `config` against its type hint, normalising it in place
    (`convert` with `python=True`); call it first in a config's `__post_init__`.

    Python does not enforce annotations, so `num_samples="8"` or `selection={"method": "random"}` would travel
    into a run and fail there as a raw TypeError or AttributeError. Raises ColaError naming the config, the
    field, what it takes and what it got; the first bad field wins.
    """
    hints = _hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        fitted = convert(value, hints.get(field.name, Any), field.name, source=type(config).__name__, python=True)
        if fitted is not value:
            object.__setattr__(config, field.name, fitted)  # frozen: the normalised value replaces the given one
