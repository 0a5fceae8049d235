"""The one generic field-type check of the frozen configs: wrong types are one-line ColaErrors at construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from cola.config import CurateConfig, ProcessConfig, SelectionConfig
from cola.errors import ColaError
from cola.field_types import check_field_types, describe_type
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
    (dict(count="8"), "Sample setting 'count' must be an integer, got str '8'"),
    (dict(count=True), "Sample setting 'count' must be an integer, got bool True"),
    (dict(count=2.0), "Sample setting 'count' must be an integer, got float 2.0"),
    (dict(ratio=False), "Sample setting 'ratio' must be a number, got bool False"),
    (dict(ratio="0.5"), "Sample setting 'ratio' must be a number, got str '0.5'"),
    (dict(flag=1), "Sample setting 'flag' must be True or False, got int 1"),
    (dict(flag="no"), "Sample setting 'flag' must be True or False, got str 'no'"),
    (dict(name=None), "Sample setting 'name' must be a string, got NoneType None"),
    (dict(name=False), "Sample setting 'name' must be a string, got bool False (YAML reads an unquoted "
                       "off/on/yes/no as a boolean: quote it)"),
    (dict(names=[None]), "Sample setting 'names' must be a sequence of strings, got list [None]"),
    (dict(names={"a": 1}), "Sample setting 'names' must be a sequence of strings, got dict {'a': 1}"),
    (dict(pairs=[("a", 1, 2)]), "Sample setting 'pairs' must be a sequence of (string, number) tuples, got list"),
    (dict(pairs=("a", 1.0)), "Sample setting 'pairs' must be a sequence of (string, number) tuples, got tuple"),
    (dict(layers=[0, "1"]), "Sample setting 'layers' must be a sequence of integers or None, got list [0, '1']"),
    (dict(nested={"method": "random"}),
     "Sample setting 'nested' must be a SelectionConfig (from cola.config), got dict {'method': 'random'}"),
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


def test_describe_type() -> None:
    assert describe_type(int) == "an integer"
    assert describe_type(tuple[int, ...] | None) == "a sequence of integers or None"
    assert describe_type(tuple[tuple[str, str], ...]) == "a sequence of (string, string) tuples"
    assert describe_type(SelectionConfig) == "a SelectionConfig (from cola.config)"


# --- the real configs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build, message", [
    (lambda: CurateConfig(num_samples="8"), "CurateConfig setting 'num_samples' must be an integer, got str '8'"),
    (lambda: CurateConfig(sequence_length=None),
     "CurateConfig setting 'sequence_length' must be an integer, got NoneType None"),
    (lambda: CurateConfig(selection={"method": "random"}),
     "CurateConfig setting 'selection' must be a SelectionConfig (from cola.config), got dict"),
    (lambda: CurateConfig(process={"enabled": False}),
     "CurateConfig setting 'process' must be a ProcessConfig (from cola.config), got dict"),
    (lambda: CurateConfig(domain={"token_weight": 1}),
     "CurateConfig setting 'domain' must be a DomainConfig (from cola.stages.domain), got dict"),
    (lambda: CurateConfig(datasets=[None]), "CurateConfig setting 'datasets' must be a sequence of strings"),
    (lambda: CurateConfig(stage1="no"), "CurateConfig setting 'stage1' must be True or False, got str 'no'"),
    (lambda: CurateConfig(num_samples=True), "CurateConfig setting 'num_samples' must be an integer, got bool"),
    (lambda: CurateConfig(references={"math": "x.jsonl"}),
     "CurateConfig setting 'references' must be a sequence of (string, string) tuples, got dict"),
    (lambda: CurateConfig(datasets=("gsm8k", " ")), "an empty dataset name in datasets ['gsm8k', ' ']"),
    (lambda: CurateConfig(target_capabilities=("math", "math")), "target capability 'math' given twice"),
    (lambda: CurateConfig(references=(("math", "a.jsonl"), ("math", "b.jsonl"))),
     "--reference capability 'math' given twice"),
    (lambda: SelectionConfig(projection_dim=64.0), "SelectionConfig setting 'projection_dim' must be an integer"),
    (lambda: SelectionConfig(layers=[0, "1"]), "SelectionConfig setting 'layers' must be a sequence of integers"),
    (lambda: ProcessConfig(enabled=0), "ProcessConfig setting 'enabled' must be True or False, got int 0"),
    (lambda: ProcessConfig(filters=None), "ProcessConfig setting 'filters' must be a FilterConfig"),
    (lambda: DomainConfig(token_weight="0.3"), "DomainConfig setting 'token_weight' must be a number, got str"),
    (lambda: DomainConfig(reference_clusters=True), "DomainConfig setting 'reference_clusters' must be an integer"),
])
def test_config_types_are_checked_at_construction(build, message) -> None:
    with pytest.raises(ColaError) as err:
        build()
    assert str(err.value).startswith(message)


def test_replace_is_checked_too() -> None:
    with pytest.raises(ColaError, match="'num_samples' must be an integer, got str '8'"):
        dataclasses.replace(CurateConfig(), num_samples="8")


def test_configs_accept_their_documented_spellings() -> None:
    config = CurateConfig(datasets="gsm8k", target_capabilities="math", num_samples=np.int32(4),
                          capability_weights=[("math", 1)], references=[["math", "gsm8k"]])
    assert config.datasets == ("gsm8k",) and config.target_capabilities == ("math",)
    assert config.num_samples == 4 and config.capability_weights == (("math", 1.0),)
    assert config.references == (("math", "gsm8k"),)
    assert SelectionConfig(layers=[1, 2]).layers == (1, 2)
    assert CurateConfig().as_dict() == CurateConfig().as_dict()  # the defaults pass unchanged
