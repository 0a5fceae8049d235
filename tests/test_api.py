"""The Python API boundary and fail-fast checks: wrong argument types, the output directory, offline references."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cola.api import COLA, check_output_dir, prepare_inputs
from cola.cli import main
from cola.config import CurateConfig, SelectionConfig
from cola.errors import ColaError
from cola.export import MANIFEST_FILE, SAMPLES_FILE

from tests.conftest import byte_tokenizer, tiny_llama, write_jsonl


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_llama(), byte_tokenizer()


@pytest.fixture()
def prose(tmp_path) -> Path:
    return write_jsonl(tmp_path / "prose.jsonl", [
        {"text": f"Paragraph {i}. " + "The river ran past the old mill and the town. " * (2 + i % 5)}
        for i in range(30)])


def _cola(model_and_tokenizer, **kwargs) -> COLA:
    model, tokenizer = model_and_tokenizer
    return COLA(model=model, tokenizer=tokenizer, quiet=True, **kwargs)


@pytest.fixture()
def no_stage2(monkeypatch):
    """Make any Stage 2 work a test failure: a check that must come first proves it does."""
    monkeypatch.setattr(COLA, "process", lambda *a, **k: pytest.fail("Stage 2 started before the check"))


# --- a single string is one item -----------------------------------------------------------------------------

def test_a_single_string_is_one_dataset_and_one_capability(model_and_tokenizer, prose, tmp_path) -> None:
    """Both were iterated character by character ("unknown dataset 'e'")."""
    cola = _cola(model_and_tokenizer, available_datasets=str(prose), target_capabilities="general",
                 output_dir=tmp_path / "out")
    assert cola.settings.datasets == (str(prose),) and cola.settings.target_capabilities == ("general",)
    samples = cola.run(num_samples=4, sequence_length=32)
    assert len(samples) == 4 and all(list(s["capability_scores"]) == ["general"] for s in samples)
    assert _cola(model_and_tokenizer, available_datasets="embedded-math").settings.datasets == ("embedded-math",)
    assert _cola(model_and_tokenizer, available_datasets=prose).settings.datasets == (str(prose),)  # a Path
    assert _cola(model_and_tokenizer, available_datasets=[prose, "gsm8k"]).settings.datasets == (str(prose), "gsm8k")


# --- wrong types are ColaErrors at the boundary ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(available_datasets=[None]),
     "COLA: available_datasets[0] must be a dataset name, a path or in-memory data (a datasets.Dataset, a list of "
     "texts or of dicts, a (data, capability) pair, cola.InMemory), got None"),
    (dict(available_datasets=["gsm8k", ""]), "an empty dataset name in datasets ['gsm8k', '']"),
    (dict(available_datasets=5), "COLA: available_datasets must be a dataset name, a path, in-memory data or a list "
                                 "of them, got 5 (an integer)"),
    (dict(available_datasets={"gsm8k"}), "COLA: available_datasets must be a dataset name, a path, in-memory data or "
                                         "a list of them, got {'gsm8k'} (a set)"),
    (dict(target_capabilities=[None]), "COLA: target_capabilities[0] must be a string, got None"),
    (dict(target_capabilities=b"math"), "COLA: target_capabilities must be a list of strings or None, got b'math'"),
    (dict(selection={"method": "random"}),
     "CurateConfig: selection must be a SelectionConfig, got {'method': 'random'} (a mapping)"),
    (dict(stage1="off"), "CurateConfig: stage1 must be True or False or None, got 'off' (a string)"),
    (dict(candidates_per_source=2.5), "CurateConfig: candidates_per_source must be an integer, got 2.5 (a number)"),
    (dict(output_dir=""), "output_dir is empty: name the directory to write to (an empty name would mean the "
                          "current directory)"),
    (dict(output_dir="   "), "output_dir is empty"),
    (dict(output_dir=None), "output_dir must be a directory path (a string or a Path), got NoneType None"),
    (dict(quiet="yes"), "COLA: quiet must be True or False, got 'yes' (a string)"),
    (dict(model_name_or_path=3), "COLA: model_name_or_path must be a string or None, got 3 (an integer)"),
    (dict(timings=[1.0]), "COLA: timings must be a mapping of strings to numbers or None, got [1.0] (a list)"),
    (dict(timings={"load": "fast"}), "COLA: timings.load must be a number, got 'fast' (a string)"),
    (dict(manifest_extra="strategy"), "COLA: manifest_extra must be a mapping or None, got 'strategy' (a string)"),
    (dict(deployment="targeted"), "unknown COLA setting 'deployment'"),
])
def test_bad_arguments_are_one_line_cola_errors(model_and_tokenizer, kwargs, message) -> None:
    kwargs = {"quiet": True, **kwargs}
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ColaError) as err:
        COLA(model=model, tokenizer=tokenizer, **kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_model_and_tokenizer_must_be_loaded_objects(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ColaError, match=r"^model must be a loaded causal language model, got the name 'embedded': "
                                        r"load it first, model, tokenizer = cola\.models\.load_model\('embedded'\)"):
        COLA(model="embedded")  # no tokenizer either: the model is named first, not a TypeError
    with pytest.raises(ColaError, match=r"^model must be a loaded causal language model \(a torch module, e\.g\. "
                                        r"from cola\.models\.load_model\), got int 3"):
        COLA(model=3, tokenizer=tokenizer)
    with pytest.raises(ColaError, match=r"^tokenizer must be the model's loaded tokenizer .*, got NoneType None"):
        COLA(model=model, tokenizer=None)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_samples="8"), "CurateConfig: num_samples must be an integer, got '8' (a string)"),
    (dict(num_samples=True), "CurateConfig: num_samples must be an integer, got True (a boolean)"),
    (dict(sequence_length=None), "CurateConfig: sequence_length must be an integer, got None"),
    (dict(sequence_length=32.0), "CurateConfig: sequence_length must be an integer, got 32.0 (a number)"),
])
def test_run_checks_its_arguments(model_and_tokenizer, prose, tmp_path, no_stage2, kwargs, message) -> None:
    cola = _cola(model_and_tokenizer, available_datasets=str(prose), output_dir=tmp_path / "out")
    with pytest.raises(ColaError) as err:
        cola.run(**{"num_samples": 4, "sequence_length": 32, **kwargs})
    assert str(err.value) == message
    assert not (tmp_path / "out").exists()


def test_from_config_needs_a_curate_config(model_and_tokenizer, tmp_path) -> None:
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ColaError, match=r"^COLA\.from_config: config must be a CurateConfig, got \{'datasets'"):
        COLA.from_config({"datasets": ["gsm8k"]}, model=model, tokenizer=tokenizer, output_dir=tmp_path)
    cola = COLA.from_config(CurateConfig(selection=SelectionConfig(method="random")), model=model,
                            tokenizer=tokenizer, output_dir=tmp_path)
    assert cola.settings.selection.method == "random"


def test_inputs_prepared_for_other_settings_are_refused(model_and_tokenizer, prose, tmp_path, no_stage2) -> None:
    cola = _cola(model_and_tokenizer, available_datasets=str(prose), output_dir=tmp_path / "out")
    inputs = prepare_inputs(cola.config(4, 32), tmp_path / "out")
    with pytest.raises(ColaError, match=r"^run\(inputs=\.\.\.\) was prepared for other settings"):
        cola.run(num_samples=5, sequence_length=32, inputs=inputs)


# --- the output directory: checked, never created before there is something to write ---------------------------

def test_check_output_dir_creates_nothing(tmp_path) -> None:
    """The API's check is export's one output-directory check (tests/test_export.py), after its type."""
    target = tmp_path / "a" / "b" / "out"
    assert check_output_dir(target) == target and not (tmp_path / "a").exists()
    assert check_output_dir(str(tmp_path)) == tmp_path
    (tmp_path / "file").write_text("x")
    with pytest.raises(ColaError, match="is a file, not a directory$"):
        check_output_dir(tmp_path / "file")


def test_check_output_dir_refuses_a_read_only_parent(tmp_path) -> None:
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who may write anywhere (root)")
        with pytest.raises(ColaError, match="is not writable: .* does not allow writing"):
            check_output_dir(locked / "out")
    finally:
        locked.chmod(0o700)


def test_curate_refuses_an_empty_output_dir(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # an empty name used to mean the current directory
    monkeypatch.setattr("cola.models.load_model", lambda *a, **k: pytest.fail("the model loaded"))
    assert main(["curate", "--output_dir", "", "--datasets", "embedded-math", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "cola: error: output_dir is empty: name the directory to write to (an empty name would mean the current "
        "directory)"]
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_fails_on_a_bad_source_leaves_no_output_directory(model_and_tokenizer, tmp_path, capsys,
                                                                     monkeypatch) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{"text": \n')
    out = tmp_path / "deep" / "out"
    with pytest.raises(ColaError, match="malformed JSON on line 2"):
        _cola(model_and_tokenizer, available_datasets=str(broken), output_dir=out).run(4, 32)
    assert not (tmp_path / "deep").exists()
    monkeypatch.setattr("cola.models.load_model", lambda *a, **k: pytest.fail("the model loaded"))
    assert main(["curate", "--output_dir", str(out), "--datasets", str(broken), "--quiet"]) == 2
    assert "malformed JSON on line 2" in capsys.readouterr().err
    assert not (tmp_path / "deep").exists()


# --- fail fast: everything a run reads, before any model work ---------------------------------------------------

def _offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("cola.models.load_model", lambda *a, **k: pytest.fail("the model loaded"))


COMMONSENSE_OFFLINE = ("capability 'commonsense' has no offline reference set: its default, hub dataset "
                       "'tau/commonsense_qa' (commonsense_qa), needs the Hugging Face hub, which is unreachable "
                       "(HF_HUB_OFFLINE=1 is set); give a local file with --reference commonsense=PATH")


def test_the_seeds_commonsense_command_fails_before_the_model_loads(pool_files, tmp_path, monkeypatch,
                                                                    capsys) -> None:
    """It ran Stage 2 and the whole extraction (53 minutes on a busy machine) before failing on the hub reference."""
    _offline(monkeypatch)
    out = tmp_path / "out"
    start = time.perf_counter()
    code = main(["curate", "--output_dir", str(out), "--quiet", "--datasets", *map(str, pool_files.values()),
                 "--target_capabilities", "commonsense", "math", "code"])
    seconds = time.perf_counter() - start
    assert code == 2 and capsys.readouterr().err.strip().splitlines() == [f"cola: error: {COMMONSENSE_OFFLINE}"]
    assert not out.exists()
    assert seconds < 30  # reading three small files; no model work at all (load_model would have failed the test)


def test_a_declared_commonsense_source_without_targets_fails_as_early(tmp_path, monkeypatch, capsys) -> None:
    _offline(monkeypatch)
    arc = write_jsonl(tmp_path / "arc.jsonl", [
        {"question": f"Which is heavier, item {i}?", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
         "answerKey": "A"} for i in range(10)])
    assert main(["curate", "--output_dir", str(tmp_path / "out"), "--quiet", "--datasets", str(arc), "--stage1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"cola: error: {COMMONSENSE_OFFLINE}"]


def test_api_fails_on_the_offline_reference_before_stage2(model_and_tokenizer, prose, tmp_path, monkeypatch,
                                                          no_stage2) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cola = _cola(model_and_tokenizer, available_datasets=str(prose), target_capabilities=["general", "commonsense"],
                 output_dir=tmp_path / "out")
    with pytest.raises(ColaError) as err:
        cola.run(4, 32)
    assert str(err.value) == COMMONSENSE_OFFLINE and not (tmp_path / "out").exists()


def test_a_local_commonsense_reference_runs_offline(model_and_tokenizer, prose, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference = write_jsonl(tmp_path / "csqa.jsonl", [
        {"question": f"Where would you put thing {i}?", "choices": {"text": ["box", "shelf"], "label": ["A", "B"]},
         "answerKey": "B"} for i in range(12)])
    cola = _cola(model_and_tokenizer, available_datasets=str(prose), target_capabilities=["general", "commonsense"],
                 output_dir=tmp_path / "out", references=(("commonsense", str(reference)),))
    assert len(cola.run(4, 32)) == 4
    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    # General is probed by held-out records of the pool's own prose (`prose`), commonsense by the file given.
    assert manifest["stage1"]["references"] == {"general": "pool:prose", "commonsense": str(reference)}


@pytest.mark.parametrize("reference, message", [
    ("commonsense=tau/commonsense_qa", "--reference commonsense=tau/commonsense_qa needs the Hugging Face hub, which "
                                       "is unreachable (HF_HUB_OFFLINE=1 is set); give a local file with --reference "
                                       "commonsense=PATH"),
    ("commonsense=missing.jsonl", "--reference commonsense=missing.jsonl: dataset file not found: missing.jsonl"),
    ("math=EMPTY", "--reference math=EMPTY: EMPTY: the source is empty"),
])
def test_bad_references_fail_before_the_model_loads(pool_files, tmp_path, monkeypatch, capsys, reference,
                                                    message) -> None:
    _offline(monkeypatch)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    reference = reference.replace("EMPTY", str(empty))
    targets = ["math", "code", "commonsense"] if reference.startswith("commonsense") else ["math", "code"]
    code = main(["curate", "--output_dir", str(tmp_path / "out"), "--quiet", "--reference", reference,
                 "--datasets", *map(str, pool_files.values()), "--target_capabilities", *targets,
                 "--no_dedup"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"cola: error: {message.replace('EMPTY', str(empty))}"]
    assert not (tmp_path / "out").exists()


def test_a_capability_without_any_reference_fails_before_reading_sources(tmp_path, monkeypatch, capsys) -> None:
    _offline(monkeypatch)
    monkeypatch.setattr("cola.inputs.load_sources", lambda *a, **k: pytest.fail("sources were read"))
    assert main(["curate", "--output_dir", str(tmp_path / "out"), "--quiet", "--datasets", "embedded",
                 "--target_capabilities", "poetry"]) == 2
    assert capsys.readouterr().err.strip() == (
        "cola: error: capability 'poetry' has no reference set: known ones are code, commonsense, general, math; "
        "give one with --reference poetry=PATH_OR_DATASET")
    assert main(["curate", "--output_dir", str(tmp_path / "out"), "--quiet", "--datasets", "embedded",
                 "--deployment_type", "targeted", "--targeted_capability", "maths"]) == 2
    assert capsys.readouterr().err.strip() == (
        "cola: error: capability 'maths' has no reference set (did you mean math?): known ones are code, "
        "commonsense, general, math; give one with --reference maths=PATH_OR_DATASET")
    assert not (tmp_path / "out").exists()


def test_bad_layers_fail_before_stage2(model_and_tokenizer, prose, tmp_path, no_stage2) -> None:
    cola = _cola(model_and_tokenizer, available_datasets=str(prose), output_dir=tmp_path / "out",
                 selection=SelectionConfig(method="activations", layers=(0, 7)))
    with pytest.raises(ColaError, match="unknown layer index 7: the model has 2 decoder layers"):
        cola.run(4, 32)


def test_a_missing_semantic_embedder_fails_before_the_model_loads(pool_files, tmp_path, monkeypatch,
                                                                  capsys) -> None:
    _offline(monkeypatch)
    pytest.importorskip("sentence_transformers", reason="the embedder extra is not installed")
    code = main(["curate", "--output_dir", str(tmp_path / "out"), "--quiet", "--datasets",
                 *map(str, pool_files.values()), "--semantic_embedder", str(tmp_path / "no-such-embedder")])
    assert code == 2 and capsys.readouterr().err.strip() == (
        f"cola: error: cannot load sentence embedder '{tmp_path / 'no-such-embedder'}': no such directory")


def test_samples_file_is_written_by_a_good_run(model_and_tokenizer, prose, tmp_path) -> None:
    out = tmp_path / "new" / "out"
    _cola(model_and_tokenizer, available_datasets=[prose], output_dir=out).run(4, 32)
    assert (out / SAMPLES_FILE).is_file()
