"""The calibration-quality score (`cola.score`, `cola score`): its math on planted arrays, the ranking of a set
drawn from the reference distribution above one drawn from another, determinism, the manifest entry, the errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cola.cli import main
from cola.config import SelectionConfig
from cola.errors import ColaError
from cola.export import MANIFEST_FILE, tokenizer_fingerprint, write_outputs
from cola.moments import MomentSketches, Site
from cola.score import (SCORE_KEY, coverage_distances, embed_for_score, h_match_errors, score_calibration,
                        score_extractions)
from tests.conftest import byte_tokenizer, tiny_llama, write_jsonl

WORDS = ("the", "river", "ran", "past", "old", "mill", "and", "town", "green", "hill", "water", "stone")
LENGTH = 32


def prose(rng: np.random.Generator) -> str:
    """Distribution A: lower-case English words."""
    return " ".join(rng.choice(WORDS, 12))


def sums(rng: np.random.Generator) -> str:
    """Distribution B: digits and arithmetic signs."""
    a, b = rng.integers(0, 999, 2)
    return f"{a}+{b}={a + b}; {b}*{a % 9}={b * (a % 9)}; "


def token_ids(texts: list[str]) -> list[np.ndarray]:
    tokenizer = byte_tokenizer()
    return [np.asarray(tokenizer(t)["input_ids"][:LENGTH]) for t in texts]


def texts(kind, count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [kind(rng) * 3 for _ in range(count)]


def write_set(path: Path, ids: list[np.ndarray], model: str | None) -> Path:
    """A curate-style output directory holding `ids`, its manifest naming `model` and the byte tokenizer."""
    manifest = {"tool": "cola", "command": "curate", "tokenizer": tokenizer_fingerprint(byte_tokenizer()),
                "settings": {"sequence_length": LENGTH}, **({"model": model} if model else {})}
    write_outputs(path, samples=[{"text": ""} for _ in ids], input_ids=ids,
                  pool={"pool_index": list(range(len(ids)))}, manifest=manifest)
    return path


# --- the math ---------------------------------------------------------------------------------------------------

def _sketches(values: np.ndarray, tokens: list[int], sites: int = 1) -> MomentSketches:
    return MomentSketches(values=values, tokens=np.asarray(tokens), sketch_dim=1,
                          sites=tuple(Site(i, ("q_proj",), 4) for i in range(sites)))


def test_h_match_is_zero_on_the_reference_itself_and_relative_per_part():
    # sketch_dim 1: per site one covariance column, then two diagonal columns
    reference = _sketches(np.array([[2.0, 3.0, 4.0], [2.0, 3.0, 4.0]]), [5, 5])
    assert h_match_errors(reference, reference) == {"covariance": [0.0], "diagonal": [0.0]}
    calibration = _sketches(np.array([[4.0, 3.0, 4.0]]), [7])
    errors = h_match_errors(calibration, reference)
    assert errors["diagonal"] == [0.0]
    assert errors["covariance"] == [pytest.approx(1.0)]  # |4 - 2| / |2|


def test_h_match_weights_candidates_by_tokens():
    reference = _sketches(np.array([[1.0, 1.0, 1.0]]), [1])
    # (3 * 0 + 1 * 4) / 4 = 1 per column: the token-weighted mean equals the reference exactly
    calibration = _sketches(np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]]), [3, 1])
    assert h_match_errors(calibration, reference) == {"covariance": [0.0], "diagonal": [0.0]}


def test_h_match_refuses_sketches_of_other_sites():
    with pytest.raises(ColaError, match=r"differ \(2 vs 1 sites, sketch_dim 1 vs 1\)"):
        h_match_errors(_sketches(np.ones((1, 6)), [1], sites=2), _sketches(np.ones((1, 3)), [1]))


def test_coverage_is_the_distance_to_the_nearest_calibration_sample():
    calibration = np.array([[0.0, 0.0], [3.0, 4.0]])
    reference = np.array([[0.0, 0.0], [3.0, 0.0], [6.0, 8.0]])
    assert coverage_distances(calibration, reference).tolist() == [0.0, 3.0, 5.0]
    with pytest.raises(ColaError, match="2 dimensions and the reference's 3"):
        coverage_distances(calibration, np.ones((1, 3)))


# --- the planted ranking, on the tiny model ---------------------------------------------------------------------

def test_a_set_from_the_reference_distribution_scores_better_on_every_figure():
    model, selection = tiny_llama(layers=2), SelectionConfig(projection_dim=16, sketch_dim=4)

    def embed(ids):
        return embed_for_score(model, ids, selection, quiet=True)

    references = {"prose": ("prose.jsonl", embed(token_ids(texts(prose, 16, seed=1)))),
                  "sums": ("sums.jsonl", embed(token_ids(texts(sums, 16, seed=2))))}
    from_prose = score_extractions(embed(token_ids(texts(prose, 8, seed=3))), references)
    from_sums = score_extractions(embed(token_ids(texts(sums, 8, seed=4))), references)
    for figure in ("h_match_error", "covariance_error", "diagonal_error", "coverage_distance"):
        assert getattr(from_prose["prose"], figure) < getattr(from_sums["prose"], figure), figure
        assert getattr(from_sums["sums"], figure) < getattr(from_prose["sums"], figure), figure
    assert (from_prose["prose"].reference, from_prose["prose"].reference_samples) == ("prose.jsonl", 16)
    assert from_prose["prose"].reference_tokens == 16 * LENGTH


# --- the command and its API ------------------------------------------------------------------------------------

@pytest.fixture()
def scored_inputs(tmp_path: Path, tiny_model_dir: Path) -> dict[str, Path]:
    reference = write_jsonl(tmp_path / "prose.jsonl", [{"text": t} for t in texts(prose, 12, seed=1)])
    good = write_set(tmp_path / "good", token_ids(texts(prose, 6, seed=3)), str(tiny_model_dir))
    bad = write_set(tmp_path / "bad", token_ids(texts(sums, 6, seed=4)), str(tiny_model_dir))
    return {"reference": reference, "good": good, "bad": bad, "model": tiny_model_dir}


def test_score_records_the_entry_in_the_manifest_and_leaves_the_set_valid(scored_inputs):
    from cola.compress.calibration import load_calibration

    good = scored_inputs["good"]
    before = json.loads((good / MANIFEST_FILE).read_text())
    score = score_calibration(good, {"general": str(scored_inputs["reference"])}, dtype="float32", quiet=True)
    after = json.loads((good / MANIFEST_FILE).read_text())
    assert {k: v for k, v in after.items() if k != SCORE_KEY} == before
    entry = after[SCORE_KEY]
    assert entry == score.as_dict()
    assert (entry["model"], entry["calibration_samples"], entry["calibration_tokens"]) == (
        str(scored_inputs["model"]), 6, 6 * LENGTH)
    assert entry["settings"] == {"layers": "all", "pooling": "mean", "projection_dim": 64, "sketch_dim": 16,
                                 "seed": 42}
    assert list(entry["capabilities"]) == ["general"]
    assert entry["capabilities"]["general"]["reference_samples"] == 12
    assert set(entry["capabilities"]["general"]) == {
        "reference", "reference_samples", "reference_tokens", "h_match_error", "covariance_error",
        "diagonal_error", "coverage_distance"}
    assert len(load_calibration(good)) == 6  # the outputs' hashes still match


def test_score_is_deterministic_and_ranks_the_planted_sets(scored_inputs):
    references = {"general": str(scored_inputs["reference"])}
    first = score_calibration(scored_inputs["good"], references, dtype="float32", write=False, quiet=True)
    again = score_calibration(scored_inputs["good"], references, dtype="float32", write=False, quiet=True)
    assert first.as_dict() == again.as_dict()
    assert SCORE_KEY not in json.loads((scored_inputs["good"] / MANIFEST_FILE).read_text())  # write=False
    bad = score_calibration(scored_inputs["bad"], references, dtype="float32", write=False, quiet=True)
    good_general, bad_general = first.capabilities["general"], bad.capabilities["general"]
    assert good_general.h_match_error < bad_general.h_match_error
    assert good_general.coverage_distance < bad_general.coverage_distance


def test_cli_prints_one_row_per_capability_and_records_it(scored_inputs, tmp_path, capsys):
    sums_file = write_jsonl(tmp_path / "sums.jsonl", [{"text": t} for t in texts(sums, 10, seed=2)])
    code = main(["score", str(scored_inputs["good"]), "--reference", f"prose={scored_inputs['reference']}",
                 "--reference", f"sums={sums_file}", "--reference_size", "8", "--dtype", "float32", "--quiet"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == (f"quality score of {scored_inputs['good']} (6 samples, {6 * LENGTH} tokens) on "
                      f"{scored_inputs['model']}; lower is better")
    assert out[1].split() == ["capability", "refs", "H-match", "cov.", "diag.", "coverage", "reference"]
    assert [line.split()[:2] for line in out[2:4]] == [["prose", "8"], ["sums", "8"]]
    assert out[2].endswith(str(scored_inputs["reference"])) and out[3].endswith(str(sums_file))
    assert out[4] == f"recorded under \"quality_score\" in {scored_inputs['good']}/manifest.json"
    entry = json.loads((scored_inputs["good"] / MANIFEST_FILE).read_text())[SCORE_KEY]
    assert list(entry["capabilities"]) == ["prose", "sums"]
    assert entry["capabilities"]["prose"]["coverage_distance"] < entry["capabilities"]["sums"]["coverage_distance"]


def _error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_errors_are_one_line_and_write_nothing(scored_inputs, tmp_path, capsys):
    good, reference = scored_inputs["good"], scored_inputs["reference"]
    manifest = (good / MANIFEST_FILE).read_bytes()
    ref = ["--reference", f"general={reference}", "--quiet"]
    assert _error(["score", str(tmp_path / "nothing"), *ref], capsys) == (
        f"cola: error: calibration directory {tmp_path / 'nothing'} does not exist (make one with `cola curate`)")
    (tmp_path / "empty").mkdir()
    assert "is not a cola calibration directory: it lacks manifest.json" in _error(
        ["score", str(tmp_path / "empty"), *ref], capsys)
    assert _error(["score", str(good), "--reference", f"general={tmp_path / 'missing.jsonl'}", "--quiet"],
                  capsys).startswith(f"cola: error: --reference general={tmp_path / 'missing.jsonl'}: ")
    assert _error(["score", str(good), *ref, "--reference", f"general={reference}"], capsys) == (
        "cola: error: --reference capability 'general' given twice")
    assert _error(["score", str(good), *ref, "--reference_size", "0"], capsys) == (
        "cola: error: reference_size must be at least 1, got 0")
    assert _error(["score", str(good), *ref, "--dtype", "float8"], capsys).startswith(
        "cola: error: unknown dtype 'float8'")
    with pytest.raises(SystemExit) as exc:
        main(["score", str(good), "--reference", "general"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("cola score: error: argument --reference: invalid --reference 'general': "
                                       "write CAPABILITY=PATH_OR_DATASET (see `cola score --help`)\n")
    assert (good / MANIFEST_FILE).read_bytes() == manifest


def test_a_model_with_another_vocabulary_or_none_named_is_refused(scored_inputs, tmp_path, capsys):
    from transformers import AutoTokenizer

    other = tmp_path / "other-model"
    tiny_llama(layers=1).save_pretrained(other)
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(other)
    assert len(AutoTokenizer.from_pretrained(other)) == 258
    ref = ["--reference", f"general={scored_inputs['reference']}", "--quiet"]
    manifest = (scored_inputs["good"] / MANIFEST_FILE).read_bytes()
    line = _error(["score", str(scored_inputs["good"]), "--model", str(other), *ref], capsys)
    assert "was tokenized with a different vocabulary" in line
    assert line.endswith("curate again with this model, or score it with the model it was curated with (--model)")
    assert (scored_inputs["good"] / MANIFEST_FILE).read_bytes() == manifest
    unnamed = write_set(tmp_path / "unnamed", token_ids(texts(prose, 2, seed=5)), None)
    assert _error(["score", str(unnamed), *ref], capsys) == (
        f"cola: error: {unnamed / MANIFEST_FILE} names no model: give one with --model")


@pytest.mark.parametrize(("references", "message"), [
    ("general=x.jsonl", "references must map each capability to its source (a file or a dataset name), e.g. "
                        "{'math': 'gsm8k'}, got text"),
    ({"general": " "}, "--reference general= : write CAPABILITY=SOURCE, the source a file or a dataset name"),
    ([("general", "a", "b")], "references must map each capability to its source (a file or a dataset name), "
                              "e.g. {'math': 'gsm8k'}, got a list of lists"),
    ({}, "no reference set given: name at least one with --reference CAPABILITY=SOURCE"),
    ({"": "x.jsonl"}, "an empty --reference capability name: ''"),
])
def test_api_refuses_malformed_references_before_the_model_loads(scored_inputs, references, message):
    manifest = (scored_inputs["good"] / MANIFEST_FILE).read_bytes()
    with pytest.raises(ColaError) as exc:
        score_calibration(scored_inputs["good"], references, model="no/such-model", quiet=True)
    assert str(exc.value) == message
    assert (scored_inputs["good"] / MANIFEST_FILE).read_bytes() == manifest
