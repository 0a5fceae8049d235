"""The machinery of cola's one configuration system: typed settings whose fields carry their own CLI help.

Every group of settings (curation and its stages, each compression method, evaluation, the experiment) is a
frozen, keyword-only dataclass whose `__post_init__` calls `cola.schema.check_field_types` first. Its fields
are declared with `option(...)`, which records the help text and the valid choices, so that

- `build(cls, mapping)` reads a config file's mapping strictly (an unknown key is a one-line error listing the
  valid ones; nested settings are mappings and are built recursively), and
- `add_arguments(parser, cls)` makes the command line's flags from the same fields (help, choices, the default
  shown), and `from_arguments(cls, namespace)` reads them back,

and no settings are described twice. Only plain, bool, int, float and string fields, optional or not, and
tuples of them, become flags (others too where the caller gives the flag a `type`); a field with `cli=False`
is left to the caller, and so are the fields of nested settings unless `add_arguments(..., nested=True)` asks
for them (their flags are their own names, their destinations dotted paths such as `selection.pooling`).

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
from cola.schema import convert_fields, join

T = TypeVar("T")
__all__ = ["option", "choices_of", "default_of", "help_of", "build", "check_choices", "add_arguments", "from_arguments"]


def option(default: Any = MISSING, *, help: str, choices: Iterable[Any] | None = None,  # noqa: A002
           default_factory: Any = MISSING, flag: str | None = None, metavar: str | None = None,
           cli: bool = True, group: str | None = None, derived: str | None = None, shown: str | None = None) -> Any:
    """A settings field with its help text and valid choices (a mapping's keys are the choices, its values
    their descriptions). `flag` renames the command-line flag (default: `--FIELD`; a `no_...` flag of a bool
    that defaults to True is a switch that turns it off); `cli=False` keeps the field off the command line;
    `group` names the `--help` section its flag (or, for nested settings, their flags) appear in; `derived`
    names the setting of the enclosing settings this field is computed from, so a config file may not set it
    inside that enclosing settings (`build` refuses it, naming the setting to use); `shown` is how `--help` shows
    the default where its value would mislead (None meaning "every layer")."""
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "flag": flag,
                "metavar": metavar, "cli": cli, "group": group, "derived": derived, "shown": shown}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def help_of(cls: type, name: str) -> str:
    """The help text of field `name` of settings class `cls` ("" where it has none)."""
    return _field(cls, name).metadata.get("help", "")


def choices_of(cls: type, name: str) -> tuple[Any, ...] | None:
    """The valid choices of field `name` of settings class `cls`, or None where any value of its type goes."""
    return _field(cls, name).metadata.get("choices")


def default_of(cls: type, name: str) -> Any:
    """The default of field `name` of settings class `cls` (None where it has none)."""
    return _field_default(_field(cls, name))


def shown_default_of(cls: type, name: str) -> Any:
    """How `--help` shows the default of field `name`: its `shown` text where it has one, else its default (None
    where it has none)."""
    field = _field(cls, name)
    return field.metadata.get("shown") or _field_default(field)


def _field(cls: type, name: str) -> dataclasses.Field:
    for field in dataclasses.fields(cls):
        if field.name == name:
            return field
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def check_choices(config: Any, *, what: str | None = None, as_flag: bool = False) -> None:
    """Raise ColaError for the first field of `config` whose value is not among the choices its
    `option(choices=...)` declares: `unknown_choice`'s message (close matches, the choices sorted), or with
    `as_flag` the flag's (`--bits 5 is not supported. Valid choices: 2, 3, 4, 8`, in declared order), as a
    compression method's options read. Call it in `__post_init__` after `check_field_types`."""
    for field in dataclasses.fields(config):
        valid = field.metadata.get("choices")
        value = getattr(config, field.name)
        if valid is None or value is None or value in valid:
            continue
        if as_flag:
            raise ColaError(f"--{field.name} {value!r} is not supported. Valid choices: {', '.join(map(str, valid))}")
        raise unknown_choice(what or field.name.replace("_", " "), value, [str(v) for v in valid])


def build(cls: type[T], data: Mapping[str, Any] | T, *, source: str, path: str = "") -> T:
    """An instance of settings class `cls` from a config file's mapping (or the instance itself).

    Every key must be a field (else ColaError listing the valid ones); every value is converted by its type
    hint (`cola.schema.convert`), nested settings from nested mappings; the class's own checks then run.
    """
    if isinstance(data, cls):
        return data
    return _instantiate(cls, convert_fields(data, cls, path, source=source), source=source, path=path)


def _instantiate(cls: type[T], values: dict[str, Any], *, source: str, path: str, nested: bool = False) -> T:
    """`cls(**values)`, with nested settings (converted to dicts by `convert_fields`) built first; inside
    nested settings a field derived from the enclosing settings is refused."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        derived = field.metadata.get("derived")
        if nested and derived and field.name in values:
            raise ColaError(f"{source}: {join(path, field.name)} is derived from the top-level `{derived}`: set "
                            f"`{derived}` instead")
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type) and isinstance(value, dict):
            values[name] = _instantiate(hint, value, source=source, path=join(path, name), nested=True)
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


def _field_default(field: dataclasses.Field) -> Any:
    """The default value of a dataclass field (None where it has none)."""
    if field.default is not MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not MISSING else None


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                  exclude: Iterable[str] = (), defaults: Mapping[str, Any] | None = None, nested: bool = False,
                  overrides: Mapping[str, Mapping[str, Any]] | None = None, prefix: str = "",
                  group: str | None = None, given_only: bool = False) -> list[str]:
    """Add one flag per flag-able field of settings class `cls` to `parser`, with its help, its choices and
    its default shown; `defaults` overrides some defaults. A bool field that defaults to False becomes a switch
    (`--FIELD`), one that defaults to True a `--FIELD/--no-FIELD` pair, or a `--no_...` switch where its
    `flag` says so, and an optional bool that defaults to None (decided by its settings from the others) the
    switches `--FIELD` and `--no_FIELD` (never both), None when neither is given. Returns the fields added
    (dotted paths for nested ones).

    `nested=True` adds the flags of nested settings too (destination `FIELD.SUBFIELD`); `exclude`,
    `defaults` and `overrides` take such dotted paths. `overrides[path]` is merged into the field's
    `add_argument` keywords: a `type` that parses the text (then any field type can be a flag), an `action`
    such as "append", a `metavar` or a `help`. A field's `group` (inherited by nested settings) puts its
    flag under that `--help` heading. `given_only=True` parses every flag to None unless given (the help still
    shows the field's default), for callers that must tell what the user gave from what a config fills in.
    """
    hints = typing.get_type_hints(cls)
    skip, overrides, defaults = set(exclude), overrides or {}, defaults or {}
    added = []
    for field in dataclasses.fields(cls):
        meta, path = field.metadata, prefix + field.name
        if path in skip or not field.init or not meta.get("cli", True) or "help" not in meta:
            continue
        hint = hints[field.name]
        where = _group(parser, meta.get("group") or group)
        if nested and dataclasses.is_dataclass(hint) and isinstance(hint, type):
            added += add_arguments(parser, hint, exclude=skip, defaults=defaults, nested=True, overrides=overrides,
                                   prefix=path + ".", group=meta.get("group") or group, given_only=given_only)
            continue
        kind, repeated = _flag_type(hint)
        extra = dict(overrides.get(path, {}))
        if "type" in extra:
            repeated = False  # the caller's type parses the whole text
        elif kind is None:
            continue
        default = defaults.get(path, _field_default(field))
        name = meta.get("flag") or field.name
        flag = "--" + name
        shown = "" if kind is bool else f" (default: {meta.get('shown') or _shown(default)})"
        common: dict[str, Any] = {"dest": path, "help": meta["help"] + shown,
                                  "metavar": meta.get("metavar") or (name.upper() if prefix else None)}
        if kind is bool and "type" not in extra and default is None:  # on, off, or the field's own rule (None)
            del common["metavar"]
            pair = where.add_mutually_exclusive_group()  # `--FIELD --no_FIELD` is an error, not the last one wins
            pair.add_argument(flag, action="store_const", const=True, default=None, **{**common, **extra})
            pair.add_argument(f"--no_{name}", action="store_const", const=False, dest=path, default=None,
                              help=f"turn {flag} off (default: {flag}'s rule)")
        elif kind is bool and "type" not in extra:
            action = (argparse.BooleanOptionalAction if default and not flag.startswith("--no_")
                      else "store_false" if default else "store_true")
            del common["metavar"]
            where.add_argument(flag, action=action, default=None if given_only else bool(default),
                               **{**common, **extra})
        else:
            choices = meta.get("choices")
            value = list(default) if repeated and default else default
            if extra.get("action") == "append":
                value = list(default or ())
            if given_only:
                value = None
            if choices and given_only:  # the config's own check refuses a bad value, with cola's one-line error
                common["metavar"], choices = "{" + ",".join(map(str, choices)) + "}", None
            elif choices:
                common["metavar"] = None  # argparse shows {a,b,c}
            where.add_argument(flag, **{"type": kind, "default": value, "choices": list(choices) if choices else None,
                                        "nargs": "+" if repeated else None, **common, **extra})
        added.append(path)
    return added


def _group(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
           title: str | None) -> argparse.ArgumentParser | argparse._ArgumentGroup:
    """The argument group of `parser` titled `title` (made on first use), or `parser` itself."""
    if title is None or not isinstance(parser, argparse.ArgumentParser):
        return parser
    for existing in parser._action_groups:
        if existing.title == title:
            return existing
    return parser.add_argument_group(title)


def from_arguments(cls: type[T], namespace: argparse.Namespace, *, prefix: str = "", **fixed: Any) -> T:
    """An instance of `cls` from the flags `add_arguments` made (those present on `namespace`) and `fixed`
    values for the other fields (nested settings, derived values; `process.filters.dedup_exact` names a field
    of nested settings, which are then built from the flags too); the class's own checks run."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    own = {key: value for key, value in fixed.items() if "." not in key}
    deeper: dict[str, dict[str, Any]] = {}
    for key, value in fixed.items():
        head, dot, rest = key.partition(".")
        if dot:
            deeper.setdefault(head, {})[rest] = value
    unknown = (set(own) | set(deeper)) - names
    if unknown:
        raise ColaError(f"{cls.__name__} has no field {sorted(unknown)[0]!r}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name in names - set(own):
        hint, dest = hints[name], prefix + name
        if hasattr(namespace, dest):
            values[name] = _frozen(getattr(namespace, dest))
        elif (dataclasses.is_dataclass(hint) and isinstance(hint, type)
              and (name in deeper or any(key.startswith(dest + ".") for key in vars(namespace)))):
            values[name] = from_arguments(hint, namespace, prefix=dest + ".", **deeper.get(name, {}))
    return cls(**values, **own)


def _frozen(value: Any) -> Any:
    """Lists (argparse's nargs and append values) as tuples, nested ones too."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value
