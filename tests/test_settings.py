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


@dataclass(frozen=True, kw_only=True)
class Stage:
    width: int = option(8, help="stage width", flag="stage_width")
    seed: int = option(42, help="derived", cli=False, derived="seed")
    spans: tuple[tuple[int, int], ...] = option((), help="spans", shown="all")

    def __post_init__(self) -> None:
        check_field_types(self)


@dataclass(frozen=True, kw_only=True)
class Run:
    seed: int = option(42, help="the one seed")
    on: bool = option(True, help="skip it", flag="no_on", group="ablations")
    stage: Stage = option(default_factory=Stage, help="a stage", group="stage")

    def __post_init__(self) -> None:
        check_field_types(self)


def _span(text: str) -> tuple[int, int]:
    head, _, tail = text.partition("-")
    return int(head), int(tail)


def test_nested_flags_overrides_inverted_switches_and_headings():
    parser = argparse.ArgumentParser()
    added = add_arguments(parser, Run, nested=True, overrides={"stage.spans": {"type": _span, "action": "append"}})
    assert added == ["seed", "on", "stage.width", "stage.spans"]  # the derived seed is not a flag
    text = " ".join(parser.format_help().split())
    assert "ablations: --no_on skip it" in text and "stage: --stage_width STAGE_WIDTH stage width (default: 8)" in text
    assert "spans (default: all)" in text
    args = parser.parse_args(["--no_on", "--stage_width", "3", "--spans", "1-2", "--spans", "4-5", "--seed", "7"])
    assert (getattr(args, "stage.width"), args.on) == (3, False)
    run = from_arguments(Run, args, **{"stage.seed": 7})
    assert run == Run(seed=7, on=False, stage=Stage(width=3, seed=7, spans=((1, 2), (4, 5))))
    with pytest.raises(ColaError, match="Stage has no field 'nope'"):
        from_arguments(Run, args, **{"stage.nope": 1})


def test_build_refuses_a_derived_field_inside_enclosing_settings_only():
    with pytest.raises(ColaError) as err:
        build(Run, {"stage": {"seed": 3}}, source="run file")
    assert str(err.value) == "run file: stage.seed is derived from the top-level `seed`: set `seed` instead"
    assert build(Stage, {"seed": 3}, source="stage file").seed == 3


def test_given_only_flags_parse_to_none_unless_given_and_leave_choices_to_the_config():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Demo, given_only=True)
    assert "weight bits (default: 4)" in parser.format_help()  # the help still shows the field's default
    args = parser.parse_args(["--bits", "5"])  # not refused by argparse: the config's check names the choices
    assert (args.bits, args.name, args.layers, args.fast, args.dedup) == (5, None, None, None, None)
    with pytest.raises(ColaError, match=r"unknown bits 5\. Valid choices: 2, 3, 4, 8"):
        Demo(bits=args.bits)
