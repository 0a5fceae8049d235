"""cola experiment: strict config, resumable grid, failure recording, isolation, report and plots."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

from cola.errors import ColaError
from cola.experiment import config as config_module
from cola.experiment import runner, store
from cola.experiment.config import config_from_dict
from cola.experiment.report import COLUMNS, render_markdown, write_report
from cola.atomic import read_json, write_json
from cola.experiment.runner import Cell, Experiment, grid

BASE = {"name": "t", "seeds": [0, 1], "strategies": ["random_c4", "cola"], "baseline": "random_c4",
        "methods": {"ria50": {"method": "ria", "sparsity": 0.5}, "rtn4": {"method": "rtn", "bits": 4}},
        "evaluation": {"tasks": ["ppl:x.txt"]}, "isolate_cells": False}


def make_config(tmp_path: Path, **overrides):
    return config_from_dict({**BASE, **overrides}, base_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ config
def test_config_rejects_unknown_keys_and_lists_valid_ones(tmp_path):
    with pytest.raises(ColaError, match=r"unknown key in experiment config `top level` 'sedes'.*seeds"):
        make_config(tmp_path, sedes=[0])
    with pytest.raises(ColaError, match=r"`calibration` 'num_sample'.*num_samples"):
        make_config(tmp_path, calibration={"num_sample": 4})
    with pytest.raises(ColaError, match=r"`evaluation` 'task'.*tasks"):
        make_config(tmp_path, evaluation={"task": ["x"]})


def test_config_rejects_unknown_strategy_method_option_and_missing_file(tmp_path):
    with pytest.raises(ColaError, match=r"unknown strategy 'colla'.*Did you mean 'cola'"):
        make_config(tmp_path, strategies=["random_c4", "colla"])
    with pytest.raises(ColaError, match=r"unknown method \(in methods.x\) 'wandaa'"):
        make_config(tmp_path, methods={"x": {"method": "wandaa"}})
    with pytest.raises(ColaError, match="sparsity"):
        make_config(tmp_path, methods={"x": {"method": "wanda", "sparsity": 1.5}})
    with pytest.raises(ColaError, match="baseline 'random_mixed' is not among the strategies"):
        make_config(tmp_path, baseline="random_mixed")
    with pytest.raises(ColaError, match="data file 'missing.jsonl' not found"):
        make_config(tmp_path, calibration={"datasets": ["missing.jsonl"]})


TYPE_ERRORS = [  # (overrides of BASE, the one-line error: key path, expected type, value given)
    ({"seeds": "0, 1, 2"}, "seeds must be a list of integers, got '0, 1, 2' (a string)"),
    ({"seeds": [0, "1"]}, "seeds[1] must be an integer, got '1' (a string)"),
    ({"seeds": [0, True]}, "seeds[1] must be an integer, got True (a boolean)"),
    ({"seeds": [0, 1.5]}, "seeds[1] must be an integer, got 1.5 (a number)"),
    ({"name": 5}, "name must be a string, got 5 (an integer)"),
    ({"model": False}, "model must be a string, got False (a boolean) (YAML reads an unquoted off"),
    ({"data_dir": 3}, "data_dir must be a path (a string) or null, got 3 (an integer)"),
    ({"strategies": "cola"}, "strategies must be a list of strings, got 'cola' (a string)"),
    ({"isolate_cells": "yes"}, "isolate_cells must be true or false, got 'yes' (a string)"),
    ({"trust_remote_code": "no"}, "trust_remote_code must be true or false, got 'no' (a string)"),
    ({"calibration": [1]}, "calibration must be a mapping, got [1] (a list)"),
    ({"calibration": {"num_samples": "many"}}, "calibration.num_samples must be an integer, got 'many' (a string)"),
    ({"calibration": {"datasets": "a.jsonl"}}, "calibration.datasets must be a list of strings, got 'a.jsonl'"),
    ({"calibration": {"references": {"math": 7}}}, "calibration.references.math must be a string, got 7"),
    ({"evaluation": {"tasks": ["ppl:x.txt"], "limits": {"hs": "500"}}},
     "evaluation.limits.hs must be an integer, got '500' (a string)"),
    ({"evaluation": {"window": 1.5}}, "evaluation.window must be an integer, got 1.5 (a number)"),
    ({"plots": {"spectrum_module": 3}}, "plots.spectrum_module must be a string or null, got 3 (an integer)"),
    ({"methods": ["ria"]}, "methods must be a mapping of strings to mappings, got ['ria'] (a list)"),
    ({"methods": {"x": "ria"}}, "methods.x must be a mapping, got 'ria' (a string)"),
    ({"methods": {5: {"method": "ria"}}}, "a key of methods must be a string, got 5 (an integer)"),
    ({"methods": {"x": {"method": 5}}}, "methods.x.method must be a string, got 5 (an integer)"),
    ({"methods": {"x": {"method": "ria", "sparsity": "half"}}},
     "methods.x.sparsity must be a number or null, got 'half' (a string)"),
    ({"methods": {"x": {"method": "gptq", "bits": 4.0}}}, "methods.x.bits must be an integer or null, got 4.0"),
    ({"methods": {"x": {"method": "gptq", "actorder": "yes"}}},
     "methods.x.actorder must be true or false or null, got 'yes' (a string)"),
    ({"variants": {"v": {"strategy": "cola", "selection": {"layers": "2"}}}},
     "variants.v.selection.layers must be a list of integers or null, got '2' (a string)"),
    ({"variants": {"v": {"strategy": "cola", "selection.layers": [2, "x"]}}},
     "variants.v.selection.layers[1] must be an integer, got 'x' (a string)"),
    ({"variants": {"v": {"strategy": "cola", "capability_weights": {"general": "high"}}}},
     "variants.v.capability_weights.general must be a number, got 'high' (a string)"),
    ({"variants": {"v": {"strategy": "cola", "process": {"filters": {"min_tokens": "8"}}}}},
     "variants.v.process.filters.min_tokens must be an integer, got '8' (a string)"),
    ({"variants": {"v": {"strategy": "self_generated", "generation": {"temperature": "hot"}}}},
     "variants.v.generation.temperature must be a number, got 'hot' (a string)"),
    ({"variants": {"v": {"strategy": 3}}}, "variants.v.strategy must be a string, got 3 (an integer)"),
]


@pytest.mark.parametrize(("overrides", "message"), TYPE_ERRORS, ids=[m.split(" ")[0] for _, m in TYPE_ERRORS])
def test_every_value_is_type_checked_with_its_key_path(tmp_path, overrides, message):
    with pytest.raises(ColaError) as caught:
        make_config(tmp_path, **overrides)
    text = str(caught.value)
    assert text.startswith("experiment config: ") and "\n" not in text
    assert message in text


def test_values_of_the_right_type_are_also_checked(tmp_path):
    errors = [
        ({"seeds": [0, -1]}, r"experiment config: seeds\[1\] must be at least 0, got -1"),
        ({"seeds": [0, 1, 0]}, "experiment config: `seeds` lists 0 more than once"),
        ({"strategies": ["random_c4", "cola", "cola"]}, "`strategies` lists cola more than once"),
        ({"calibration": {"num_samples": 0}}, "experiment config: calibration.num_samples must be at least 1, got 0"),
        ({"evaluation": {"tasks": []}}, "experiment config: evaluation.tasks is empty"),
        ({"evaluation": {"tasks": ["x"], "limits": {"x": 0}}}, "evaluation.limits.x must be at least 1, got 0"),
        ({"dtype": "float64"}, r"unknown dtype \(experiment config `dtype`\) 'float64'.*float32"),
        ({"variants": {"v": {"strategy": "self_generated", "generation": {"temprature": 0.3}}}},
         r"unknown key in experiment config `variants.v.generation` 'temprature'. Did you mean 'temperature'"),
    ]
    for overrides, message in errors:
        with pytest.raises(ColaError, match=message):
            make_config(tmp_path, **overrides)
    with pytest.raises(ColaError, match=r"^experiment config: methods.x: --sparsity must lie in \(0, 1\), got 1.0$"):
        make_config(tmp_path, methods={"x": {"method": "ria", "sparsity": 1}})
    config = make_config(tmp_path, methods={"x": {"method": "ria", "alpha": 1}}, variants={
        "v": {"strategy": "self_generated", "generation": {"temperature": 1}}}, strategies=["random_c4", "v"])
    assert config.methods[0].options == {"alpha": 1.0} and config.variants[0].generation == {"temperature": 1.0}


def test_the_issue_yaml_with_seeds_as_a_string_is_one_line_on_the_cli(tmp_path, capsys):
    from cola.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text('name: x\nseeds: "0, 1, 2"\nmethods: {rtn4: {method: rtn}}\n')
    assert main(["experiment", str(bad), "--work_dir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert err == "cola: error: experiment config: seeds must be a list of integers, got '0, 1, 2' (a string)\n"
    assert not (tmp_path / "work").exists()


BAD_LABELS = ["../../../../victim", "/tmp/victim", "a/b", "a\\b", "..", ".", "", "a\x00b", "a__b", "x" * 65,
              ".hidden", "-flag", "tab\tname", "ünïcode"]


@pytest.mark.parametrize("label", BAD_LABELS, ids=repr)
def test_labels_must_be_plain_names(tmp_path, label):
    rule = "is not a plain name: it names folders and files in the work directory"
    with pytest.raises(ColaError, match=rf"experiment config: method label {re.escape(repr(label))} {rule}"):
        make_config(tmp_path, methods={label: {"method": "rtn"}})
    with pytest.raises(ColaError, match=rf"experiment config: variant label {re.escape(repr(label))} {rule}"):
        make_config(tmp_path, strategies=["random_c4", label], variants={label: {"strategy": "cola"}})
    with pytest.raises(ColaError, match=rf"experiment config: `name` {re.escape(repr(label))} {rule}"):
        make_config(tmp_path, name=label)


def test_labels_that_differ_only_in_case_are_refused(tmp_path):
    with pytest.raises(ColaError, match="method labels 'ria' and 'RIA' differ only in case"):
        make_config(tmp_path, methods={"ria": {"method": "ria"}, "RIA": {"method": "ria", "sparsity": 0.6}})
    assert make_config(tmp_path, methods={"a-1.5_x": {"method": "rtn"}}).methods[0].label == "a-1.5_x"


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_traversal_label_writes_and_deletes_nothing_outside_the_work_dir(tmp_path, monkeypatch):
    """The issue's report: a method label `../../../../victim` wrote the model outside the work directory,
    deleted that folder with an unrelated file in it, and wrote the cell record outside too."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "canary.txt").write_text("keep me")
    work = tmp_path / "a" / "b" / "work"
    yaml_file = tmp_path / "exp.yaml"
    yaml_file.write_text('name: x\nstrategies: [random_c4]\nmethods:\n  "../../../../victim": {method: rtn}\n')
    from cola.cli import main

    assert main(["experiment", str(yaml_file), "--work_dir", str(work)]) == 2
    assert _tree(tmp_path) == ["exp.yaml", "victim", "victim/canary.txt"]

    # the runner refuses such a path by itself too (a config built around the check, say)
    monkeypatch.setattr(runner, "_dense_job", _fake_dense)
    config = make_config(tmp_path, strategies=["random_c4"], methods={"rtn4": {"method": "rtn"}})
    object.__setattr__(config.methods[0], "label", "../../../../victim")
    experiment = Experiment(config, work)
    with pytest.raises(ColaError, match=r"refusing to write or delete .*victim.*outside the work directory"):
        experiment.run()
    for path in (lambda: experiment.model_dir(Cell("random_c4", "../../../../victim", 0)),
                 lambda: experiment.calibration_dir("/tmp", 0), lambda: experiment.path("..", "victim"),
                 lambda: experiment.path("a\x00b")):
        with pytest.raises(ColaError, match="refusing"):
            path()
    assert (victim / "canary.txt").read_text() == "keep me" and _tree(victim) == ["canary.txt"]
    assert not (tmp_path / "a" / "victim").exists() and not (tmp_path / "a" / "b" / "victim").exists()


def test_symbolic_links_out_of_the_work_dir_are_refused(tmp_path, fake_jobs):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text("keep me")
    config = make_config(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "models").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ColaError, match=r"refusing to write or delete .*work/models: it resolves to .*outside"):
        Experiment(config, work).run()
    assert fake_jobs == [] and _tree(outside) == ["canary.txt"]

    (work / "models").unlink()
    (work / "models").mkdir()
    (work / "models" / "cola").symlink_to(outside, target_is_directory=True)  # deeper: refused per cell
    experiment = Experiment(config, work)
    with pytest.raises(ColaError, match="outside the work directory"):
        experiment.model_dir(Cell("cola", "ria50", 0))
    with pytest.raises(ColaError, match="outside the work directory"):
        store.remove_tree(work, work / "models" / "cola" / "seed0")
    with pytest.raises(ColaError, match="refusing to delete the work directory"):
        store.remove_tree(work, work / "models" / "..")
    (work / "cells").mkdir()
    (work / "cells" / "cola__ria50__seed0.json").symlink_to(outside / "canary.txt")  # a linked record file
    with pytest.raises(ColaError, match="outside the work directory"):
        experiment.cell_file(Cell("cola", "ria50", 0))
    assert _tree(outside) == ["canary.txt"] and (outside / "canary.txt").read_text() == "keep me"
    inner = work / "calibration"
    inner.mkdir()
    (work / "link_inside").symlink_to(inner, target_is_directory=True)
    assert experiment.path("link_inside", "x") == (inner / "x").resolve()  # a link that stays inside is fine


def _record_calls(monkeypatch) -> dict[str, dict]:
    """Stand-ins for everything a cell calls, recording their keyword arguments."""
    import cola.compress.api
    import cola.evaluate
    import cola.experiment.spectrum
    import cola.models
    import cola.experiment.strategies

    calls: dict[str, dict] = {}

    def recorder(name, result):
        def record(*args, **kwargs):
            calls[name] = kwargs
            return result(*args, **kwargs) if callable(result) else result
        return record

    def curate(_name, *, output_dir, **_kwargs):
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "manifest.json").write_text("{}")

    def compress(_model, _calibration, _method, out, **_kwargs):
        Path(out).mkdir(parents=True)
        return {"weights": {"total": {}}, "calibration": {"num_tokens": 4}, "seconds": 1.0}

    monkeypatch.setattr(cola.models, "load_model", recorder("load_model", (None, None)))
    monkeypatch.setattr(cola.experiment.strategies, "curate_strategy", recorder("curate_strategy", curate))
    monkeypatch.setattr(cola.compress.api, "compress", recorder("compress", compress))
    monkeypatch.setattr(cola.compress.api, "load_compressed", recorder("load_compressed", (None, None)))
    monkeypatch.setattr(cola.evaluate, "evaluate", recorder("evaluate", []))
    monkeypatch.setattr(cola.experiment.spectrum, "ffn_spectrum", recorder("ffn_spectrum", ("m", [1.0])))
    return calls


@pytest.mark.parametrize("on", [True, False], ids=["on", "off"])
def test_trust_remote_code_and_unsafe_code_reach_every_call(tmp_path, monkeypatch, on):
    calls = _record_calls(monkeypatch)
    config = make_config(tmp_path, trust_remote_code=on, confirm_run_unsafe_code=on)
    work = tmp_path / "work"
    runner._cell_job(config, work, True, Cell("cola", "ria50", 0))
    assert calls["load_model"]["trust_remote_code"] is on
    for name, keyword in (("compress", "trust_remote_code"), ("load_compressed", "trust_remote_code"),
                          ("evaluate", "confirm_run_unsafe_code")):
        assert calls[name][keyword] is on, name
    assert read_json(work / "cells" / "cola__ria50__seed0.json")["status"] == "ok"
    assert not (work / "models" / "cola" / "ria50" / "seed0").exists()  # removed through the checked path
    calls.clear()
    runner._dense_job(config, work, True)
    assert calls["load_model"]["trust_remote_code"] is on
    assert calls["evaluate"]["confirm_run_unsafe_code"] is on


def test_cli_flags_turn_on_trust_remote_code_and_unsafe_code(tmp_path, monkeypatch, capsys):
    import cola.experiment
    from cola.cli import main

    seen = {}

    def fake_run(config, work_dir, **kwargs):
        seen.update(config=config, command=kwargs["command"])
        return {"ok": 0, "skipped": 0, "failed": 0, "busy": 1, "seconds": 0.0, "report": "r", "results_csv": "c"}

    monkeypatch.setattr(cola.experiment, "run_experiment", fake_run)
    good = tmp_path / "good.yaml"
    good.write_text("name: x\nstrategies: [random_c4]\nmethods: {rtn4: {method: rtn}}\n")
    assert main(["experiment", str(good)]) == 0
    assert (seen["config"].trust_remote_code, seen["config"].confirm_run_unsafe_code) == (False, False)
    assert "1 running in another process" in capsys.readouterr().out
    assert main(["experiment", str(good), "--trust_remote_code", "--confirm_run_unsafe_code"]) == 0
    assert (seen["config"].trust_remote_code, seen["config"].confirm_run_unsafe_code) == (True, True)
    assert seen["command"].endswith("--trust_remote_code --confirm_run_unsafe_code")
    good.write_text("name: x\nstrategies: [random_c4]\nmethods: {rtn4: {method: rtn}}\ntrust_remote_code: true\n")
    assert main(["experiment", str(good)]) == 0
    assert (seen["config"].trust_remote_code, seen["config"].confirm_run_unsafe_code) == (True, False)


def test_config_resolves_data_files_under_data_dir_and_keeps_names(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pool.jsonl").write_text('{"text": "a"}\n')
    config = make_config(tmp_path, data_dir="data",
                         calibration={"datasets": ["pool.jsonl@math", "embedded"]})
    assert config.data_dir == (tmp_path / "data").resolve()
    assert config.calibration.datasets == (f"{(tmp_path / 'data' / 'pool.jsonl').resolve()}@math", "embedded")


def test_variants_are_strategies_with_other_settings_checked_up_front(tmp_path):
    config = make_config(tmp_path, strategies=["random_c4", "cola", "cola_plain", "cola_general"], variants={
        "cola_plain": {"strategy": "cola", "process": {"chat_template": "off"}},
        "cola_general": {"strategy": "cola", "capability_weights": {"general": 3.0}, "selection.layers": [2, 4]}})
    assert config.recipe("cola") == ("cola", {}, {})
    assert config.num_samples("cola") == config.num_samples("cola_plain") == config.calibration.num_samples
    sized = make_config(tmp_path, strategies=["random_c4", "cola_n3"], variants={"cola_n3": {"strategy": "cola",
                                                                                            "num_samples": 3}})
    assert (sized.num_samples("cola_n3"), sized.recipe("cola_n3")) == (3, ("cola", {}, {}))
    assert config.recipe("cola_plain") == ("cola", {"process": {"chat_template": "off"}}, {})
    assert [c.strategy for c in grid(config)][:4] == ["random_c4", "random_c4", "cola", "cola"]
    assert {c.strategy for c in grid(config)} == {"random_c4", "cola", "cola_plain", "cola_general"}
    errors = [
        ({"cola": {"strategy": "cola"}}, "variants.cola: the label is a built-in strategy"),
        ({"v": {"strategy": "colla"}}, r"unknown strategy \(in variants.v\) 'colla'.*Did you mean 'cola'"),
        ({"v": {"process": {}}}, "variants.v needs a `strategy` key"),
        ({"v": {"strategy": "cola", "process": {"chat_templat": "off"}}},
         r"unknown key in experiment config `variants.v.process` 'chat_templat'.*Did you mean 'chat_template'"),
        ({"v": {"strategy": "cola", "process.chat_templat": "off"}},  # a dotted name is the same setting
         r"unknown key in experiment config `variants.v.process` 'chat_templat'"),
        ({"v": {"strategy": "cola", "process": {"chat_template": "of"}}},
         r"variants.v: unknown chat template mode 'of'"),
        ({"v": {"strategy": "cola", "process": {"chat_template": False}}},  # YAML's unquoted off
         r"variants.v.process.chat_template must be a string, got False \(a boolean\) \(YAML reads an unquoted "
         r"off.*quote it\)"),
        ({"v": {"strategy": "cola", "stage1": False}}, "variants.v: strategy 'cola' fixes stage1=True"),
        ({"v": {"strategy": "cola", "sequence_length": 64}},
         "variants.v sets 'sequence_length', which the `calibration`"),
        ({"v": {"strategy": "cola", "num_samples": 0}}, "variants.v.num_samples must be at least 1, got 0"),
        ({"v": {"strategy": "cola", "num_samples": "8"}}, "variants.v.num_samples must be an integer"),
        ({"v": {"strategy": "cola", "generation": {"temperature": 1.0}}},
         "variants.v: generation settings only apply to self_generated, not to 'cola'"),
    ]
    for variants, message in errors:
        with pytest.raises(ColaError, match=message):
            make_config(tmp_path, variants=variants)
    with pytest.raises(ColaError, match=r"unknown strategy 'cola_plan'.*'cola_plain'"):
        make_config(tmp_path, strategies=["random_c4", "cola_plan"],
                    variants={"cola_plain": {"strategy": "cola", "process": {"chat_template": "off"}}})


def test_calibration_settings_reach_every_strategy_and_variants_override_them_key_by_key(tmp_path):
    shared = {"process": {"chat_template": "off", "system_prompt": "none"}, "selection.sketch_dim": 8}
    config = make_config(tmp_path, strategies=["random_c4", "cola", "cola_templated"],
                         calibration={"datasets": ["c4", "gsm8k"], "settings": shared},
                         variants={"cola_templated": {"strategy": "cola", "process.chat_template": "on"}})
    plain = {"process": {"chat_template": "off", "system_prompt": "none"}, "selection": {"sketch_dim": 8}}
    assert config.recipe("cola") == ("cola", plain, {})
    assert config.recipe("random_c4") == ("random_c4", plain, {})
    assert config.recipe("cola_templated") == ("cola", {**plain, "process": {"chat_template": "on",
                                                                             "system_prompt": "none"}}, {})
    for settings, message in (
            ({"process": {"chat_templat": "off"}}, r"`calibration.settings.process` 'chat_templat'"),
            ({"selection.seed": 3}, r"calibration.settings sets 'selection.seed': each cell's seed"),
            ({"num_samples": 8}, r"calibration.settings sets 'num_samples', which the `calibration` section"),
            ({"process": {"chat_template": "of"}}, r"calibration.settings: unknown chat template mode 'of'")):
        with pytest.raises(ColaError, match=message):
            make_config(tmp_path, calibration={"datasets": ["c4", "gsm8k"], "settings": settings})
    # a shared setting a built-in strategy fixes otherwise fails when the YAML loads, not when its cell curates
    with pytest.raises(ColaError, match=r"calibration.settings \(strategy cola\): strategy 'cola' fixes "
                                        r"stage1=True"):
        make_config(tmp_path, calibration={"datasets": ["c4", "gsm8k"], "settings": {"stage1": False}})


def test_a_variant_cell_curates_its_strategy_with_its_settings(tmp_path, monkeypatch):
    import cola.experiment.strategies

    calls = []

    def fake_curate(name, *, output_dir, **kwargs):
        calls.append((name, kwargs))
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "manifest.json").write_text("{}")

    monkeypatch.setattr(cola.experiment.strategies, "curate_strategy", fake_curate)
    config = make_config(tmp_path, strategies=["random_c4", "self_low"], baseline="random_c4", variants={
        "self_low": {"strategy": "self_generated", "generation": {"temperature": 0.3}, "reference_size": 8}})
    experiment = Experiment(config, tmp_path / "work")
    path, _ = runner._ensure_calibration(experiment, Cell("self_low", "ria50", 1), None, None)
    assert path == tmp_path / "work" / "calibration" / "self_low" / "seed1"
    name, kwargs = calls[0]
    assert name == "self_generated" and kwargs["generation"] == {"temperature": 0.3}
    assert kwargs["label"] == "self_low" and kwargs["reference_size"] == 8 and kwargs["seed"] == 1
    runner._ensure_calibration(experiment, Cell("self_low", "rtn4", 1), None, None)
    assert len(calls) == 1  # made once per strategy and seed


SHIPPED = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_experiment_configs_are_valid(path: Path):
    from cola.experiment.strategies import strategy_config

    data_dir = Path(__file__).resolve().parents[3] / "shared" / "data"
    if not data_dir.is_dir():
        pytest.skip(f"shared data folder {data_dir} not found")
    config = config_module.load_experiment_config(path)
    curation = {}  # every strategy and variant builds a valid curation config
    for name in config.strategies:
        base, settings, _ = config.recipe(name)
        curation[name] = strategy_config(base, datasets=config.calibration.datasets, seed=0,
                                         num_samples=config.calibration.num_samples,
                                         sequence_length=config.calibration.sequence_length, **settings)
    if path.stem == "smollm2_cpu":
        assert len(grid(config)) == 3 * 9 * 4
        assert [m.method for m in config.methods] == ["wanda", "sparsegpt", "gptq", "caldera"]
    if path.stem == "smollm2_stage3":
        assert len(grid(config)) == 3 * 5
        assert curation["cola_lastpool"].selection.pooling == "last"
        assert curation["cola_lastlayer"].selection.layers == (-1,)
        assert curation["no_stage3"].selection_method == "random"
        stage2 = config_module.load_experiment_config(path.with_name("smollm2_stage2.yaml"))  # shares its cells
        for field in ("model", "dtype", "seeds", "calibration", "methods", "evaluation"):
            assert getattr(config, field) == getattr(stage2, field), field


# ------------------------------------------------------------------------------------------------ runner
def _fake_result(task: str, value: float) -> dict:
    capability = {"wiki": "general", "hs": "commonsense"}[task]
    return {"task": task, "capability": capability, "metric": "perplexity" if task == "wiki" else "acc_norm",
            "value": value, "stderr": 0.01, "n": 10, "tokens": 100, "higher_is_better": task == "hs"}


def _fake_dense(config, work_dir, quiet):
    write_json(work_dir / runner.DENSE_FILE, {"status": "ok", "results": [_fake_result("wiki", 10.0),
                                                                       _fake_result("hs", 0.5)],
                                              "spectrum": {"module": "m", "singular_values": [3.0, 2.0, 1.0]}})


def _fake_cell(config, work_dir, quiet, cell):
    if cell.strategy == "cola" and cell.method == "rtn4" and cell.seed == 1:
        raise RuntimeError("planted failure")
    bonus = 0.05 if cell.strategy == "cola" else 0.0
    write_json(Experiment(config, work_dir).cell_file(cell), {
        "strategy": cell.strategy, "method": cell.method, "seed": cell.seed, "status": "ok",
        "bits_per_parameter": 4.5, "sparsity": None, "curate_seconds": 1.0, "compress_seconds": 2.0,
        "eval_seconds": 3.0, "results": [_fake_result("wiki", 20.0 - 10 * bonus - cell.seed),
                                         _fake_result("hs", 0.4 + bonus)],
        "spectrum": {"module": "m", "singular_values": [2.0, 1.0, 0.5]}})


@pytest.fixture
def fake_jobs(monkeypatch):
    calls: list[str] = []

    def cell_job(*args):
        calls.append(args[-1].key)
        _fake_cell(*args)

    monkeypatch.setattr(runner, "_cell_job", cell_job)
    monkeypatch.setattr(runner, "_dense_job", _fake_dense)
    return calls


def test_grid_runs_every_cell_records_failure_and_goes_on(tmp_path, fake_jobs):
    config = make_config(tmp_path)
    experiment = Experiment(config, tmp_path / "work")
    counts = experiment.run()
    assert counts == {"skipped": 0, "ok": 7, "failed": 1, "busy": 0}
    assert len(fake_jobs) == 8  # the failing cell did not stop the ones after it
    assert fake_jobs[-1] == "cola__rtn4__seed1"
    failed = read_json(experiment.cell_file(Cell("cola", "rtn4", 1)))
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: planted failure"


def test_resume_skips_finished_cells_and_retries_failed(tmp_path, fake_jobs):
    config = make_config(tmp_path)
    Experiment(config, tmp_path / "work").run()
    fake_jobs.clear()
    counts = Experiment(config, tmp_path / "work").run()
    assert fake_jobs == ["cola__rtn4__seed1"]
    assert counts == {"skipped": 7, "ok": 0, "failed": 1, "busy": 0}


def _crash(config, work_dir, quiet):
    os._exit(3)


def _fail(config, work_dir, quiet):
    raise ColaError("one-line reason")


def test_isolated_cell_that_dies_is_recorded(tmp_path):
    config = make_config(tmp_path, isolate_cells=True)
    experiment = Experiment(config, tmp_path / "work")
    record = experiment._execute(_crash, tmp_path / "work" / "x.json", {"status": "failed"})
    assert record["status"] == "failed" and "exit code 3" in record["error"]
    record = experiment._execute(_fail, tmp_path / "work" / "y.json", {"status": "failed"})
    assert record["error"] == "one-line reason"
    assert read_json(tmp_path / "work" / "y.json")["error"] == "one-line reason"


# ------------------------------------------------------------------------------------------------ report
def test_report_tables_paired_differences_and_plots(tmp_path, fake_jobs):
    config = make_config(tmp_path)
    experiment = Experiment(config, tmp_path / "work")
    experiment.run()
    # cells that did not record their set's size get it from the set's manifest (fake cells curate nothing)
    write_json(experiment.calibration_dir("cola", 0) / "manifest.json", {"sample_tokens": 777})
    paths = write_report(experiment, tmp_path / "report", command="cola experiment t.yaml")
    frame = pd.read_csv(paths["results_csv"])
    assert set(frame[(frame.strategy == "cola") & (frame.seed == 0)].calibration_tokens) == {777}
    assert frame[frame.strategy == "random_c4"].calibration_tokens.isna().all()
    assert len(frame) == 2 + 7 * 2 + 1  # dense tasks, 7 finished cells x 2 tasks, one failed cell row
    row = frame[(frame.strategy == "cola") & (frame.method == "ria50") & (frame.seed == 0) & (frame.task == "wiki")]
    assert row.retention.iloc[0] == pytest.approx(10.0 / 19.5)  # lower is better: dense / compressed
    text = paths["report"].read_text()
    # ria50, seeds 0 and 1: general 10/19.5 - 10/20 and 10/18.5 - 10/19; commonsense 0.45/0.5 - 0.4/0.5 twice
    assert "| cola | +0.014 ± 0.001 [2] | +0.100 ± 0.000 [2] |" in text
    assert "| cola | +0.013 [1] | +0.100 [1] |" in text  # rtn4: only seed 0 finished for cola
    assert "cola × rtn4 × seed 1: RuntimeError: planted failure" in text
    assert "Command: `cola experiment t.yaml`" in text
    assert (tmp_path / "report" / "plots" / "retention.png").stat().st_size > 1000
    assert (tmp_path / "report" / "plots" / "ffn_spectrum.png").stat().st_size > 1000
    assert "against `cola`" not in text
    # compare_to: the same table against a second strategy (its signs flip; the baseline itself is listed)
    other = Experiment(make_config(tmp_path, compare_to=["cola"]), tmp_path / "work")
    text = write_report(other, tmp_path / "report2", plots=False)["report"].read_text()
    assert text.count("Paired difference in retention against `cola` at the same seed") == 2
    assert "| random_c4 | -0.014 ± 0.001 [2] | -0.100 ± 0.000 [2] |" in text
    for compare_to, message in ((["colla"], r"unknown strategy 'colla'"),
                                (["no_stage3"], r"compare_to 'no_stage3' is not among the strategies")):
        with pytest.raises(ColaError, match=message):
            make_config(tmp_path, compare_to=compare_to)


def test_a_report_includes_the_cells_of_another_runs_results_csv(tmp_path, fake_jobs, caplog):
    # the grid run in two parts (seed 0 here, seed 1 elsewhere); one report over both equals the whole run's
    config = make_config(tmp_path)
    whole = pd.read_csv(write_report(_ran(config, tmp_path / "whole"), tmp_path / "r0", plots=False)["results_csv"])
    part = pd.read_csv(write_report(_ran(config, tmp_path / "b", seeds=[1]), tmp_path / "rb", plots=False)
                       ["results_csv"])
    assert set(part.seed.dropna()) == {1}
    (tmp_path / "b.csv").write_text((tmp_path / "rb" / "results.csv").read_text().replace(
        "dense,dense,,ok,wiki,general,perplexity,10.0", "dense,dense,,ok,wiki,general,perplexity,12.5"))
    merged = pd.read_csv(write_report(_ran(config, tmp_path / "a", seeds=[0]), tmp_path / "ra", plots=False,
                                      include=[tmp_path / "b.csv", tmp_path / "rb" / "results.csv"])["results_csv"])
    keys = ["strategy", "method", "seed", "task"]
    merged, whole = (f.sort_values(keys, na_position="first").reset_index(drop=True) for f in (merged, whole))
    assert len(merged) == len(whole) == 2 + 7 * 2 + 1  # nothing twice, the failed cell of seed 1 included
    assert merged[keys + ["status"]].equals(whole[keys + ["status"]])
    # b.csv's dense perplexity differs: its cells' retention is recomputed against this report's dense (10.0)
    assert merged.retention.tolist() == pytest.approx(whole.retention.tolist(), nan_ok=True)
    assert "dense results differ from this report's on wiki" in caplog.text
    with pytest.raises(ColaError, match=r"--include_results: cannot read .*missing.csv"):
        write_report(_ran(config, tmp_path / "a", seeds=[0]), tmp_path / "ra", include=[tmp_path / "missing.csv"])
    (tmp_path / "other.csv").write_text((tmp_path / "b.csv").read_text().replace("ria50", "gptq3"))
    with pytest.raises(ColaError, match=r"random_c4 × gptq3 × seed 1, which is not in this grid.*methods ria50, rtn4"):
        runner.run_experiment(config, tmp_path / "c", include=[tmp_path / "other.csv"])
    assert not (tmp_path / "c").exists()  # refused before any cell ran


def test_cli_include_results_missing_file_is_one_line(tmp_path, capsys):
    import yaml

    from cola.cli import main

    (tmp_path / "t.yaml").write_text(yaml.safe_dump(BASE))
    args = ["experiment", str(tmp_path / "t.yaml"), "--work_dir", str(tmp_path / "w"), "--report_only"]
    assert main([*args, "--include_results", str(tmp_path / "gone.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--include_results: cannot read" in err and "gone.csv" in err
    assert not (tmp_path / "w").exists()  # nothing half-written
    # a work directory without a single cell (a mistyped --work_dir) is an error, not an empty report
    assert main([*args, "--report_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--report_only: {tmp_path / 'w'} holds no cells of" in err
    assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()
    # another run's results (here its dense row alone) make a report that says how to remake it
    dense = {"strategy": "dense", "method": "dense", "status": "ok", "task": "wikitext2", "value": "30.0"}
    (tmp_path / "other.csv").write_text(",".join(COLUMNS) + "\n" + ",".join(dense.get(c, "") for c in COLUMNS) + "\n")
    assert main([*args, "--report_dir", str(tmp_path / "r"), "--include_results", str(tmp_path / "other.csv")]) == 0
    assert f"Command: `cola experiment {tmp_path / 't.yaml'} --work_dir {tmp_path / 'w'} --report_dir " \
           f"{tmp_path / 'r'} --include_results {tmp_path / 'other.csv'} --report_only`" in \
        (tmp_path / "r" / "report.md").read_text()


def _ran(config, work_dir: Path, seeds=None) -> Experiment:
    experiment = Experiment(config, work_dir)
    experiment.run(only=runner.subset(config, seeds=seeds))
    return experiment


@pytest.mark.parametrize(("width", "entries"), [(4.5, 5), (4.5, 9), (18.0, 9)])
def test_figure_legend_wraps_inside_the_figure(tmp_path, width, entries):
    from cola.experiment.plots import _save_with_legend
    from cola.plots import pyplot

    fig, axes = pyplot().subplots(2, 1, figsize=(width, 7.0), squeeze=False)
    for i in range(entries):
        axes[0][0].plot([0, 1], [i, i], label=f"cola_lastpool_{i}")  # long labels, as the Stage 3 grid's
    legend = _save_with_legend(fig, axes.flat, tmp_path / "p.png")
    box, frame = legend.get_window_extent(), fig.bbox
    assert len(legend.get_texts()) == entries
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0  # no entry cut off
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_report_renders_from_a_small_results_csv(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text(
        "strategy,method,seed,status,task,capability,metric,value,stderr,n,tokens,higher_is_better,retention,"
        "bits_per_parameter,sparsity,calibration_tokens,curate_seconds,compress_seconds,eval_seconds,error\n"
        "dense,dense,,ok,wiki,general,perplexity,10,,,100,False,1.0,,,,,,,\n"
        "random_c4,ria50,0,ok,wiki,general,perplexity,20,,,100,False,0.5,,0.5,4096,10,100,50,\n"
        "random_c4,ria50,1,ok,wiki,general,perplexity,25,,,100,False,0.4,,0.5,4096,10,100,50,\n"
        "cola,ria50,0,ok,wiki,general,perplexity,16,,,100,False,0.625,,0.5,3000,20,100,50,\n"
        "cola,ria50,1,ok,wiki,general,perplexity,20,,,100,False,0.5,,0.5,2000,30,100,50,\n"
        "cola,rtn4,0,failed,,,,,,,,,,,,,,,,boom\n")
    experiment = Experiment(make_config(tmp_path, seeds=[0, 1]), tmp_path)
    text = render_markdown(pd.read_csv(csv), experiment, command=None, plots=[])
    assert "| random_c4 | 2 | 22.50 ± 3.54 | 0.450 ± 0.071 |" in text
    assert "| cola | 2 | 18.00 ± 2.83 | 0.562 ± 0.088 |" in text
    assert "| cola | +0.112 ± 0.018 [2] |" in text     # (0.125 + 0.1) / 2 (0.11249...), std of (0.125, 0.1)
    assert "cola × rtn4 × seed 0: boom" in text
    assert "4 finished, 1 failed, 3 not run of 8" in text
    assert "| random_c4 | 2 | 4,096 | 10 |" in text      # one set per strategy and seed: tokens, curate seconds
    assert "| cola | 2 | 2,500 (2,000–3,000) | 25 (20–30) |" in text


# ----------------------------------------------------------------------------------- end to end (tiny model)
def test_end_to_end_on_a_tiny_model_then_resume(tmp_path, tiny_model_dir, pool_files, monkeypatch):
    """curate -> compress (RIA) -> evaluate -> record -> report, in process; a second run does nothing."""
    from tests.conftest import write_jsonl

    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    write_jsonl(tmp_path / "mc.jsonl", [{"question": f"{i} plus 1 is", "choices": [str(i + 1), "blue"], "label": 0}
                                        for i in range(6)])
    config = config_from_dict({
        "name": "tiny", "model": str(tiny_model_dir), "seeds": [0], "strategies": ["random_c4", "cola"],
        "baseline": "random_c4", "isolate_cells": False,
        "calibration": {"num_samples": 4, "sequence_length": 32, "candidates_per_source": 20,
                        "random_source": "prose", "datasets": [str(p) for p in pool_files.values()]},
        "methods": {"ria50": {"method": "ria", "sparsity": 0.5}},
        "evaluation": {"tasks": [f"ppl:{tmp_path / 'text.txt'}", f"mc:{tmp_path / 'mc.jsonl'}",
                                 f"qa/math:{pool_files['math']}"], "window": 16,
                       "limits": {"mc:mc": 6}},
    }, base_dir=tmp_path)
    summary = runner.run_experiment(config, tmp_path / "work", command="cola experiment tiny.yaml")
    assert (summary["ok"], summary["failed"]) == (2, 0), read_json(tmp_path / "work" / "cells" /
                                                                 "cola__ria50__seed0.json")
    record = read_json(tmp_path / "work" / "cells" / "cola__ria50__seed0.json")
    assert record["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert [r["capability"] for r in record["results"]] == ["general", "commonsense", "math"]
    assert all(r["value"] == r["value"] for r in record["results"])  # finite, not NaN
    assert len(record["spectrum"]["singular_values"]) == 32
    assert record["calibration_tokens"] == 4 * 32  # packed windows of the set's length
    assert not Experiment(config, tmp_path / "work").model_dir(Cell("cola", "ria50", 0)).exists()  # evaluated
    frame = pd.read_csv(summary["results_csv"])
    assert set(frame.strategy) == {"dense", "random_c4", "cola"} and len(frame) == 3 + 2 * 3
    assert (tmp_path / "work" / "plots" / "activation_map.png").is_file()

    def must_not_run(*_args):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(runner, "_cell_job", must_not_run)
    monkeypatch.setattr(runner, "_dense_job", must_not_run)
    again = runner.run_experiment(config, tmp_path / "work")
    assert (again["ok"], again["skipped"], again["failed"]) == (0, 2, 0)


def test_a_subset_of_the_grid_runs_first_and_names_are_checked(tmp_path, fake_jobs):
    config = make_config(tmp_path)
    only = runner.subset(config, strategies=["cola"], seeds=[0])
    counts = Experiment(config, tmp_path / "work").run(only=only)
    assert fake_jobs == ["cola__ria50__seed0", "cola__rtn4__seed0"] and counts["ok"] == 2
    with pytest.raises(ColaError, match=r"unknown method \(not in the config\) 'gptq'.*ria50, rtn4"):
        runner.subset(config, methods=["gptq"])


def test_cli_experiment_bad_config_is_one_line(tmp_path, capsys):
    from cola.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseeds: [0]\nstratgies: [cola]\n")
    assert main(["experiment", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key in experiment config `top level` 'stratgies'" in err
    assert "strategies" in err


def test_report_selection_table_against_a_random_pick_of_the_same_pool(tmp_path):
    # cola vs random_mixed over seeds 0-2 on general (wiki) and math (gsm); random_mixed_n8 is a variant of 8
    head = ("strategy,method,seed,status,task,capability,metric,value,stderr,n,tokens,higher_is_better,retention,"
            "bits_per_parameter,sparsity,calibration_tokens,curate_seconds,compress_seconds,eval_seconds,error\n")
    rows = ["dense,dense,,ok,wiki,general,perplexity,10,,,100,False,1.0,,,,,,,",
            "dense,dense,,ok,gsm,math,nll,1,,,100,False,1.0,,,,,,,"]
    retained = {"random_mixed": ([0.50, 0.52, 0.48], [0.60, 0.62, 0.58], 100),
                "cola": ([0.50, 0.50, 0.50], [0.66, 0.63, 0.609], 90),      # math +10 %, +1.6 %, +5 %
                "random_mixed_n8": ([0.40, 0.41, 0.42], [0.57, 0.64, 0.59], 20),  # general below the spread
                "cola_n8": ([0.40, 0.41, 0.42], [0.627, 0.704, 0.649], 21)}  # math +10 % over random_mixed_n8
    for strategy, (general, math_, seconds) in retained.items():
        for seed in range(3):
            rows.append(f"{strategy},ria50,{seed},ok,wiki,general,perplexity,{10 / general[seed]},,,100,False,"
                        f"{general[seed]},,0.5,4096,1,{seconds},5,")
            rows.append(f"{strategy},ria50,{seed},ok,gsm,math,nll,{1 / math_[seed]},,,100,False,{math_[seed]},,0.5,"
                        f"4096,1,{seconds},5,")
    csv = tmp_path / "results.csv"
    csv.write_text(head + "\n".join(rows) + "\n")
    config = make_config(tmp_path, seeds=[0, 1, 2], strategies=["random_c4", "random_mixed", "cola",
                                                                   "random_mixed_n8", "cola_n8"],
                         compare_to=["random_mixed"], methods={"ria50": {"method": "ria", "sparsity": 0.5}},
                         variants={"random_mixed_n8": {"strategy": "random_mixed", "num_samples": 8},
                                   "cola_n8": {"strategy": "cola", "num_samples": 8}})
    text = render_markdown(pd.read_csv(csv), Experiment(config, tmp_path), command=None, plots=[])
    # same size: cola at 128 has only the baseline itself, random_mixed_n8 is its own peer, cola_n8 pairs with it
    assert "| cola | 128 | +10.0 / +1.6 / +5.0 | +5.5 | yes | +0.000 ± 0.020 | yes | — | 90 |" in text
    assert "| random_mixed_n8 | 8 | -5.0 / +3.2 / +1.7 | -0.0 | no | -0.090 ± 0.026 | no | — | 20 |" in text
    assert "| cola_n8 | 8 | +4.5 / +13.5 / +11.9 | +10.0 | yes | -0.090 ± 0.026 | no | +10.0 (yes) | 21 |" in text
    assert "| random_mixed | 128 |" not in text  # the baseline is not compared to itself
