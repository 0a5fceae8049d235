"""cola.settings: fields that carry their help and choices, one strict loader, flags made from the fields."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from cola.errors import ColaError
from cola.schema import check_field_types
from cola.settings import add_arguments, build, check_choices, choices_of, from_arguments, help_of, option


@dataclass(frozen=True, kw_only=True)
class Inner:
    rate: float = option(0.5, help="a fraction")

    def __post_init__(self) -> None:
        check_field_types(self)


@dataclass(frozen=True, kw_only=True)
class Demo:
    bits: int = option(4, help="weight bits", choices=(2, 3, 4, 8))
    name: str | None = option(None, help="a name")
    layers: tuple[int, ...] = option((0, 1), help="layer indices")
    fast: bool = option(False, help="go fast")
    dedup: bool = option(True, help="drop duplicates")
    hidden: int = option(7, help="not a flag", cli=False)
    inner: Inner = option(default_factory=Inner, help="nested")

    def __post_init__(self) -> None:
        check_field_types(self)
        check_choices(self)


def test_build_converts_nested_mappings_and_runs_the_checks():
    demo = build(Demo, {"bits": 3, "layers": [2, 5], "inner": {"rate": 1}}, source="demo file")
    assert demo == Demo(bits=3, layers=(2, 5), inner=Inner(rate=1.0))
    assert isinstance(demo.inner.rate, float)


def test_build_refuses_an_unknown_key_naming_the_valid_ones():
    with pytest.raises(ColaError, match=r"unknown key in demo file `top level` 'bitz'.*Did you mean 'bits'.*"
                                        r"Valid choices: bits, dedup, fast, hidden, inner, layers, name"):
        build(Demo, {"bitz": 3}, source="demo file")


def test_choices_are_checked_at_construction():
    with pytest.raises(ColaError, match=r"unknown bits 5\. Valid choices: 2, 3, 4, 8"):
        Demo(bits=5)
    assert choices_of(Demo, "bits") == (2, 3, 4, 8)
    assert help_of(Demo, "name") == "a name"


def test_flags_are_made_from_the_fields_and_read_back():
    parser = argparse.ArgumentParser()
    added = add_arguments(parser, Demo, defaults={"bits": 8})
    assert added == ["bits", "name", "layers", "fast", "dedup"]  # cli=False and nested settings are not flags
    help_text = parser.format_help()
    assert "weight bits (default: 8)" in help_text and "layer indices (default: 0 1)" in help_text
    assert "--no-dedup" in help_text
    args = parser.parse_args(["--layers", "3", "4", "--fast", "--no-dedup"])
    demo = from_arguments(Demo, args, inner=Inner(rate=0.25))
    assert demo == Demo(bits=8, layers=(3, 4), fast=True, dedup=False, inner=Inner(rate=0.25))
    with pytest.raises(SystemExit):
        parser.parse_args(["--bits", "5"])  # argparse refuses a value outside the choices


def test_from_arguments_refuses_a_fixed_value_for_no_field():
    with pytest.raises(ColaError, match="Demo has no field 'nope'"):
        from_arguments(Demo, argparse.Namespace(), nope=1)
