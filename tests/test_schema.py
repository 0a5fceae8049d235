"""cola.schema: parsed YAML values checked against type hints, with the key path in every error."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import pytest

from cola.errors import ColaError
from cola.schema import convert, convert_fields, describe


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner:
    size: int = 1
    mode: Literal["a", "b"] = "a"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outer:
    name: str = "x"
    where: Path | None = None
    pair: tuple[int, str] = (0, "")
    weights: tuple[tuple[str, float], ...] = ()
    inner: Inner = dataclasses.field(default_factory=Inner)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def test_values_come_back_in_the_hints_shape():
    converted = convert_fields({"where": "data", "pair": [3, "z"], "weights": {"math": 1, "code": 0.5},
                                "inner": {"size": 2, "mode": "b"}, "extra": {"k": [1]}}, Outer, "", source="t")
    assert converted == {"where": Path("data"), "pair": (3, "z"), "weights": (("math", 1.0), ("code", 0.5)),
                         "inner": {"size": 2, "mode": "b"}, "extra": {"k": [1]}}
    assert isinstance(converted["weights"][0][1], float)
    assert convert([["math", 1]], tuple[tuple[str, float], ...], "w", source="t") == (("math", 1.0),)
    assert convert(Inner(size=3), Inner, "inner", source="t") == Inner(size=3)  # an object given whole


@pytest.mark.parametrize(("data", "message"), [
    ({"pair": [3]}, "t: pair must be a list of 2 items, got [3] (a list)"),
    ({"pair": [3, 4]}, "t: pair[1] must be a string, got 4 (an integer)"),
    ({"inner": {"mode": "c"}}, "t: inner.mode must be one of 'a', 'b', got 'c' (a string)"),
    ({"inner": {"size": True}}, "t: inner.size must be an integer, got True (a boolean)"),
    ({"weights": {"math": "x"}}, "t: weights.math must be a number, got 'x' (a string)"),
    ({"where": ""}, "t: where must be a path (a string) or null, got '' (a string)"),
    ({"name": "y" * 100}, None),
    ({"name": ["y" * 100]}, "t: name must be a string, got ['" + "y" * 55 + "... (a list)"),
    ({"extra": {1: 2}}, "t: a key of extra must be a string, got 1 (an integer)"),
])
def test_a_mismatch_names_path_type_and_value(data, message):
    if message is None:
        assert convert_fields(data, Outer, "", source="t") == data
        return
    with pytest.raises(ColaError) as caught:
        convert_fields(data, Outer, "", source="t")
    assert str(caught.value) == message


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(ColaError, match=r"unknown key in t `inner` 'sise'. Did you mean 'size'\? Valid choices: mode, "
                                        r"size"):
        convert_fields({"inner": {"sise": 1}}, Outer, "", source="t")
    with pytest.raises(ColaError, match="^t: the top level must be a mapping, got 'x' \\(a string\\)$"):
        convert_fields("x", Outer, "", source="t")


def test_descriptions():
    assert describe(tuple[int, ...]) == "a list of integers"
    assert describe(dict[str, tuple[float, ...]] | None) == "a mapping of strings to lists of numbers or null"
    assert describe(tuple[tuple[str, float], ...]) == "a mapping of strings to numbers"
    assert describe(list[Inner]) == "a list of mappings"
