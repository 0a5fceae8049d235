"""One check of a frozen config's field values against its type hints, run at construction.

Python does not enforce annotations, so `num_samples="8"` or `selection={"method": "random"}` would travel
into a run and fail there as a raw TypeError or AttributeError. `check_field_types(self)`, called first in a
config's `__post_init__`, turns such values into one-line ColaErrors naming the field, and normalises the
few harmless spellings: a list for a tuple, an int for a float, a numpy integer for an int, and a single
string for a tuple of strings (one item, never its characters). A bool is not a number here, although
Python says `isinstance(True, int)`.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from collections import abc
from collections.abc import Callable
from typing import Any

from cola.errors import YAML_BOOLEAN_HINT, ColaError


class _Mismatch(Exception):
    """The value does not fit the hint (internal: turned into one ColaError per field)."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def describe_type(hint: Any) -> str:
    """A reader's name for a type hint: 'an integer', 'a sequence of strings', 'a SelectionConfig or None'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "any value"
    if hint is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a sequence of {_plural(args[0])}"
        return f"a ({', '.join(_bare(a) for a in args)}) tuple"
    if origin in (dict, abc.Mapping) or hint is dict:
        return "a mapping"
    names = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if dataclasses.is_dataclass(hint):
        return f"a {hint.__name__} (from {hint.__module__})"
    return f"a {getattr(hint, '__name__', str(hint))}"


def _bare(hint: Any) -> str:
    """'string' for str: the type's name without its article."""
    return describe_type(hint).removeprefix("an ").removeprefix("a ")


def _plural(hint: Any) -> str:
    names = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
    return names.get(hint) or f"{_bare(hint)}s"


# A scalar hint -> (does a value fit it, the value as the config keeps it). A bool is no number here.
_SCALARS: dict[type, tuple[Callable[[Any], bool], Callable[[Any], Any]]] = {
    bool: (lambda v: isinstance(v, bool), bool),
    int: (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), int),
    float: (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), float),
    str: (lambda v: isinstance(v, str), str),
}


def conform(value: Any, hint: Any) -> Any:
    """`value` as `hint` wants it (normalised as the module docstring says); raises _Mismatch otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return conform(value, arm)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is tuple:
        return _conform_tuple(value, args)
    if hint in _SCALARS:
        fits, keep = _SCALARS[hint]
        if fits(value):
            return keep(value)
        raise _Mismatch
    kind = abc.Mapping if origin in (dict, abc.Mapping) or hint is dict else hint
    if isinstance(kind, type):  # a config class, NoneType, a mapping
        if isinstance(value, kind):
            return value
        raise _Mismatch
    return value  # a hint this check does not model (a Protocol, a Callable): left to the config's own checks


def _conform_tuple(value: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    variadic = len(args) == 2 and args[1] is Ellipsis
    if variadic and args[0] is str and isinstance(value, str):
        return (value,)  # one name, not its characters
    if not isinstance(value, (tuple, list)):
        raise _Mismatch
    items = args[:1] * len(value) if variadic else args
    if len(items) != len(value):
        raise _Mismatch
    return tuple(conform(item, hint) for item, hint in zip(value, items))


def check_field_types(config: Any) -> None:
    """Check (and normalise in place) every field of the frozen dataclass `config` against its type hint.

    Raises ColaError naming the config, the field, what it takes and what it got; the first bad field wins.
    """
    hints = _hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        hint = hints.get(field.name, Any)
        try:
            fitted = conform(value, hint)
        except _Mismatch:
            yaml = YAML_BOOLEAN_HINT if isinstance(value, bool) and "a string" in describe_type(hint) else ""
            raise ColaError(f"{type(config).__name__} setting {field.name!r} must be {describe_type(hint)}, "
                            f"got {type(value).__name__} {_short(value)}{yaml}") from None
        if fitted is not value:
            object.__setattr__(config, field.name, fitted)  # frozen: the normalised value replaces the given one


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
