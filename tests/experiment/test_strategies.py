"""The experiment's named strategies: each writes a calibration directory load_calibration reads."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cola.compress.calibration import load_calibration
from cola.errors import ColaError
from cola.export import MANIFEST_FILE, POOL_PARQUET, SAMPLES_FILE
from cola.experiment.strategies import STRATEGIES, curate_strategy, strategy_config

from tests.conftest import byte_tokenizer, tiny_llama

EXPECTED_METHOD = {"random_c4": "random", "random_mixed": "random", "cola": "activation_kmeans_medoid",
                   "no_stage1": "activation_kmeans_medoid", "no_stage2": "activation_kmeans_medoid",
                   "no_stage3": "random", "text_clusters": "tfidf_kmeans_medoid",
                   "lexical_diversity": "greedy_token_coverage", "self_generated": "self_generated_low_perplexity",
                   "moments": "moment_matching", "cola_moments": "moment_matching",
                   "outlier_coverage": "channel_maxima_coverage"}


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_llama(), byte_tokenizer()


def curate(name: str, pool_files: dict[str, Path], out: Path, model_and_tokenizer, seed: int = 0,
           candidates: int = 8, **kw) -> Path:
    model, tokenizer = model_and_tokenizer
    return curate_strategy(name, model=model, tokenizer=tokenizer, datasets=[str(p) for p in pool_files.values()],
                           num_samples=4, sequence_length=32, seed=seed, output_dir=out, random_source="prose",
                           candidates_per_source=candidates, reference_size=8, **kw)


def test_every_strategy_writes_a_loadable_calibration_set(pool_files, tmp_path, model_and_tokenizer) -> None:
    assert set(STRATEGIES) == set(EXPECTED_METHOD)
    tokenizer = model_and_tokenizer[1]
    for name in STRATEGIES:  # prose records repeat one sentence: 35 of 40 are near duplicates, so random_c4
        out = curate(name, pool_files, tmp_path / name, model_and_tokenizer,  # reads all 40 to fill 4 samples
                     candidates=40 if name == "random_c4" else 8,
                     **({"generation": {"prompt_tokens": 4}} if name == "self_generated" else {}))
        calibration = load_calibration(out, tokenizer)
        assert len(calibration) == 4, name
        manifest = json.loads((out / MANIFEST_FILE).read_text())
        samples = json.loads((out / SAMPLES_FILE).read_text())
        assert manifest["strategy"] == name and manifest["seed"] == 0 and manifest["num_samples"] == 4
        assert manifest["settings"]["selection"]["seed"] == 0
        assert {s["selection_method"] for s in samples} == {EXPECTED_METHOD[name]}, name
        lengths = {len(x) for x in calibration.input_ids}
        assert lengths == {32} if name != "no_stage2" else max(lengths) <= 32, name
        if name == "random_c4":
            assert {s["dataset_name"] for s in samples} == {"prose"}
            assert manifest["settings"]["process"]["chat_template"] == "off"
        if name in ("moments", "cola_moments"):
            assert manifest["stages"]["selection_method"] == "moments"
            assert manifest["stages"]["stage1_dataset_selection"].startswith("off") == (name == "moments")
            assert manifest["diagnostics"]["moment_match"]["sites"] == 2 * 4  # tiny_llama: 2 layers x 4 inputs
            assert "range_coverage" not in manifest["diagnostics"]
        if name == "outlier_coverage":
            assert manifest["stages"]["selection_method"] == "outlier_coverage"
            coverage = manifest["diagnostics"]["range_coverage"]
            for pick in ("selected", "random_selection_same_size"):  # shares of the pool's maxima reached
                assert 0 < coverage[pick]["min"] <= coverage[pick]["mean"] <= 1
        if name in ("text_clusters", "lexical_diversity"):
            assert manifest["stages"]["selection_method"] == name
            assert manifest["stages"]["stage1_dataset_selection"].startswith("off")
            assert "extraction" not in manifest["diagnostics"]  # the pool was not embedded
        if name == "self_generated":
            generation = manifest["generation"]
            assert generation["generated"] == 5 and generation["dropped"] == 1
            assert {s["dataset_name"] for s in samples} == {"self_generated"}
            pool = pq.read_table(out / POOL_PARQUET).to_pydict()
            assert sum(pool["selected"]) == 4 and len(pool["perplexity"]) == 5


def test_strategies_are_seeded(pool_files, tmp_path, model_and_tokenizer) -> None:
    def texts(out: Path) -> list[str]:
        return [s["text"] for s in json.loads((out / SAMPLES_FILE).read_text())]

    for name in ("text_clusters", "lexical_diversity"):
        a = curate(name, pool_files, tmp_path / f"{name}-a", model_and_tokenizer, seed=1)
        b = curate(name, pool_files, tmp_path / f"{name}-b", model_and_tokenizer, seed=1)
        c = curate(name, pool_files, tmp_path / f"{name}-c", model_and_tokenizer, seed=2)
        assert texts(a) == texts(b) and texts(a) != texts(c)


def test_strategy_errors(pool_files, tmp_path, model_and_tokenizer) -> None:
    datasets = [str(p) for p in pool_files.values()]
    with pytest.raises(ColaError, match="unknown strategy 'colla'.*'cola'.*Valid choices: .*self_generated"):
        strategy_config("colla", datasets=datasets, num_samples=4, sequence_length=32, seed=0)
    with pytest.raises(ColaError, match="random_source 'c4' but none matches; datasets: mathqa, prose, code"):
        strategy_config("random_c4", datasets=datasets, num_samples=4, sequence_length=32, seed=0)
    with pytest.raises(ColaError, match="strategy 'cola' fixes stage1=True; do not pass stage1=False"):
        strategy_config("cola", datasets=datasets, num_samples=4, sequence_length=32, seed=0, stage1=False)
    with pytest.raises(ColaError, match="unknown curation setting 'stage_1'"):
        strategy_config("cola", datasets=datasets, num_samples=4, sequence_length=32, seed=0, stage_1=False)
    with pytest.raises(ColaError, match="generation settings only apply to self_generated"):
        curate("cola", pool_files, tmp_path / "x", model_and_tokenizer, generation={"prompt_tokens": 4})
    with pytest.raises(ColaError, match=r"unknown selection setting 'layer'.*layers"):
        strategy_config("cola", datasets=datasets, num_samples=4, sequence_length=32, seed=0,
                        selection={"layer": [1]})
    with pytest.raises(ColaError, match="strategy 'random_c4' fixes process.chat_template='off'"):
        strategy_config("random_c4", datasets=datasets, num_samples=4, sequence_length=32, seed=0,
                        random_source="prose", process={"chat_template": "auto"})
    config = strategy_config("random_c4", datasets=["embedded"], num_samples=4, sequence_length=32, seed=3,
                             random_source="embedded-general")
    assert config.datasets == ("embedded-general",) and config.selection.seed == 3 and not config.stage3


def test_nested_settings_as_mappings_or_dotted_names(pool_files, tmp_path, model_and_tokenizer) -> None:
    datasets = [str(p) for p in pool_files.values()]
    nested = strategy_config("cola", datasets=datasets, num_samples=4, sequence_length=32, seed=5,
                             process={"chat_template": "off"}, selection={"layers": [1], "projection_dim": 8},
                             capability_weights={"math": 2.0})
    dotted = strategy_config("cola", datasets=datasets, num_samples=4, sequence_length=32, seed=5,
                             **{"process.chat_template": "off", "selection.layers": (1,),
                                "selection.projection_dim": 8}, capability_weights=(("math", 2.0),))
    assert nested == dotted
    assert nested.process.chat_template == "off" and nested.process.enabled  # the strategy's fields still set
    assert nested.selection.layers == (1,) and nested.selection.seed == 5 and nested.stage1
    out = curate("cola", pool_files, tmp_path / "plain", model_and_tokenizer, label="cola_plain",
                 process={"chat_template": "off"}, selection={"projection_dim": 8, "pooling": "last"})
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["strategy"] == "cola" and manifest["strategy_label"] == "cola_plain"
    assert manifest["settings"]["process"]["chat_template"] == "off"
    assert manifest["settings"]["selection"]["projection_dim"] == 8
    assert manifest["settings"]["selection"]["pooling"] == "last"
