"""The registry of compression methods: one registration line per method, and the validation of a user's choice.

Adding a method means one module (a `cola.compress.base.Method` subclass with its config class) and one line in
`METHODS` below. `configure` turns what a user gave (CLI flags, the Python API's keyword options, an experiment's
`methods:` entry) into the method's checked config before any model loads, so a typo fails at once.

This module loads no torch (the method modules import their heavy parts when they run), so the CLI can build
its flags from `METHODS[name].config` with `cola.settings.add_arguments`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cola.compress.base import Method, MethodConfig
from cola.compress.caldera.method import Caldera
from cola.compress.llmc.recipes import AWQ, GPTQ, RTN, SmoothQuant, SparseGPT, Wanda
from cola.compress.ria import RIA
from cola.errors import ColaError, unknown_choice

METHODS: dict[str, Method] = {method.name: method for method in (
    RTN(),
    GPTQ(),
    AWQ(),
    SmoothQuant(),
    SparseGPT(),
    Wanda(),
    RIA(),
    Caldera(),
)}

NOT_SUPPORTED = {"llm-pruner": "structured pruning with gradient importance and LoRA recovery",
                 "flatquant": "learned affine transforms before quantization"}


def method_named(name: str) -> Method:
    """The registered method called `name` (any case); ColaError listing the valid ones otherwise."""
    key = name.lower()
    if key in NOT_SUPPORTED:
        raise ColaError(f"method {name!r} ({NOT_SUPPORTED[key]}) is not supported yet. "
                        f"Valid choices: {', '.join(sorted(METHODS))}")
    if key not in METHODS:
        raise unknown_choice("compression method", name, METHODS)
    return METHODS[key]


def configure(method: str, options: Mapping[str, Any] | MethodConfig) -> MethodConfig:
    """The checked config of `method` from the options a user gave (None values count as not given), or the
    config itself: an option no method has, or one of another method, is a one-line ColaError listing the
    valid ones."""
    spec = method_named(method)
    if isinstance(options, MethodConfig):
        return spec.configure(options)
    known = {name for m in METHODS.values() for name in m.options}
    for name, value in options.items():
        if value is not None and name not in known:
            raise unknown_choice("compression option", name, known)
    return spec.configure(options)


# ------------------------------------------------------------------------------- compatibility: one flag table


@dataclass(frozen=True)
class Option:
    """One command-line option and the methods' field it sets (several methods share one: the same help)."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


def _scalar(hint: Any) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _option_table() -> dict[str, Option]:
    """Every command-line option of every method, in registry and field order, from the config classes."""
    table: dict[str, Option] = {}
    for method in METHODS.values():
        hints = typing.get_type_hints(method.config)
        for field in dataclasses.fields(method.config):
            if field.name in table or not field.metadata.get("cli", True):
                continue
            table[field.name] = Option(field.name, _scalar(hints[field.name]), field.default,
                                       field.metadata["help"], field.metadata.get("choices"))
    return table


# The flag table `cola compress` builds its method flags from (until it makes them with
# `cola.settings.add_arguments` from each `METHODS[name].config`) and the experiment config's option types.
OPTIONS: dict[str, Option] = _option_table()
