"""The frozen configs check their field types at construction (cola.schema.check_field_types): wrong types are
one-line ColaErrors naming the config and the field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from cola.config import CurateConfig, DomainConfig, ProcessConfig, SelectionConfig, stage_seeds
from cola.errors import ColaError
from cola.schema import check_field_types, describe
from cola.settings import build

from tests.conftest import byte_tokenizer, tiny_llama


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
    (lambda: CurateConfig(stage1="no"), "CurateConfig: stage1 must be True or False or None, got 'no' (a string)"),
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


# --- one seed ----------------------------------------------------------------------------------------------------

def _stage_seeds(config: CurateConfig) -> tuple[int, ...]:
    return (config.seed, config.selection.seed, config.process.filters.seed, config.process.reasoning.seed,
            config.domain.seed)


def test_one_seed_sets_every_stage_seed_the_same_way_for_every_entry_point() -> None:
    """`cola curate --seed 7`, COLA(seed=7), COLA.from_config and an experiment cell of seed 7 seed every stage
    with 7 (before, a cell of seed 7 seeded Stage 3 only; the filters, reasoning and Stage 1 kept 42)."""
    from cola.api import COLA
    from cola.cli import build_parser, curate_config
    from cola.experiment.strategies import strategy_config

    assert tuple(stage_seeds(7)) == (7, 7, 7, 7, 7)
    cli = curate_config(build_parser().parse_args(["curate", "--output_dir", "o", "--seed", "7"]))
    model, tokenizer = tiny_llama(), byte_tokenizer()
    api = COLA(model=model, tokenizer=tokenizer, seed=7).settings
    from_config = COLA.from_config(CurateConfig(seed=7), model=model, tokenizer=tokenizer,
                                   output_dir="cola_output").settings
    cell = strategy_config("cola", datasets=["embedded"], num_samples=4, sequence_length=32, seed=7)
    for config in (cli, api, from_config, cell):
        assert _stage_seeds(config) == (7, 7, 7, 7, 7)
        assert config.seeds == stage_seeds(7)
    assert _stage_seeds(CurateConfig()) == (42, 42, 42, 42, 42)


def test_the_stage_seeds_follow_the_top_level_seed() -> None:
    config = CurateConfig(seed=3, selection=SelectionConfig(seed=3, method="activations", pooling="last"))
    assert _stage_seeds(config) == (3, 3, 3, 3, 3) and config.selection.pooling == "last"
    assert _stage_seeds(dataclasses.replace(config, seed=5)) == (5, 5, 5, 5, 5)  # re-derived
    assert _stage_seeds(dataclasses.replace(config, seed=5, domain=DomainConfig())) == (5, 5, 5, 5, 5)
    with pytest.raises(ColaError) as err:  # before, this seeded Stage 3 (and sampling) with 9, the rest with 42
        CurateConfig(selection=SelectionConfig(seed=9))
    assert str(err.value) == ("selection.seed 9 is not the run's seed 42: every stage's seed is derived from `seed` "
                              "(cola.config.stage_seeds); set seed=9 instead")
    with pytest.raises(ColaError, match="^domain.seed 1 is not the run's seed 3"):
        dataclasses.replace(config, domain=DomainConfig(seed=1))


def test_a_stage_seed_in_a_config_file_is_refused_naming_the_top_level_seed() -> None:
    with pytest.raises(ColaError) as err:
        build(CurateConfig, {"selection": {"seed": 3}}, source="curation file")
    assert str(err.value) == "curation file: selection.seed is derived from the top-level `seed`: set `seed` instead"
    with pytest.raises(ColaError, match=r"^curation file: process\.filters\.seed is derived"):
        build(CurateConfig, {"process": {"filters": {"seed": 3}}}, source="curation file")
    given = {"seed": 3, "selection": {"method": "activations", "pooling": "last"}}
    assert build(CurateConfig, given, source="f").selection.seed == 3
    assert build(SelectionConfig, {"seed": 3}, source="f").seed == 3  # a stage's settings alone keep their seed


def test_a_seed_out_of_range_names_the_flag() -> None:
    with pytest.raises(ColaError) as err:
        CurateConfig(seed=2**32)
    assert str(err.value) == "seed must be in [0, 2**32), got 4294967296 (--seed)"


def test_config_help_and_choices_come_from_the_fields() -> None:
    from cola.config import FilterConfig, ModelConfig
    from cola.settings import choices_of, help_of

    assert choices_of(SelectionConfig, "pooling") == ("mean", "last")
    assert help_of(FilterConfig, "min_tokens") == "drop documents with fewer tokens"
    assert choices_of(CurateConfig, "deployment_type") == ("general", "targeted")
    with pytest.raises(ColaError, match=r"^unknown dtype 'float8'\. .*Valid choices: auto, bfloat16, float16, "
                                        "float32$"):
        ModelConfig(dtype="float8")


def test_an_experiment_variant_may_not_set_a_seed(tmp_path) -> None:
    """A cell's seed is one of the grid's seeds and seeds every stage; a variant cannot set one."""
    from cola.experiment.config import config_from_dict

    base = {"name": "t", "seeds": [0], "strategies": ["random_c4", "v"], "methods": {"rtn4": {"method": "rtn"}},
            "evaluation": {"tasks": ["ppl:x.txt"]}}
    stages = "each cell's seed, one of the grid's `seeds`, seeds every stage"
    for settings, message in (
            ({"seed": 3}, f"experiment config: variants.v sets 'seed': {stages}"),
            ({"selection": {"seed": 3}}, f"experiment config: variants.v sets 'selection.seed': {stages}"),
            ({"process.filters": {"seed": 3}}, f"experiment config: variants.v sets 'process.filters.seed': {stages}")):
        with pytest.raises(ColaError) as err:
            config_from_dict({**base, "variants": {"v": {"strategy": "cola", **settings}}}, base_dir=tmp_path)
        assert str(err.value) == message


def test_the_default_is_a_random_pick_of_the_mixed_pool_and_stage1_runs_where_asked_for() -> None:
    """Issue 19's decision: no selection method kept more than a seeded random pick of the mixed pool, so a
    general run skips Stage 1 and picks at random; asking for what only Stage 1 does turns it on."""
    from cola.cli import build_parser, curate_config

    plain = CurateConfig()
    assert (plain.stage1, plain.selection_method) == (False, "random")
    for given in (dict(deployment_type="targeted", targeted_capability="math"),
                  dict(capability_weights=(("math", 2.0),)), dict(target_capabilities=("math", "code")),
                  dict(references=(("general", "prose.jsonl"),)), dict(semantic_embedder="minilm"),
                  dict(domain=DomainConfig(token_weight=1.0))):
        assert CurateConfig(**given).stage1 is True, given
    assert CurateConfig(target_capabilities=("math",), stage1=False).stage1 is False  # targets as a filter
    # set off, it stays off: an experiment's random baselines beside a targeted deployment
    assert CurateConfig(deployment_type="targeted", targeted_capability="math", stage1=False).stage1 is False
    parse = lambda *flags: curate_config(build_parser().parse_args(["curate", "--output_dir", "o", *flags]))  # noqa: E731
    assert [parse(*f).stage1 for f in ((), ("--stage1",), ("--no_stage1",))] == [False, True, False]
    assert parse("--target_capabilities", "math").stage1 is True
    assert parse("--target_capabilities", "math", "--no_stage1").stage1 is False
    assert parse("--signal_weights", "semantic=1,token=0,coverage=0").stage1 is True  # Stage 1's own setting
    assert parse("--stage1", "--selection_method", "activations").selection_method == "activations"
    for both in (("--stage1", "--no_stage1"), ("--no_stage1", "--stage1")):  # contradictory: refused, not last-wins
        with pytest.raises(SystemExit) as exit_:
            parse(*both)
        assert exit_.value.code == 2
    with pytest.raises(ColaError, match="--targeted_capability math needs --deployment_type targeted"):
        CurateConfig(targeted_capability="math")  # a general run would ignore it
    assert build(CurateConfig, {"stage1": True}, source="f").stage1 is True
    # how the model reads the pool, given where nothing reads it: named, not dropped
    with pytest.raises(ColaError, match="--layers sets how the model reads the pool, which this run never does"):
        parse("--layers", "0-2")
    with pytest.raises(ColaError, match="--sketch_dim applies to --selection_method moments or outlier_coverage"):
        parse("--stage1", "--sketch_dim", "8")
    assert parse("--stage1", "--pooling", "last").selection.pooling == "last"  # Stage 1 reads it
    # Stage 1's own settings with Stage 1 off (each but --reference_size alone turns it on): named, not dropped
    for flags in (("--deployment_type", "targeted", "--targeted_capability", "math"),
                  ("--capability_weights", "math=1"), ("--reference", "math=m.jsonl"),
                  ("--semantic_embedder", "minilm"), ("--signal_weights", "semantic=1")):
        name = " ".join(flags[:2]) if flags[0] == "--deployment_type" else flags[0]
        with pytest.raises(ColaError, match=f"^{name} is a Stage 1 setting and this run has Stage 1 off: use "):
            parse(*flags, "--no_stage1")
        assert parse(*flags).stage1 is True
    with pytest.raises(ColaError, match="^--reference_size is a Stage 1 setting and this run has Stage 1 off"):
        parse("--reference_size", "16")
    assert parse("--reference_size", "16", "--stage1").reference_size == 16
    assert parse("--no_stage1", "--target_capabilities", "math").target_capabilities == ("math",)  # labels samples
    assert parse("--selection_method", "moments", "--sketch_dim", "8").selection.sketch_dim == 8
    assert dataclasses.replace(plain, stage1=True).stage1 is True
    # one list names Stage 1's settings (CurateConfig.stage1_settings): the auto-on rule and the refusal both read it
    assert plain.stage1_settings() == ()
    given = CurateConfig(reference_size=16, domain=DomainConfig(reference_clusters=3), semantic_embedder="minilm",
                         seed=7, stage1=False)
    assert given.stage1_settings() == ("--reference_size", "--semantic_embedder", "domain.reference_clusters")
    assert CurateConfig(domain=DomainConfig(reference_clusters=3)).stage1 is True
    assert (CurateConfig(reference_size=16).stage1, CurateConfig(seed=7).stage1_settings()) == (False, ())
