"""`--evaluator lm-eval` (cola.evaluate.harness): lm-eval's own numbers on local task files, and its bad inputs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cola.errors import ColaError
from cola.evaluate import evaluate, retention, task_retention
from tests.conftest import SHARED_DATA, byte_tokenizer, needs_shared_data, tiny_llama, write_jsonl

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'cola[lm-eval]')")

from cola.evaluate.harness import (LOCAL_TASKS, lm_eval_config, plan_tasks, raw_results_path,  # noqa: E402
                                   wikitext_articles, write_task_configs)

ACTIVITIES = ["Cooking", "Gardening", "Running", "Painting", "Swimming", "Reading"]


def hellaswag_records(n: int = 6) -> list[dict]:
    """Records in Rowan/hellaswag's schema (what lm-eval's hellaswag reads), short enough for the tiny model."""
    return [{"ind": i, "activity_label": ACTIVITIES[i % len(ACTIVITIES)], "ctx_a": f"A person starts task {i}.",
             "ctx_b": "then they", "ctx": f"A person starts task {i}. then they",
             "endings": [f"stop at step {i}.", "walk [title] away.", "keep going on.", f"sit {i} times."],
             "source_id": f"s{i}", "split": "val", "split_type": "indomain", "label": str(i % 4)} for i in range(n)]


ARTICLES = [" = Alpha = \n \n Alpha is a letter . It comes first @-@ always . \n \n = = Use = = \n \n "
            "Alpha is used in maths . \n \n",
            " = Beta = \n \n Beta follows Alpha , and it is second . \n \n",
            " = Gamma = \n \n Gamma is third ; it has 3 @,@ 000 uses . \n"]


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """A data directory in the layout `LOCAL_TASKS` reads: hellaswag (HF schema), raw WikiText, gsm8k."""
    root = tmp_path / "data"
    (root / "hellaswag").mkdir(parents=True)
    write_jsonl(root / "hellaswag" / "validation.jsonl", hellaswag_records())
    (root / "wikitext2").mkdir()
    (root / "wikitext2" / "wiki.test.raw.txt").write_text(" \n" + "".join(ARTICLES), encoding="utf-8")
    (root / "gsm8k").mkdir()
    gsm = [{"question": f"What is {i} plus 1?", "answer": f"{i} + 1 = {i + 1}.\n#### {i + 1}"} for i in range(6)]
    write_jsonl(root / "gsm8k" / "test.jsonl", gsm)
    write_jsonl(root / "gsm8k" / "train.jsonl", gsm)
    return root


def test_wikitext_is_split_into_its_articles_at_top_level_headings():
    articles = wikitext_articles(" \n" + "".join(ARTICLES))
    assert len(articles) == 3  # the subheading " = = Use = = " stays inside Alpha; the leading blank line is dropped
    assert [a.split("\n", 1)[0] for a in articles] == [" = Alpha = ", " = Beta = ", " = Gamma = "]
    assert "Alpha is used in maths" in articles[0] and "\n".join(articles) == "".join(ARTICLES)


@needs_shared_data
def test_wikitext2_raw_test_file_has_the_62_articles_of_the_document_level_release():
    text = (SHARED_DATA / "wikitext2" / "wiki.test.raw.txt").read_text(encoding="utf-8")
    articles = wikitext_articles(text)
    assert len(articles) == 62 and articles[0].startswith(" = Robert Boulter = ")


def test_local_configs_include_lm_evals_own_and_replace_only_the_dataset(data_dir: Path, tmp_path: Path):
    import yaml

    tasks = plan_tasks(["hellaswag", "wikitext", "gsm8k"], data_dir, None)
    out = tmp_path / "configs"
    out.mkdir()
    write_task_configs(tasks, out)
    hellaswag = yaml.safe_load((out / "hellaswag.yaml").read_text())
    assert hellaswag["include"].endswith("hellaswag/hellaswag.yaml") and Path(hellaswag["include"]).is_file()
    assert hellaswag["dataset_path"] == "json" and hellaswag["validation_split"] == "validation"
    assert hellaswag["dataset_kwargs"]["data_files"] == {"validation": str(data_dir / "hellaswag/validation.jsonl")}
    assert hellaswag["test_split"] is None and hellaswag["training_split"] is None
    gsm8k = yaml.safe_load((out / "gsm8k.yaml").read_text())  # 5-shot by lm-eval's config: the train split too
    assert set(gsm8k["dataset_kwargs"]["data_files"]) == {"test", "train"} and gsm8k["fewshot_split"] == "train"
    articles = Path(yaml.safe_load((out / "wikitext.yaml").read_text())["dataset_kwargs"]["data_files"]["test"])
    assert [json.loads(line)["page"] for line in articles.read_text().splitlines()] == wikitext_articles(
        " \n" + "".join(ARTICLES))
    assert lm_eval_config(LOCAL_TASKS["gsm8k"])["num_fewshot"] == 5


def test_every_local_task_names_an_lm_eval_config_with_its_metric():
    for name, task in LOCAL_TASKS.items():
        config = lm_eval_config(task)
        assert config["task"] == name, name
        assert task.metric in {m["metric"] for m in config["metric_list"]}, name


def test_lm_eval_through_cola_matches_lm_evals_own_cli_and_colas_proxy(data_dir: Path, tiny_model_dir: Path,
                                                                       tmp_path: Path):
    """The acceptance check: `cola evaluate --evaluator lm-eval` gives the number lm-eval's own command line gives
    on the same local files for the same model, and cola's own hellaswag scoring agrees on the same items."""
    out = tmp_path / "cola.json"
    cola = [sys.executable, "-m", "cola", "evaluate", "--model", str(tiny_model_dir), "--evaluator", "lm-eval",
            "--task", "hellaswag", "wikitext", "--data_dir", str(data_dir), "--output", str(out), "--quiet"]
    done = subprocess.run(cola, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Running loglikelihood" not in done.stderr and "not a git repository" not in done.stderr  # --quiet
    ours = {r["task"]: r for r in json.loads(out.read_text())["results"]}
    raw = json.loads(raw_results_path(out).read_text())
    assert set(raw["results"]) == {"hellaswag", "wikitext"} and raw["n-samples"]["hellaswag"]["effective"] == 6

    # lm-eval's own CLI, loading the model itself, with task configs written here by hand
    configs = tmp_path / "handwritten"
    configs.mkdir()
    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    write_jsonl(tmp_path / "articles.jsonl", [{"page": a} for a in wikitext_articles(" \n" + "".join(ARTICLES))])
    (configs / "hs.yaml").write_text(
        f"include: {tasks_dir / 'hellaswag/hellaswag.yaml'}\ntask: hs_local\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {data_dir / 'hellaswag/validation.jsonl'}\n"
        "training_split: null\n")
    (configs / "wt.yaml").write_text(
        f"include: {tasks_dir / 'wikitext/wikitext.yaml'}\ntask: wt_local\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'articles.jsonl'}\n"
        "training_split: null\nvalidation_split: null\n")
    theirs_dir = tmp_path / "theirs"
    cli = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
           f"pretrained={tiny_model_dir},dtype=float32", "--tasks", "hs_local,wt_local", "--include_path",
           str(configs), "--device", "cpu", "--batch_size", "8", "--output_path", str(theirs_dir)]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(next(theirs_dir.rglob("results_*.json")).read_text())["results"]
    assert ours["hellaswag"]["value"] == pytest.approx(theirs["hs_local"]["acc_norm,none"], abs=1e-9)
    assert ours["hellaswag"]["metrics"]["acc"] == pytest.approx(theirs["hs_local"]["acc,none"], abs=1e-9)
    assert ours["wikitext"]["value"] == pytest.approx(theirs["wt_local"]["word_perplexity,none"], rel=1e-6)
    assert ours["wikitext"]["metrics"]["bits_per_byte"] == pytest.approx(theirs["wt_local"]["bits_per_byte,none"],
                                                                         rel=1e-6)

    # cola's own evaluator scores the same hellaswag items the same way (lm-eval's protocol, re-implemented)
    from cola.evaluate import load_for_evaluation

    proxy = evaluate(*load_for_evaluation(tiny_model_dir), [f"mc:{data_dir / 'hellaswag/validation.jsonl'}"])[0]
    assert proxy.value == pytest.approx(ours["hellaswag"]["value"], abs=1e-9) and proxy.n == 6


def test_in_memory_models_run_through_lm_eval_and_retention_compares_them(data_dir: Path):
    dense, tok = tiny_llama(seed=0), byte_tokenizer()
    results = evaluate(dense, tok, ["hellaswag", "gsm8k"], evaluator="lm-eval", data_dir=data_dir, limit=3,
                       num_fewshot=0, max_new_tokens=8)
    by_task = {r.task: r for r in results}
    assert by_task["hellaswag"].kind == "lm-eval" and by_task["hellaswag"].n == 3
    assert by_task["hellaswag"].tokens is None and by_task["hellaswag"].as_dict()["tokens_per_second"] is None
    assert by_task["gsm8k"].metric == "exact_match" and by_task["gsm8k"].metrics["num_fewshot"] == 0
    assert {r.capability for r in results} == {"commonsense", "math"}
    other = evaluate(tiny_llama(seed=1), tok, ["hellaswag"], evaluator="lm-eval", data_dir=data_dir, limit=3)
    kept = retention(other, results)["tasks"]
    assert kept["hellaswag"] == task_retention(other[0].value, by_task["hellaswag"].value, True)


def test_a_caldera_model_runs_through_lm_eval(data_dir: Path, tiny_model_dir: Path, tmp_path: Path):
    from cola.compress.api import compress
    from cola.compress.caldera import CalderaLinear
    from cola.evaluate import load_for_evaluation
    from tests.compress.test_api import write_calibration

    out = tmp_path / "caldera"
    compress(str(tiny_model_dir), write_calibration(tmp_path / "calib", byte_tokenizer()), "caldera", out, rank=4,
             iters=2, quiet=True)
    model, tok = load_for_evaluation(out)
    assert any(isinstance(m, CalderaLinear) for m in model.modules())
    (result,) = evaluate(model, tok, ["wikitext"], evaluator="lm-eval", data_dir=data_dir)
    (dense,) = evaluate(*load_for_evaluation(tiny_model_dir), ["wikitext"], evaluator="lm-eval", data_dir=data_dir)
    assert result.n == dense.n == 3 and result.value != dense.value  # the compressed weights were the ones scored


# --- bad input: one line, before any model loads ---------------------------------------------------------------

@pytest.mark.parametrize("tasks, num_fewshot, message", [
    (["arc_easy"], None, "lm-eval task 'arc_easy' reads its test split (allenai/ai2_arc ARC-Easy: question, "
                         "choices, answerKey) from {data}/ai2_arc/ARC-Easy/test.jsonl; not found (offline: nothing "
                         "is downloaded); cola's own arc_easy_train (--evaluator cola) reads the data directory's"),
    (["gsm8k"], 3, None),
    (["hellaswg"], None, "unknown lm-eval task 'hellaswg'. Did you mean 'hellaswag'?"),
    (["mc:x.jsonl"], None, "task 'mc:x.jsonl' is a cola task file; --evaluator lm-eval runs lm-eval's published"),
    (["hellaswag", "hellaswag"], None, "task name(s) given twice: hellaswag"),
])
def test_bad_lm_eval_tasks_fail_before_the_model(data_dir: Path, tasks, num_fewshot, message):
    if message is None:  # gsm8k with few-shot examples but no train file
        (data_dir / "gsm8k" / "train.jsonl").unlink()
        message = "lm-eval task 'gsm8k' reads its train (few-shot examples) split"
        assert plan_tasks(tasks, data_dir, 0)[0].files.keys() == {"test"}  # 0-shot needs no train file
    with pytest.raises(ColaError, match="^" + re.escape(message.format(data=data_dir))):
        plan_tasks(tasks, data_dir, num_fewshot)


def test_without_a_data_directory_lm_eval_loads_its_own_configs_and_says_how_to_stay_offline(
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("COLA_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ColaError, match="^task 'mc:x.jsonl' is a cola task file"):
        plan_tasks(["mc:x.jsonl"], None, None)
    (task,) = plan_tasks(["hellaswag"], None, None)
    assert task.local is None and task.files == {} and task.metric == "acc_norm"
    with pytest.raises(ColaError, match=r"^lm-eval failed on hellaswag: .*offline, give --data_dir with the task's "
                                        r"local files"):
        evaluate(tiny_llama(), byte_tokenizer(), ["hellaswag"], evaluator="lm-eval", limit=2)


def test_a_file_in_another_schema_is_named_with_the_columns_it_lacks(data_dir: Path):
    write_jsonl(data_dir / "hellaswag" / "validation.jsonl", [{"query": "q", "endings": ["a", "b"], "label": 0}])
    with pytest.raises(ColaError, match=r"validation.jsonl lacks column\(s\) activity_label, ctx_a, ctx_b; its "
                                        r"validation split must be in the Rowan/hellaswag schema"):
        plan_tasks(["hellaswag"], data_dir, None)


def test_lm_eval_missing_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch, data_dir: Path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    with pytest.raises(ColaError, match=r"--evaluator lm-eval needs lm-eval, which is not installed .*pip install "
                                        r"'cola\[lm-eval\]'"):
        evaluate(tiny_llama(), byte_tokenizer(), ["hellaswag"], evaluator="lm-eval", data_dir=data_dir)


@pytest.mark.parametrize("options, message", [
    ({"num_fewshot": 2}, "--num_fewshot sets lm-eval's few-shot examples: it needs --evaluator lm-eval"),
    ({"evaluator": "lm_eval"}, "unknown evaluator 'lm_eval'. Did you mean 'lm-eval'?"),
    ({"evaluator": "lm-eval", "num_fewshot": -1}, "--num_fewshot must be a whole number of examples, at least 0"),
])
def test_bad_evaluator_settings(options, message, data_dir: Path):
    with pytest.raises(ColaError, match="^" + re.escape(message)):
        evaluate(tiny_llama(), byte_tokenizer(), ["hellaswag"], data_dir=data_dir, **options)


def test_a_dense_report_from_the_other_evaluator_is_refused(data_dir: Path, tmp_path: Path):
    from cola.evaluate.runner import check_dense, plan_evaluation

    dense = {"results": [{"task": "hellaswag", "kind": "mc", "capability": "commonsense", "metric": "acc_norm",
                          "higher_is_better": True, "value": 0.5}], "settings": {}}
    plan = plan_evaluation(["hellaswag"], data_dir=data_dir, evaluator="lm-eval")
    with pytest.raises(ColaError, match="task 'hellaswag' was scored by cola's evaluator there, by lm-eval here"):
        check_dense(dense, plan, "dense.json")
    dense["results"][0]["kind"], dense["settings"]["num_fewshot"] = "lm-eval", 5
    with pytest.raises(ColaError, match="evaluated with --num_fewshot 5 there, None here"):
        check_dense(dense, plan, "dense.json")
