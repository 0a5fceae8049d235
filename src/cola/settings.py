"""The machinery of cola's one configuration system: typed settings whose fields carry their own CLI help.

Every group of settings (curation and its stages, each compression method, evaluation, the experiment) is a
frozen, keyword-only dataclass whose `__post_init__` calls `cola.schema.check_field_types` first. Its fields
are declared with `option(...)`, which records the help text and the valid choices, so that

- `build(cls, mapping)` reads a config file's mapping strictly (an unknown key is a one-line error listing the
  valid ones; nested settings are mappings and are built recursively), and
- `add_arguments(parser, cls)` makes the command line's flags from the same fields (help, choices, the default
  shown), and `from_arguments(cls, namespace)` reads them back,

and no settings are described twice. Only plain, bool, int, float and string fields, optional or not, and
tuples of them, become flags; a field with `cli=False`, or a field of a nested dataclass, is left to the
caller.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True, kw_only=True)
... class Demo:
...     bits: int = option(4, help="weight bits", choices=(2, 3, 4, 8))
>>> build(Demo, {"bits": 3}, source="demo").bits
3
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING
from typing import Any, TypeVar

from cola.errors import ColaError, unknown_choice
from cola.schema import convert_fields

T = TypeVar("T")
__all__ = ["option", "choices_of", "help_of", "build", "check_choices", "add_arguments", "from_arguments"]


def option(default: Any = MISSING, *, help: str, choices: Iterable[Any] | None = None,  # noqa: A002
           default_factory: Any = MISSING, flag: str | None = None, metavar: str | None = None,
           cli: bool = True) -> Any:
    """A settings field with its help text and valid choices (a mapping's keys are the choices, its values
    their descriptions). `flag` renames the command-line flag (default: `--FIELD`); `cli=False` keeps the
    field off the command line."""
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "flag": flag,
                "metavar": metavar, "cli": cli}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def help_of(cls: type, name: str) -> str:
    """The help text of field `name` of settings class `cls` ("" where it has none)."""
    return _field(cls, name).metadata.get("help", "")


def choices_of(cls: type, name: str) -> tuple[Any, ...] | None:
    """The valid choices of field `name` of settings class `cls`, or None where any value of its type goes."""
    return _field(cls, name).metadata.get("choices")


def _field(cls: type, name: str) -> dataclasses.Field:
    for field in dataclasses.fields(cls):
        if field.name == name:
            return field
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def check_choices(config: Any, *, what: str | None = None) -> None:
    """Raise ColaError (`unknown_choice`) for the first field of `config` whose value is not among the choices
    its `option(choices=...)` declares. Call it in `__post_init__` after `check_field_types`."""
    for field in dataclasses.fields(config):
        valid = field.metadata.get("choices")
        value = getattr(config, field.name)
        if valid is not None and value is not None and value not in valid:
            kind = what or field.name.replace("_", " ")
            raise unknown_choice(kind, value, [str(v) for v in valid])


def build(cls: type[T], data: Mapping[str, Any] | T, *, source: str, path: str = "") -> T:
    """An instance of settings class `cls` from a config file's mapping (or the instance itself).

    Every key must be a field (else ColaError listing the valid ones); every value is converted by its type
    hint (`cola.schema.convert`), nested settings from nested mappings; the class's own checks then run.
    """
    if isinstance(data, cls):
        return data
    return _instantiate(cls, convert_fields(data, cls, path, source=source))


def _instantiate(cls: type[T], values: dict[str, Any]) -> T:
    """`cls(**values)`, with nested settings (converted to dicts by `convert_fields`) built first."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type) and isinstance(value, dict):
            values[name] = _instantiate(hint, value)
    return cls(**values)


def _flag_type(hint: Any) -> tuple[Any, bool]:
    """(scalar type, repeated) of a field hint that can be a flag, or (None, False)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if hint in (bool, int, float, str):
        return hint, False
    if typing.get_origin(hint) is tuple:
        inner = typing.get_args(hint)
        if len(inner) == 2 and inner[1] is Ellipsis and inner[0] in (int, float, str):
            return inner[0], True
    return None, False


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                  exclude: Iterable[str] = (), defaults: Mapping[str, Any] | None = None) -> list[str]:
    """Add one flag per flag-able field of settings class `cls` to `parser`, with its help, its choices and
    its default shown; `defaults` overrides some defaults. A bool field that defaults to False becomes a switch
    (`--FIELD`), one that defaults to True a `--FIELD/--no-FIELD` pair. Returns the fields added."""
    hints = typing.get_type_hints(cls)
    skip = set(exclude)
    added = []
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if field.name in skip or not field.init or not meta.get("cli", True) or "help" not in meta:
            continue
        kind, repeated = _flag_type(hints[field.name])
        if kind is None:
            continue
        default = (defaults or {}).get(field.name, field.default if field.default is not MISSING
                                       else field.default_factory() if field.default_factory is not MISSING
                                       else None)
        flag = "--" + (meta.get("flag") or field.name)
        help_text = meta["help"] + ("" if kind is bool else f" (default: {_shown(default)})")
        common: dict[str, Any] = {"dest": field.name, "help": help_text}
        if kind is bool:
            action = argparse.BooleanOptionalAction if default else "store_true"
            parser.add_argument(flag, action=action, default=bool(default), **common)
        else:
            choices = meta.get("choices")
            parser.add_argument(flag, type=kind, default=list(default) if repeated and default else default,
                                choices=list(choices) if choices else None, metavar=meta.get("metavar"),
                                nargs="+" if repeated else None, **common)
        added.append(field.name)
    return added


def from_arguments(cls: type[T], namespace: argparse.Namespace, **fixed: Any) -> T:
    """An instance of `cls` from the flags `add_arguments` made (those present on `namespace`) and `fixed`
    values for the other fields (nested settings, derived values); the class's own checks run."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(fixed) - names
    if unknown:
        raise ColaError(f"{cls.__name__} has no field {sorted(unknown)[0]!r}")
    values = {name: getattr(namespace, name) for name in names if hasattr(namespace, name) and name not in fixed}
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    return cls(**values, **fixed)
