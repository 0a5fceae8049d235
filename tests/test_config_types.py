"""The frozen configs check their field types at construction (cola.schema.check_field_types): wrong types are
one-line ColaErrors naming the config and the field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from cola.config import CurateConfig, ProcessConfig, SelectionConfig
from cola.errors import ColaError
from cola.schema import check_field_types, describe
from cola.stages.domain import DomainConfig


@dataclass(frozen=True, kw_only=True)
class Sample:
    count: int = 1
    ratio: float = 0.5
    flag: bool = False
    name: str = "x"
    names: tuple[str, ...] = ()
    pairs: tuple[tuple[str, float], ...] = ()
    layers: tuple[int, ...] | None = None
    nested: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)

    def __post_init__(self) -> None:
        check_field_types(self)


@pytest.mark.parametrize("kwargs, message", [
    (dict(count="8"), "Sample: count must be an integer, got '8' (a string)"),
    (dict(count=True), "Sample: count must be an integer, got True (a boolean)"),
    (dict(count=2.0), "Sample: count must be an integer, got 2.0 (a number)"),
    (dict(ratio=False), "Sample: ratio must be a number, got False (a boolean)"),
    (dict(ratio="0.5"), "Sample: ratio must be a number, got '0.5' (a string)"),
    (dict(flag=1), "Sample: flag must be True or False, got 1 (an integer)"),
    (dict(flag="no"), "Sample: flag must be True or False, got 'no' (a string)"),
    (dict(name=None), "Sample: name must be a string, got None"),
    (dict(name=False), "Sample: name must be a string, got False (a boolean) (YAML reads an unquoted "
                       "off/on/yes/no as a boolean: quote it)"),
    (dict(names=[None]), "Sample: names[0] must be a string, got None"),
    (dict(names={"a": 1}), "Sample: names must be a list of strings, got {'a': 1} (a mapping)"),
    (dict(pairs=[("a", 1, 2)]), "Sample: pairs[0] must be a list of 2 items, got ('a', 1, 2) (a list)"),
    (dict(pairs=("a", 1.0)), "Sample: pairs[0] must be a list of 2 items, got 'a' (a string)"),
    (dict(layers=[0, "1"]), "Sample: layers[1] must be an integer, got '1' (a string)"),
    (dict(nested={"method": "random"}),
     "Sample: nested must be a SelectionConfig, got {'method': 'random'} (a mapping)"),
])
def test_a_wrong_type_names_the_field_what_it_takes_and_what_it_got(kwargs, message) -> None:
    with pytest.raises(ColaError) as err:
        Sample(**kwargs)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_harmless_spellings_are_normalised() -> None:
    sample = Sample(count=np.int64(3), ratio=1, names="math", pairs=[["a", 1]], layers=[0, -1])
    assert sample.count == 3 and type(sample.count) is int
    assert sample.ratio == 1.0 and type(sample.ratio) is float
    assert sample.names == ("math",)  # one name, not ('m', 'a', 't', 'h')
    assert sample.pairs == (("a", 1.0),) and sample.layers == (0, -1)
    assert Sample(names=["a", "b"]).names == ("a", "b") and Sample(layers=None).layers is None


def test_types_in_words_for_python_objects() -> None:
    assert describe(int, python=True) == "an integer"
    assert describe(tuple[int, ...] | None, python=True) == "a list of integers or None"
    assert describe(tuple[tuple[str, str], ...], python=True) == "a mapping of strings to strings"
    assert describe(SelectionConfig, python=True) == "a SelectionConfig"
    assert describe(SelectionConfig) == "a mapping"  # in a config file


# --- the real configs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build, message", [
    (lambda: CurateConfig(num_samples="8"), "CurateConfig: num_samples must be an integer, got '8' (a string)"),
    (lambda: CurateConfig(sequence_length=None),
     "CurateConfig: sequence_length must be an integer, got None"),
    (lambda: CurateConfig(selection={"method": "random"}),
     "CurateConfig: selection must be a SelectionConfig, got {'method': 'random'} (a mapping)"),
    (lambda: CurateConfig(process={"enabled": False}),
     "CurateConfig: process must be a ProcessConfig, got {'enabled': False} (a mapping)"),
    (lambda: CurateConfig(domain={"token_weight": 1}),
     "CurateConfig: domain must be a DomainConfig, got {'token_weight': 1} (a mapping)"),
    (lambda: CurateConfig(datasets=[None]), "CurateConfig: datasets[0] must be a string, got None"),
    (lambda: CurateConfig(stage1="no"), "CurateConfig: stage1 must be True or False, got 'no' (a string)"),
    (lambda: CurateConfig(num_samples=True), "CurateConfig: num_samples must be an integer, got True"),
    (lambda: CurateConfig(references=[("math",)]),
     "CurateConfig: references[0] must be a list of 2 items, got ('math',) (a list)"),
    (lambda: CurateConfig(datasets=("gsm8k", " ")), "an empty dataset name in datasets ['gsm8k', ' ']"),
    (lambda: CurateConfig(target_capabilities=("math", "math")), "target capability 'math' given twice"),
    (lambda: CurateConfig(references=(("math", "a.jsonl"), ("math", "b.jsonl"))),
     "--reference capability 'math' given twice"),
    (lambda: SelectionConfig(projection_dim=64.0), "SelectionConfig: projection_dim must be an integer"),
    (lambda: SelectionConfig(layers=[0, "1"]), "SelectionConfig: layers[1] must be an integer"),
    (lambda: ProcessConfig(enabled=0), "ProcessConfig: enabled must be True or False, got 0 (an integer)"),
    (lambda: ProcessConfig(filters=None), "ProcessConfig: filters must be a FilterConfig, got None"),
    (lambda: DomainConfig(token_weight="0.3"), "DomainConfig: token_weight must be a number, got '0.3'"),
    (lambda: DomainConfig(reference_clusters=True), "DomainConfig: reference_clusters must be an integer"),
])
def test_config_types_are_checked_at_construction(build, message) -> None:
    with pytest.raises(ColaError) as err:
        build()
    assert str(err.value).startswith(message)


def test_replace_is_checked_too() -> None:
    with pytest.raises(ColaError, match="num_samples must be an integer, got '8'"):
        dataclasses.replace(CurateConfig(), num_samples="8")


def test_configs_accept_their_documented_spellings() -> None:
    config = CurateConfig(datasets="gsm8k", target_capabilities="math", num_samples=np.int32(4),
                          capability_weights=[("math", 1)], references=[["math", "gsm8k"]])
    assert config.datasets == ("gsm8k",) and config.target_capabilities == ("math",)
    assert config.num_samples == 4 and config.capability_weights == (("math", 1.0),)
    assert config.references == (("math", "gsm8k"),)
    assert SelectionConfig(layers=[1, 2]).layers == (1, 2)
    assert CurateConfig().as_dict() == CurateConfig().as_dict()  # the defaults pass unchanged
