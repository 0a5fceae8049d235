"""The registry of compression methods: one registration line per method, and the validation of a user's choice.

Adding a method means one module (a `cola.compress.base.Method` subclass with its config class) and one line in
`REGISTERED` below. `configure` turns what a user gave (CLI flags, the Python API's keyword options, an experiment's
`methods:` entry) into the method's checked config before any model loads, so a typo fails at once.

This module loads no torch (the method modules import their heavy parts when they run), so the CLI can build
its flags from `METHODS[name].config` with `cola.settings.add_arguments`.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Mapping
from typing import Any

from cola.compress.base import Method, MethodConfig
from cola.errors import unknown_choice

# The registry: one line per method, "module:Class" of its `Method` subclass. A method module imports its heavy
# parts (torch, llm-compressor) only when it runs, so building the registry loads no torch.
REGISTERED = (
    "cola.compress.llmc.recipes:RTN",
    "cola.compress.llmc.recipes:GPTQ",
    "cola.compress.llmc.recipes:AWQ",
    "cola.compress.llmc.recipes:SmoothQuant",
    "cola.compress.llmc.recipes:SparseGPT",
    "cola.compress.llmc.recipes:Wanda",
    "cola.compress.ria:RIA",
    "cola.compress.caldera.method:Caldera",
    "cola.compress.flatquant.method:FlatQuant",
    "cola.compress.llm_pruner.method:LLMPruner",
)


def load_method(path: str) -> Method:
    """The method a registry line names ("module:Class"), instantiated."""
    module, _, name = path.partition(":")
    method = getattr(importlib.import_module(module), name)()
    if not isinstance(method, Method):
        raise TypeError(f"{path} is not a cola.compress.base.Method")
    return method


METHODS: dict[str, Method] = {method.name: method for method in map(load_method, REGISTERED)}


def method_named(name: str) -> Method:
    """The registered method called `name` (any case); ColaError listing the valid ones otherwise."""
    key = name.lower()
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


def option_hint(name: str) -> Any:
    """The type hint of option `name` in the configs of the methods that have it (methods sharing an option
    declare it alike), or Any for a name no method has: how a config file's value for it is read."""
    for method in METHODS.values():
        if name in method.options:
            return typing.get_type_hints(method.config)[name]
    return Any
