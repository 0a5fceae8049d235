"""Stage 1 reads capabilities from content: label-less sources get theirs from the coverage table, hints win."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cola.cli import main
from cola.config import CurateConfig
from cola.data.sources import CAPABILITY_ORIGINS, Source, load_source, parse_source
from cola.export import MANIFEST_FILE, POOL_PARQUET, SAMPLES_FILE
from cola.stages.domain import DomainConfig
from cola.data.catalog import CATALOG, reference_capabilities
from cola.data.embedded import EMBEDDED_CAPABILITIES
from cola.stages.mixture import (default_reference, load_references, plan_mixture, probed_capabilities,
                                 stage1_targets)
from cola.stages.process import reference_probes

from tests.conftest import SHARED_DATA, byte_tokenizer, needs_shared_data, write_jsonl

DIM = 12
CENTERS = {"general": np.eye(DIM)[0] * 8, "math": np.eye(DIM)[1] * 8, "code": np.eye(DIM)[2] * 8}


def _kind(text: str) -> str:
    """What a planted text is about: code has `def`, math has `=` between numbers, the rest is prose."""
    return "code" if "def " in text else "math" if " = " in text else "general"


def _texts(kind: str, n: int, offset: int = 0) -> list[str]:
    words = ["river", "mill", "town", "market", "bridge", "harbour", "garden", "station"]
    make = {"general": lambda i: f"The {words[i % 8]} near the {words[(i + 3) % 8]} was quiet that morning {i}.",
            "math": lambda i: f"{i} + {3 * i} = {4 * i} and {i} * 2 = {2 * i}, so {4 * i} - {2 * i} = {2 * i}.",
            "code": lambda i: f"def f{i}(x):\n    return x * {i} + {i % 5}\n"}[kind]
    return [make(i + offset) for i in range(n)]


def _planted_embed(tokenizer):
    """A stand-in for the model's projected activations: each text lands near its kind's center."""
    def embed(token_ids) -> np.ndarray:
        rng = np.random.default_rng(len(token_ids))
        kinds = [_kind(tokenizer.decode(ids)) for ids in token_ids]
        return np.stack([CENTERS[k] + rng.normal(scale=0.5, size=DIM) for k in kinds])  # (N, P)
    return embed


@pytest.fixture()
def planted(tmp_path):
    """Three label-less {"text"} files (prose, arithmetic, code) and a reference file per capability."""
    files = {kind: write_jsonl(tmp_path / f"{name}.jsonl", [{"text": t} for t in _texts(kind, 30)])
             for kind, name in (("general", "web"), ("math", "sums"), ("code", "snippets"))}
    refs = {kind: write_jsonl(tmp_path / f"ref-{kind}.jsonl", [{"text": t} for t in _texts(kind, 12, offset=100)])
            for kind in CENTERS}
    return files, refs


def _config(files, refs, **kwargs) -> CurateConfig:
    base = dict(datasets=tuple(str(p) for p in files), num_samples=20, sequence_length=64, reference_size=12,
                references=tuple((c, str(p)) for c, p in refs.items()), domain=DomainConfig(reference_clusters=3))
    return CurateConfig(**{**base, **kwargs})


def _plan(config: CurateConfig):
    tokenizer = byte_tokenizer()
    sources = [load_source(parse_source(d), max_candidates=100, seed=0) for d in config.datasets]
    ids, names = [], []
    for source in sources:
        for text in source.texts:
            ids.append(np.asarray(tokenizer(text)["input_ids"], dtype=np.int32))
            names.append(source.spec.name)
    embed = _planted_embed(tokenizer)
    references = load_references(config, probed_capabilities(config, sources))
    probes = {c: reference_probes(r, tokenizer, config.sequence_length) for c, r in references.items()}
    probe_features = {c: embed([p.input_ids for p in samples]) for c, samples in probes.items()}
    return plan_mixture(embed(ids), ids, names, sources, probes, probe_features, config,
                        vocab_size=len(tokenizer))


def test_label_less_sources_take_the_capability_their_content_matches(planted) -> None:
    files, refs = planted
    config = _config([files["general"], files["math"], files["code"]], refs,
                     target_capabilities=("math", "code", "general"), deployment_type="targeted",
                     targeted_capability="math")
    plan = _plan(config)
    assert [(s.spec.name, s.capability, s.capability_origin) for s in plan.sources] == [
        ("web", "general", "coverage"), ("sums", "math", "coverage"), ("snippets", "code", "coverage")]
    assert plan.targets == ("math", "code", "general")
    assert sum(plan.quotas.values()) == 20 and plan.quotas["sums"] >= 0.6 * 20, plan.quotas
    assert plan.report["capabilities"]["sums"] == {"capability": "math", "capability_origin": "coverage"}


def test_a_label_wins_over_content_and_general_deployment_represents_every_target(planted) -> None:
    files, refs = planted
    labelled = f"{files['code']}@math"  # code labelled math: the label wins, the manifest says so
    config = _config([files["general"], files["math"], labelled], refs)
    plan = _plan(config)
    assert [(s.spec.name, s.capability, s.capability_origin) for s in plan.sources] == [
        ("web", "general", "coverage"), ("sums", "math", "coverage"), ("snippets", "math", "label")]
    # No targets given: the sources' capabilities (in source order); code was probed, but nothing serves it.
    assert plan.targets == ("general", "math")
    assert set(plan.table["web"]) == {"math", "general", "code"}
    assert min(plan.quotas.values()) >= 1 and sum(plan.quotas.values()) == 20


def test_general_deployment_draws_from_every_discovered_capability(planted) -> None:
    files, refs = planted
    plan = _plan(_config([files["general"], files["math"], files["code"]], refs))
    assert plan.targets == ("general", "math", "code")
    for capability in plan.targets:  # each capability's best dataset contributes
        best = max(plan.table, key=lambda d: plan.table[d][capability]["score"])
        assert plan.quotas[best] >= 1


def _source(capability: str, origin: str) -> Source:
    """A loaded source whose capability came from `origin` (only these two fields matter to the functions)."""
    return Source(spec=parse_source("embedded-general"), capability=capability, fields=("text",), texts=("t",),
                  records_seen=1, empty_skipped=0, capability_origin=origin)


def test_probed_capabilities() -> None:
    labelled = [_source("math", "embedded"), _source("math", "catalog")]
    unlabelled = _source("general", "default")
    config = CurateConfig(datasets=("embedded",))
    assert probed_capabilities(config, labelled) == ("math",)
    assert probed_capabilities(CurateConfig(deployment_type="targeted", targeted_capability="code"),
                               labelled) == ("math", "code")
    assert probed_capabilities(config, [*labelled, unlabelled]) == ("math", "general", "code")
    with_reference = CurateConfig(references=(("legal", "laws.jsonl"),))
    assert probed_capabilities(with_reference, [unlabelled]) == ("general", "math", "code", "legal")
    given = CurateConfig(target_capabilities=("commonsense",))
    assert probed_capabilities(given, [*labelled, unlabelled]) == ("commonsense",)


def test_stage1_targets() -> None:
    sources = [_source("math", "embedded"), _source("general", "coverage")]
    assert stage1_targets(CurateConfig(), sources) == ("math", "general")
    assert stage1_targets(CurateConfig(deployment_type="targeted", targeted_capability="code"), sources) == (
        "math", "general", "code")
    assert stage1_targets(CurateConfig(target_capabilities=("code",)), sources) == ("code",)


def test_each_kind_of_hint_sets_its_origin(tmp_path) -> None:
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "a plain text", "note": "another text"}])
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "1 + 1?", "answer": "2", "note": "x"}])

    def origin(spec: str) -> tuple[str, str, bool]:
        source = load_source(parse_source(spec), max_candidates=5, seed=0)
        return source.capability, source.capability_origin, source.capability_given

    assert origin(str(text)) == ("general", "default", False)  # Stage 1 decides, if it runs
    assert origin(f"{text}#note") == ("general", "default", False)
    assert origin(str(qa)) == ("math", "catalog", True)  # gsm8k's columns
    assert origin(f"{qa}#question+answer") == ("math", "catalog", True)
    assert origin(f"{text}@code") == ("code", "label", True)
    assert origin(f"{qa}@code") == ("code", "label", True)  # a label beats the catalog
    assert origin("embedded-math") == ("math", "embedded", True)
    assert origin("embedded-math@code") == ("code", "label", True)
    described = load_source(parse_source(str(text)), max_candidates=5, seed=0).describe()
    assert (described["capability"], described["capability_origin"]) == ("general", "default")


def test_every_capability_origin_is_described() -> None:
    assert set(CAPABILITY_ORIGINS) == {"label", "catalog", "embedded", "coverage", "default"}


# --- the command line, the issue's case on the tiny model ---------------------------------------------------------

def _text_files(tmp_path: Path) -> list[Path]:
    """The issue's three files as plain {"text"} rows: no column tells what they are."""
    return [write_jsonl(tmp_path / f"{name}.jsonl", [{"text": t} for t in _texts(kind, 40)])
            for name, kind in (("c4", "general"), ("gsm8k", "math"), ("mbpp", "code"))]


def _curate(tiny_model_dir: Path, out: Path, datasets: list, *extra: str) -> int:
    return main(["curate", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--quiet",
                 "--dtype", "float32", "--device", "cpu", "--num_samples", "6", "--sequence_length", "48",
                 "--candidates_per_source", "16", "--datasets", *map(str, datasets), *extra,
                 *([] if "--no_stage1" in extra else ["--reference_size", "8"])])  # a Stage 1 setting


def test_targeted_math_over_label_less_text_files_runs(tiny_model_dir, tmp_path) -> None:
    """It failed: "unknown target capability (no dataset serves it) 'math'. Valid choices: general"."""
    out = tmp_path / "out"
    assert _curate(tiny_model_dir, out, _text_files(tmp_path), "--target_capabilities", "math", "code", "general",
                   "--deployment_type", "targeted", "--targeted_capability", "math") == 0
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert [(s["name"], s["capability_origin"]) for s in manifest["sources"]] == [
        ("c4", "coverage"), ("gsm8k", "coverage"), ("mbpp", "coverage")]
    coverage = manifest["stage1"]["coverage"]
    for source in manifest["sources"]:  # each got the capability it scores highest on
        row = coverage[source["name"]]
        assert source["capability"] == max(row, key=lambda c: row[c]["score"])
        assert manifest["stage1"]["capabilities"][source["name"]] == {
            "capability": source["capability"], "capability_origin": "coverage"}
    assert manifest["target_capabilities"] == ["math", "code", "general"]
    # General is probed by the pool's prose: c4 (plain words); the gsm8k and mbpp texts are arithmetic and code.
    assert manifest["stage1"]["references"] == {"math": "embedded-math", "code": "embedded-code", "general": "pool:c4"}
    pool = pq.read_table(out / POOL_PARQUET).to_pydict()
    by_name = {s["name"]: s["capability"] for s in manifest["sources"]}
    assert pool["capability"] == [by_name[n] for n in pool["dataset_name"]]
    for sample in json.loads((out / SAMPLES_FILE).read_text()):
        assert list(sample["capability_scores"]) == ["math", "code", "general"]
    # The local gsm8k.jsonl of plain texts is free text to Stage 2, not the catalog's gsm8k Q&A schema.
    assert [e["formatter"] for e in manifest["stage2"]["sources"]] == ["text", "text", "text"]
    assert all(e["samples"] > 0 for e in manifest["stage2"]["sources"])


def test_labels_and_catalog_still_win(tiny_model_dir, tmp_path, pool_files) -> None:
    out = tmp_path / "out"
    c4, gsm8k, _ = _text_files(tmp_path)
    assert _curate(tiny_model_dir, out, [f"{c4}@general", f"{gsm8k}@math", pool_files["code"]], "--stage1") == 0
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert [(s["name"], s["capability"], s["capability_origin"]) for s in manifest["sources"]] == [
        ("c4", "general", "label"), ("gsm8k", "math", "label"), ("code", "code", "catalog")]
    assert manifest["target_capabilities"] == ["general", "math", "code"]
    assert set(manifest["stage1"]["coverage"]["c4"]) == {"general", "math", "code"}  # no label-less: no extra probe


def test_without_stage1_a_label_less_source_is_general_by_default(tiny_model_dir, tmp_path) -> None:
    out = tmp_path / "out"
    c4, gsm8k, mbpp = _text_files(tmp_path)
    assert _curate(tiny_model_dir, out, [c4, f"{gsm8k}@math", mbpp], "--no_stage1") == 0
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert [(s["name"], s["capability"], s["capability_origin"]) for s in manifest["sources"]] == [
        ("c4", "general", "default"), ("gsm8k", "math", "label"), ("mbpp", "general", "default")]
    assert manifest["target_capabilities"] == ["general", "math"] and manifest["stage1"] == {}
    for sample in json.loads((out / SAMPLES_FILE).read_text()):  # no scores without Stage 1: the hint, 1 or 0
        expected = {"general": 0.0, "math": 0.0} | {("math" if sample["dataset_name"] == "gsm8k" else "general"): 1.0}
        assert sample["capability_scores"] == expected


def test_without_stage1_a_target_no_hint_serves_is_an_error(tiny_model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = _curate(tiny_model_dir, out, _text_files(tmp_path), "--no_stage1", "--target_capabilities", "math")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        "cola: error: unknown target capability (no dataset serves it) 'math'. Valid choices: general. Stage 1 is "
        "off, so capabilities come only from labels and the catalog: label a source SOURCE@math"]
    assert not out.exists()
    code = _curate(tiny_model_dir, out, _text_files(tmp_path), "--no_stage1", "--target_capabilities", "math",
                   "code", "general", "commonsense")
    err = capsys.readouterr().err.strip().splitlines()  # every unserved target at once, not one per rerun
    assert code == 2 and err == [
        "cola: error: no dataset serves the target capabilities 'math', 'code', 'commonsense' (the datasets carry "
        "general). Stage 1 is off, so capabilities come only from labels and the catalog: label sources "
        "SOURCE@CAPABILITY"]


# --- the issue's example on SmolLM2 and the real files ---------------------------------------------------------

@pytest.fixture(scope="module")
def issue_files(tmp_path_factory) -> list[Path]:
    """c4, gsm8k (question + answer) and mbpp (text + code) as plain {"text"} files: nothing but content says
    what they are."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not found")
    folder = tmp_path_factory.mktemp("issue-files")

    def read(path: str) -> list[dict]:
        return [json.loads(line) for line in (SHARED_DATA / path).read_text(encoding="utf-8").splitlines()]

    rows = {"c4": [r["text"] for r in read("c4/c4_en_train_first1000.jsonl")],
            "gsm8k": [f"{r['question']}\n{r['answer']}" for r in read("gsm8k/train.jsonl")],
            "mbpp": [f"{r['text']}\n{r['code']}" for r in read("mbpp/mbpp_train_valid_prompt.jsonl")]}
    return [write_jsonl(folder / f"{name}.jsonl", [{"text": t} for t in texts]) for name, texts in rows.items()]


def _curate_smollm2(files: list[Path], out: Path, *extra: str) -> dict:
    assert main(["curate", "--output_dir", str(out), "--quiet", "--num_samples", "32", "--sequence_length", "256",
                 "--candidates_per_source", "64", "--reference_size", "32", "--datasets", *map(str, files),
                 "--target_capabilities", "math", "code", "general", *extra]) == 0
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert [(s["name"], s["capability"], s["capability_origin"]) for s in manifest["sources"]] == [
        ("c4", "general", "coverage"), ("gsm8k", "math", "coverage"), ("mbpp", "code", "coverage")]
    return manifest


@pytest.mark.integration
@needs_shared_data
def test_targeted_math_on_smollm2_draws_most_samples_from_gsm8k(issue_files, tmp_path) -> None:
    """The issue's command, targeted math: Stage 1 finds gsm8k is the math source and gives it >= 60 %."""
    manifest = _curate_smollm2(issue_files, tmp_path / "out", "--deployment_type", "targeted",
                               "--targeted_capability", "math")
    selected = manifest["diagnostics"]["selected_per_source"]
    assert sum(selected.values()) == 32 and selected.get("gsm8k", 0) >= 0.6 * 32, selected


@pytest.mark.integration
@needs_shared_data
def test_general_deployment_on_smollm2_represents_every_capability(issue_files, tmp_path) -> None:
    manifest = _curate_smollm2(issue_files, tmp_path / "out")
    selected = manifest["diagnostics"]["selected_per_source"]
    assert sum(selected.values()) == 32
    by_capability = {s["capability"]: s["name"] for s in manifest["sources"]}
    assert all(selected.get(by_capability[c], 0) >= 1 for c in ("math", "code", "general")), selected


def test_every_capability_listed_as_known_has_a_default_reference_and_no_other_has() -> None:
    known = reference_capabilities()
    assert known == ["code", "commonsense", "general", "math"]
    assert all(default_reference(c) for c in known) and set(EMBEDDED_CAPABILITIES) <= set(known)
    assert [default_reference(c) for c in known] == ["embedded-code", "commonsense_qa", "embedded-general",
                                                     "embedded-math"]
    assert all(default_reference(c) in CATALOG for c in set(known) - set(EMBEDDED_CAPABILITIES))
    assert default_reference("poetry") is None and reference_capabilities(["poetry"])[-1] == "poetry"
