"""cola.evaluate: windowed perplexity, multiple choice, answer NLL, generation metrics, retention and the CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cola.errors import ColaError
from cola.evaluate import BUILTINS, evaluate, parse_task, perplexity, retention, task_retention
from cola.evaluate.proxies import answer_nll, encode_pair, score_choices
from cola.evaluate.tasks import ChoiceItem, hellaswag_preprocess, load_items
from tests.conftest import SHARED_DATA, byte_tokenizer, needs_shared_data, tiny_llama, write_jsonl


def test_perplexity_over_windows_matches_direct_computation():
    model, tok = tiny_llama(), byte_tokenizer()
    text = "the quick brown fox jumps over the lazy dog. " * 6  # 270 bytes: 4 windows of 64, rest dropped
    result = perplexity(model, tok, text, window=64, batch_size=3)
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    nlls = []
    with torch.no_grad():
        for w in range(4):
            chunk = ids[w * 64:(w + 1) * 64]
            logp = torch.log_softmax(model(input_ids=chunk[None]).logits[0, :-1], dim=-1)
            nlls.extend((-logp[torch.arange(63), chunk[1:]]).tolist())
    assert result.windows == 4 and result.tokens == 4 * 63 == len(nlls)
    assert result.perplexity == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-5)
    assert perplexity(model, tok, text, window=64, max_windows=2).tokens == 2 * 63


class _PeakyLogits(torch.nn.Module):
    """A stand-in language model over Gemma's 262,144-token vocabulary whose logits are fixed noise of std 4."""

    def __init__(self, vocab: int = 262_144) -> None:
        super().__init__()
        self.vocab, self.anchor = vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        generator = torch.Generator().manual_seed(int(input_ids.sum()))
        return SimpleNamespace(logits=4 * torch.randn(*input_ids.shape, self.vocab, generator=generator))


def test_perplexity_over_a_large_vocabulary_matches_float64():
    # cross_entropy over the transposed (B, V, T) view was off by 3.7e-4 in mean NLL here (and 7x slower at this
    # vocabulary); over (B*T, V) rows it is within 4e-5 of float64.
    model, tok = _PeakyLogits(), byte_tokenizer()
    text = "the quick brown fox jumps over the lazy dog. " * 3  # 135 bytes: 2 windows of 64
    result = perplexity(model, tok, text, window=64, batch_size=2)
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"][:128]).view(2, 64)
    logits = model(input_ids=ids).logits[:, :-1].double()  # (2, 63, V)
    exact = torch.nn.functional.cross_entropy(logits.reshape(-1, model.vocab), ids[:, 1:].reshape(-1))
    assert result.windows == 2 and abs(result.mean_nll - exact.item()) < 1e-4


def test_perplexity_refuses_a_text_shorter_than_a_window():
    with pytest.raises(ColaError, match="fewer than one window"):
        perplexity(tiny_llama(), byte_tokenizer(), "short", window=64)


class FavourTokens(torch.nn.Module):
    """The tiny model with a large bonus on the logits of some tokens: it 'prefers' those bytes."""

    def __init__(self, tokenizer, favoured: str, bonus: float = 20.0):
        super().__init__()
        self.base = tiny_llama()
        self.bias = torch.zeros(257)
        for ch in favoured:
            self.bias[tokenizer.convert_tokens_to_ids(ch)] = bonus

    def forward(self, input_ids, attention_mask=None, **_ignored):
        logits = self.base(input_ids=input_ids, attention_mask=attention_mask).logits
        return SimpleNamespace(logits=logits + self.bias)


def _mc_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "mc.jsonl", [
        {"question": f"Question {i}: which one?", "choices": ["xxxx", "yyyy", "zzzz"], "label": 1} for i in range(4)])


def test_each_task_kind_gives_finite_numbers_on_a_tiny_model(tmp_path: Path):
    model, tok = tiny_llama(), byte_tokenizer()
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 8)
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "What is 2+2?", "answer": "2 + 2 = 4\n#### 4"}] * 3)
    results = evaluate(model, tok, [f"ppl:{text}", f"mc:{_mc_file(tmp_path)}", f"qa:{qa}"], limit={"ppl:text": 2},
                       window=64)
    assert [(r.task, r.kind, r.capability, r.metric) for r in results] == [
        ("ppl:text", "ppl", "general", "perplexity"), ("mc:mc", "mc", "commonsense", "acc_norm"),
        ("qa:qa", "qa", "math", "nll")]  # question/answer with gsm8k's #### is math
    for r in results:
        assert math.isfinite(r.value) and r.n > 0 and r.tokens > 0 and r.tokens_per_second > 0
    assert results[0].n == 2 and results[0].tokens == 2 * 63
    assert results[1].n == 4 and 0 <= results[1].metrics["acc"] <= 1


def test_multiple_choice_picks_the_answer_the_model_is_forced_to_prefer(tmp_path: Path):
    tok = byte_tokenizer()
    items, _ = load_items(parse_task(f"mc:{_mc_file(tmp_path)}"), None)
    for favoured, expected in (("y", 1.0), ("z", 0.0)):
        scores = score_choices(FavourTokens(tok, favoured), tok, items, batch_tokens=64)
        assert (scores.acc, scores.acc_norm) == (expected, expected)
    assert scores.acc_stderr == 0.0 and scores.items == 4 and scores.tokens == 4 * 3 * 5  # " xxxx" = 5 bytes


def test_length_normalisation_changes_the_pick():
    """Every non-'a' byte costs about 20 nats: ' b' (2 costly bytes, 1 char) vs ' baaaaaaaab' (3 costly, 10 chars)."""
    tok = byte_tokenizer()
    item = ChoiceItem("Pick:", ("b", "baaaaaaaab"), label=1)
    scores = score_choices(FavourTokens(tok, "a"), tok, [item, item])
    assert scores.acc == 0.0      # summed log-likelihood prefers the short choice (~40 vs ~60 nats)
    assert scores.acc_norm == 1.0  # per character the long one costs less (~6 vs ~40 nats)


def test_answer_nll_equals_a_hand_computation_over_answer_tokens_only():
    model, tok = tiny_llama(), byte_tokenizer()
    items = [SimpleNamespace(prompt="Q: 1+1\nA:", answer=" 2"), SimpleNamespace(prompt="Q: 3+4\nA:", answer=" 7 ok")]
    result = answer_nll(model, tok, items, batch_tokens=16)
    totals, counts = [], []
    with torch.no_grad():
        for item in items:
            prompt = tok(item.prompt, add_special_tokens=False)["input_ids"]
            whole = torch.tensor(tok(item.prompt + item.answer, add_special_tokens=False)["input_ids"])
            logp = torch.log_softmax(model(input_ids=whole[None]).logits[0], dim=-1)
            answer = range(len(prompt), len(whole))
            totals.append(-sum(logp[i - 1, whole[i]].item() for i in answer))
            counts.append(len(answer))
    assert result.tokens == sum(counts) == 2 + 5
    assert result.nll == pytest.approx(sum(totals) / sum(counts), rel=1e-5)
    assert result.item_nlls == pytest.approx(totals, rel=1e-5)
    assert result.stderr is not None and result.stderr > 0


def test_encode_pair_moves_trailing_spaces_to_the_continuation():
    tok = byte_tokenizer()
    pair = encode_pair(tok, "Answer: ", "4")
    assert tok.decode(list(pair.context)) == "Answer:" and tok.decode(list(pair.continuation)) == " 4"


def test_hellaswag_original_schema_is_preprocessed_like_lm_eval(tmp_path: Path):
    path = write_jsonl(tmp_path / "hs.jsonl", [{
        "activity_label": "Baking", "ctx_a": "A man mixes flour [title] Step two.", "ctx_b": "then he",
        "endings": ["bakes [step] it.", "runs."], "label": 0}])
    (item,), schema = load_items(parse_task(f"mc:{path}"), None)
    assert schema.name == "hellaswag (original)"
    assert item.context == "Baking: A man mixes flour. Step two. Then he"
    assert item.choices == ("bakes it.", "runs.") and hellaswag_preprocess(" a [x] b ") == "a b"


def test_unknown_task_kind_and_name_list_the_valid_ones(tmp_path: Path):
    with pytest.raises(ColaError, match="unknown task kind 'mcq'.*Valid choices: .*gsm8k_em, humaneval_pass1, mc, "
                                        "ppl, qa"):
        parse_task(f"mcq:{_mc_file(tmp_path)}")
    with pytest.raises(ColaError, match="unknown task 'hellaswg'. Did you mean 'hellaswag'"):
        parse_task("hellaswg", tmp_path)
    with pytest.raises(ColaError, match="task file not found"):
        parse_task(f"mc:{tmp_path / 'missing.jsonl'}")


def test_builtin_names_need_a_data_dir(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("COLA_DATA_DIR", raising=False)
    with pytest.raises(ColaError, match="pass --data_dir"):
        parse_task("wikitext2")


def test_gsm8k_plain_scores_the_same_items_without_calculator_annotations(tmp_path: Path):
    (tmp_path / "gsm8k").mkdir()
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl",
                [{"question": "Half of 48?", "answer": "48/2 = <<48/2=24>>24 eggs.\n#### 24"},
                 {"question": "3 + 4?", "answer": "3+4=<<3+4=7>>7\n#### 7"}])
    raw, _ = load_items(parse_task("gsm8k_nll", tmp_path), None)
    plain_task = parse_task("gsm8k_plain_nll", tmp_path)
    plain, _ = load_items(plain_task, None)
    assert plain_task.path == parse_task("gsm8k_nll", tmp_path).path and plain_task.capability == "math"
    assert [i.answer for i in raw] == [" 48/2 = <<48/2=24>>24 eggs.\n#### 24", " 3+4=<<3+4=7>>7\n#### 7"]
    assert [i.answer for i in plain] == [" 48/2 = 24 eggs.\n#### 24", " 3+4=7\n#### 7"]
    assert [(i.prompt, i.reference) for i in plain] == [(i.prompt, i.reference) for i in raw]


def test_proxies_renamed_off_benchmark_names_still_run_under_the_old_name_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from cola.evaluate.report import result_dicts
    from cola.evaluate.builtins import RENAMED, _warn_renamed

    _warn_renamed.cache_clear()  # it warns once per process
    (tmp_path / "gsm8k").mkdir()
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"question": "3 + 4?", "answer": "3+4=7\n#### 7"}])
    with caplog.at_level("WARNING", logger="cola.evaluate.tasks"):
        old = parse_task("gsm8k", tmp_path)
        assert old == parse_task("gsm8k", tmp_path) == parse_task("gsm8k_nll", tmp_path) and old.name == "gsm8k_nll"
    assert caplog.text.count("task 'gsm8k' is now 'gsm8k_nll': the old name is deprecated (it named cola's "
                             "answer-NLL proxy") == 1  # once, however often it is parsed
    assert set(RENAMED.values()) <= set(BUILTINS) and not set(RENAMED) & set(BUILTINS)
    # a report written before the rename reads under the new names, so retention still pairs it with new runs;
    # lm-eval's results are the published tasks and keep theirs
    before = [{"task": "humaneval", "kind": "qa", "capability": "code", "metric": "nll", "higher_is_better": False,
               "value": 1.0}, {"task": "gsm8k", "kind": "lm-eval", "capability": "math", "metric": "exact_match",
                               "higher_is_better": True, "value": 0.1}]
    assert [r["task"] for r in result_dicts(before)] == ["humaneval_nll", "gsm8k"]
    now = [{**before[0], "task": "humaneval_nll", "value": 2.0}]
    assert retention(now, before)["tasks"] == {"humaneval_nll": 0.5}


def test_missing_field_names_file_line_and_field(tmp_path: Path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "choices": ["a", "b"], "label": 0},
                                               {"question": "q", "choices": ["a", "b"]}])
    with pytest.raises(ColaError, match=r"bad.jsonl:2: missing field 'label'"):
        evaluate(tiny_llama(), byte_tokenizer(), [f"mc:{path}"])


def test_a_directory_that_is_not_a_model_is_one_clear_error(tmp_path: Path):
    from cola.evaluate import load_for_evaluation

    with pytest.raises(ColaError, match="is not a saved model directory"):
        load_for_evaluation(tmp_path)


def test_limits_are_checked_before_the_model_loads(tmp_path: Path):
    from cola.evaluate import evaluate_path

    task = f"mc:{_mc_file(tmp_path)}"
    with pytest.raises(ColaError, match="limit given for task.*not evaluated: hellaswag; tasks: mc:mc"):
        evaluate_path(tmp_path / "no-model-here", [task], limit={"hellaswag": 5})
    with pytest.raises(ColaError, match="positive"):
        evaluate_path(tmp_path / "no-model-here", [task], limit=0)


def test_retention_per_task_and_capability():
    def row(task, capability, value, higher):
        return {"task": task, "capability": capability, "metric": "m", "value": value, "higher_is_better": higher}

    dense = {"results": [row("ppl", "general", 10.0, False), row("hs", "commonsense", 0.5, True),
                         row("arc", "commonsense", 0.4, True), row("gsm", "math", 0.0, True)]}
    compressed = [row("ppl", "general", 20.0, False), row("hs", "commonsense", 0.25, True),
                  row("arc", "commonsense", 0.4, True), row("gsm", "math", 0.1, True), row("new", "code", 1.0, True)]
    kept = retention(compressed, dense)
    assert kept["tasks"] == {"ppl": 0.5, "hs": 0.5, "arc": 1.0, "gsm": None}  # dense 0: no ratio
    assert kept["capabilities"] == {"general": 0.5, "commonsense": 0.75}
    assert task_retention(2.0, 4.0, higher_is_better=False) == 2.0


def test_capability_retention_is_one_function_for_evaluate_and_the_experiment():
    import pandas as pd

    from cola.evaluate import retention_by_capability
    from cola.experiment.report import capability_retention

    pairs = [("math", 0.5), ("math", 1.0), ("code", None), ("code", float("nan")), ("general", 0.25)]
    assert retention_by_capability(pairs) == {"math": 0.75, "general": 0.25}  # tasks without a ratio left out
    rows = pd.DataFrame([{"strategy": "s", "method": "m", "seed": seed, "capability": c, "retention": r}
                         for seed in (1, 0) for c, r in pairs])
    caps = capability_retention(rows)
    assert caps.to_dict("records") == [
        {"strategy": "s", "method": "m", "seed": seed, "capability": c, "retention": r}
        for seed in (0, 1) for c, r in (("general", 0.25), ("math", 0.75))]


def test_cli_evaluate_writes_json_and_bad_task_exits_2(tiny_model_dir: Path, tmp_path: Path, capsys):
    from cola.cli import main

    out = tmp_path / "res.json"
    code = main(["evaluate", str(tiny_model_dir), "--task", f"mc:{_mc_file(tmp_path)}", "--limit", "2",
                 "--output", str(out), "--quiet"])
    report = json.loads(out.read_text())
    assert code == 0 and report["limit"] == 2 and report["dtype"] == "float32"
    assert report["results"][0]["n"] == 2 and report["results"][0]["metric"] == "acc_norm"
    assert report["tokens_per_second"] > 0 and "tokens/s" in capsys.readouterr().out
    assert report["torch_threads"] == torch.get_num_threads()
    code = main(["evaluate", str(tiny_model_dir), "--task", f"mc:{_mc_file(tmp_path)}", "--dense", str(out),
                 "--limit", "2", "--quiet"])
    assert code == 0 and "retention by capability: commonsense 1.000" in capsys.readouterr().out
    code = main(["evaluate", str(tiny_model_dir), "--task", "nosuch:x.jsonl", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown task kind 'nosuch'" in err


def test_generation_metrics_run_on_a_tiny_model(tmp_path: Path):
    import gzip

    gsm = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}] * 3)
    problem = {"task_id": "t/0", "prompt": "def add(a, b):\n", "entry_point": "add", "canonical_solution": "",
               "test": "def check(f):\n    assert f(2, 3) == 5\n"}
    he = tmp_path / "he.jsonl.gz"
    with gzip.open(he, "wt") as handle:
        handle.write(json.dumps(problem) + "\n")
    results = evaluate(tiny_llama(), byte_tokenizer(), [f"gsm8k_em:{gsm}", f"humaneval_pass1:{he}"],
                       max_new_tokens=6, batch_size=2, confirm_run_unsafe_code=True)
    assert [(r.metric, r.value, r.n, r.capability) for r in results] == [
        ("exact_match", 0.0, 3, "math"), ("pass@1", 0.0, 1, "code")]  # random bytes are never right
    assert all(0 < r.tokens <= 6 * r.n for r in results)
    execution = results[1].execution
    assert results[0].execution is None and sum(execution["outcomes"].values()) == 1
    assert "passed" not in execution["outcomes"] and {"network", "filesystem", "limits"} <= set(execution["isolation"])
    with pytest.raises(ColaError, match=r"gsm.jsonl:1: missing field 'prompt' \(humaneval records need prompt, "
                                        r"test, entry_point\)"):
        evaluate(tiny_llama(), byte_tokenizer(), [f"humaneval_pass1:{gsm}"], confirm_run_unsafe_code=True)


def test_final_number_extraction():
    from cola.evaluate.generation import extract_final_number

    assert extract_final_number("so 3 + 4 = 7 apples.\n#### 1,234 done 5") == "1234"
    assert extract_final_number("she pays 12.50 then -3 more") == "-3"
    assert extract_final_number("no digits") is None


@needs_shared_data
def test_builtin_tasks_resolve_and_parse_on_the_shared_data():
    for name, builtin in BUILTINS.items():
        task = parse_task(name, SHARED_DATA)
        assert task.kind == builtin.kind and task.path.is_file()
        if task.kind == "ppl":
            continue
        items, schema = load_items(task, 3)
        assert len(items) == 3, name
        if task.kind == "mc":
            assert all(0 <= i.label < len(i.choices) and i.context for i in items), name
        elif task.kind == "humaneval_pass1":
            assert all(i.prompt and i.record["test"] and i.record["entry_point"] for i in items), name
        else:
            assert all(i.prompt and i.answer for i in items), name
    (gsm,), _ = load_items(parse_task("gsm8k_nll", SHARED_DATA), 1)
    assert gsm.answer.rstrip().endswith("#### " + gsm.reference) and gsm.prompt.startswith("Question: ")


@pytest.mark.integration
@needs_shared_data
def test_smollm2_scores_the_builtin_tasks_and_retains_itself():
    from cola.evaluate import load_for_evaluation

    model, tok = load_for_evaluation("embedded", dtype="bfloat16")
    results = evaluate(model, tok, ["wikitext2", "hellaswag", "gsm8k_nll", "humaneval_nll"], data_dir=SHARED_DATA,
                       limit={"wikitext2": 1, "hellaswag": 8, "gsm8k_nll": 2, "humaneval_nll": 2}, window=256)
    by_task = {r.task: r for r in results}
    assert 5 < by_task["wikitext2"].value < 100  # SmolLM2-135M: ~20-30 on wikitext-2
    assert 0 <= by_task["hellaswag"].value <= 1 and by_task["hellaswag"].n == 8
    assert 0.2 < by_task["gsm8k_nll"].value < 3 and by_task["humaneval_nll"].capability == "code"
    kept = retention(results, results)
    assert set(kept["capabilities"]) == {"general", "commonsense", "math", "code"}
    assert all(v == pytest.approx(1.0) for v in kept["tasks"].values())


def test_a_caldera_output_directory_is_evaluated_with_its_caldera_layers(tiny_model_dir: Path, tmp_path: Path):
    from cola.compress.api import compress
    from cola.compress.caldera import CalderaLinear
    from cola.evaluate import load_for_evaluation
    from tests.compress.test_api import write_calibration

    out = tmp_path / "caldera"
    compress(str(tiny_model_dir), write_calibration(tmp_path / "calib", byte_tokenizer()), "caldera", out, rank=4,
             iters=2, quiet=True)
    model, tok = load_for_evaluation(out)
    assert any(isinstance(m, CalderaLinear) for m in model.modules())
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"problem": f"Add {i} and 1.", "solution": f"{i + 1}"} for i in range(4)])
    dense = evaluate(*load_for_evaluation(tiny_model_dir), [f"qa:{qa}"])
    compressed = evaluate(model, tok, [f"qa:{qa}"])
    assert compressed[0].capability == "math" and compressed[0].value != dense[0].value  # the weights changed
    kept = retention(compressed, dense)["capabilities"]["math"]
    assert kept == pytest.approx(dense[0].value / compressed[0].value) and math.isfinite(kept)


# --- bad inputs (issue 17): one clear error at the boundary, never a traceback or a silently wrong score -------

MC_OK = {"question": "Which?", "choices": ["a", "b"], "label": 1}


@pytest.mark.parametrize("record, message", [
    ({**MC_OK, "choices": []}, "field 'choices' has 0 choices; multiple choice needs at least 2 choices"),
    ({**MC_OK, "choices": ["only"], "label": 0}, "field 'choices' has 1 choice; multiple choice needs at least 2"),
    ({**MC_OK, "choices": "a b"}, "field 'choices' must be a list of choices, got text"),
    ({**MC_OK, "choices": ["a", None]}, "choice 1 of 'choices' must be text, got null"),
    ({**MC_OK, "label": 7}, "label 7 is out of range for 2 choices (0-based: 0 to 1)"),
    ({**MC_OK, "label": -1}, "label -1 is out of range for 2 choices"),
    ({**MC_OK, "label": "B"}, "field 'label' must be the 0-based index of the right choice, got 'B'"),
    ({**MC_OK, "label": True}, "field 'label' must be the 0-based index of the right choice, got True"),
    ({**MC_OK, "label": 0.5}, "field 'label' must be the 0-based index of the right choice, got 0.5"),
    ({**MC_OK, "question": None}, "field 'question' must be text, got null"),
    ({"query": "q", "endings": [], "label": 0}, "hellaswag (preprocessed) record: field 'endings' has 0 choices"),
    ({"question": "q", "choices": {"label": ["A", "B"], "text": ["x", "y"]}, "answerKey": "C"},
     "commonsense_qa record: answerKey 'C' is not one of the choice labels A, B"),
    ({"question": "q", "choices": {"label": ["A", "B"], "text": ["x"]}, "answerKey": "A"},
     "field 'text' has 1 choice"),
    ({"question": "q", "choices": ["x", "y"], "answerKey": "A"}, "field 'choices' must be an object with 'label' "
                                                                "and 'text' lists, got a list of strings"),
])
def test_unusable_multiple_choice_records_are_one_error_naming_file_and_line(tmp_path: Path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [record, record])  # the first record sets the schema
    with pytest.raises(ColaError, match="^" + re.escape(f"{path}:1: ") + ".*" + re.escape(message)):
        load_items(parse_task(f"mc:{path}"), None)


def test_labels_written_as_digits_or_whole_floats_are_read(tmp_path: Path):
    path = write_jsonl(tmp_path / "mc.jsonl", [{**MC_OK, "label": "1"}, {**MC_OK, "label": 0.0}])
    items, _ = load_items(parse_task(f"mc:{path}"), None)
    assert [i.label for i in items] == [1, 0]


@pytest.mark.parametrize("kind, record, message", [
    ("qa", {"question": "q", "answer": ""}, "question/answer record: field 'answer' is empty"),
    ("qa", {"question": "q", "answer": ["4"]}, "field 'answer' must be text, got a list of strings"),
    ("qa", {"problem": "p", "solution": "  "}, "MATH record: field 'solution' is empty"),
    ("qa", {"text": "t", "code": None}, "mbpp record: field 'code' must be text, got null"),
    ("gsm8k_em", {"question": "q", "answer": "four"}, "answer has no final number after '####'"),
    ("gsm8k_em", {"question": "q", "answer": "2+2=4 ####"}, "answer has no final number after '####'"),
    ("humaneval_pass1", {"prompt": "def f():\n", "test": "", "entry_point": "f"}, "field 'test' is empty"),
    ("humaneval_pass1", {"prompt": "def f():\n", "test": "def check(c): pass", "entry_point": "f); import os; (f"},
     "entry_point 'f); import os; (f' is not a Python function name"),
    ("humaneval_pass1", {"prompt": "def f():\n", "canonical_solution": "  return 1"},
     "missing field 'test' (humaneval records need prompt, test, entry_point)"),
])
def test_unusable_answer_and_program_records_are_one_error(tmp_path: Path, kind: str, record: dict, message: str):
    path = write_jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(ColaError, match="^" + re.escape(f"{path}:1: ") + ".*" + re.escape(message)):
        load_items(parse_task(f"{kind}:{path}"), None)


def test_perplexity_files_not_utf8_or_without_text_are_one_error(tmp_path: Path):
    from cola.evaluate.tasks import read_text

    latin = tmp_path / "latin.txt"
    latin.write_bytes("café au lait. ".encode("latin-1") * 20)
    with pytest.raises(ColaError, match=r"latin.txt is not UTF-8 text: byte 0xe9 at offset 3; convert it first"):
        read_text(latin)
    null_text = write_jsonl(tmp_path / "texts.jsonl", [{"text": "fine"}, {"text": None}])
    with pytest.raises(ColaError, match=r"texts.jsonl:2: field 'text' must be text, got null"):
        read_text(null_text)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ColaError, match=r"empty.jsonl: no records"):
        read_text(tmp_path / "empty.jsonl")
    markdown = tmp_path / "notes.md"
    markdown.write_text("\ufeff# Notes\nplain text, not JSON", encoding="utf-8")
    assert read_text(markdown) == "# Notes\nplain text, not JSON"  # any non-JSON suffix is plain text, BOM dropped
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(ColaError, match=r"^task 'ppl:short' \(.*short.txt\): the text has 4 tokens, fewer than one "
                                        r"window of 64$"):
        evaluate(tiny_llama(), byte_tokenizer(), [f"ppl:{short}"], window=64)


@pytest.mark.parametrize("option, value, message", [
    ("window", 0, "--window must be a whole number of tokens, at least 2; got 0"),
    ("window", 1, "--window must be a whole number of tokens, at least 2; got 1"),
    ("window", "512", "--window must be a whole number of tokens, at least 2; got '512'"),
    ("batch_tokens", 0, "--batch_tokens must be a whole number of token slots, at least 1; got 0"),
    ("batch_size", -2, "--batch_size must be a whole number of prompts, at least 1; got -2"),
    ("max_new_tokens", 0, "--max_new_tokens must be a whole number of tokens, at least 1; got 0"),
    ("confirm_run_unsafe_code", "false", "confirm_run_unsafe_code must be true or false, got 'false'"),
    ("limit", 2.5, "limit must be a number of items or a dict task → number, got 2.5"),
    ("limit", {"mc:mc": 0}, "limit must be a positive number of items, got {'mc:mc': 0}"),
])
def test_bad_settings_fail_before_the_model_loads(tmp_path: Path, option: str, value, message: str):
    from cola.evaluate import evaluate_path

    with pytest.raises(ColaError, match="^" + re.escape(message) + "$"):
        evaluate_path(tmp_path / "no-model-here", [f"mc:{_mc_file(tmp_path)}"], **{option: value})


def test_a_bad_record_fails_before_the_model_loads(tmp_path: Path):
    from cola.evaluate import evaluate_path

    path = write_jsonl(tmp_path / "mc.jsonl", [MC_OK] * 3 + [{**MC_OK, "label": 2}])
    with pytest.raises(ColaError, match=r"mc.jsonl:4: .*label 2 is out of range for 2 choices"):
        evaluate_path(tmp_path / "no-model-here", [f"mc:{path}"])


@pytest.mark.parametrize("text, expected", [("5", 5), ("a=1, b=2", {"a": 1, "b": 2}), ("-1", -1)])
def test_limit_text_parses(text: str, expected):
    from cola.evaluate.runner import parse_limit

    assert parse_limit(text) == expected  # -1 parses; task_limits then refuses it


@pytest.mark.parametrize("text, message", [
    ("x", "invalid --limit 'x': 'x' is not a whole number; write N or TASK=N,TASK=N"),
    ("a=1,a=2", "invalid --limit 'a=1,a=2': task 'a' given twice"),
    ("a=1,=2", "invalid --limit 'a=1,=2': '=2' is not TASK=N"),
    ("a=1,b", "invalid --limit 'a=1,b': 'b' is not TASK=N"),
    ("a=x", "invalid --limit 'a=x': 'x' is not a whole number"),
])
def test_bad_limit_text_is_one_error(text: str, message: str):
    from cola.evaluate.runner import parse_limit

    with pytest.raises(ColaError, match="^" + re.escape(message)):
        parse_limit(text)


def _he_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "he.jsonl", [{"task_id": "t/0", "prompt": "def add(a, b):\n", "entry_point": "add",
                                                "test": "def check(f):\n    assert f(2, 3) == 5\n"}])


def test_code_executing_tasks_refuse_to_run_without_the_flag(tmp_path: Path, tiny_model_dir: Path, capsys):
    from cola.cli import main
    from cola.evaluate import evaluate_path

    task = f"humaneval_pass1:{_he_file(tmp_path)}"
    expected = ("humaneval_pass1:he executes model-generated code: pass --confirm_run_unsafe_code "
                "(confirm_run_unsafe_code=True in Python) to run it in cola's sandbox; the README's 'Running "
                "generated code' says what it isolates")
    with pytest.raises(ColaError, match="^" + re.escape(expected) + "$"):
        evaluate(tiny_llama(), byte_tokenizer(), [task])
    with pytest.raises(ColaError, match=re.escape(expected)):  # before the (absent) model would load
        evaluate_path(tmp_path / "no-model-here", [task, f"mc:{_mc_file(tmp_path)}"])
    assert main(["evaluate", str(tmp_path / "no-model-here"), "--task", task, "--quiet"]) == 2
    assert capsys.readouterr().err == f"cola: error: {expected}\n"
    assert main(["evaluate", str(tiny_model_dir), "--task", task, "--max_new_tokens", "4", "--quiet",
                 "--confirm_run_unsafe_code"]) == 0
    assert "pass@1" in capsys.readouterr().out


def _report(tmp_path: Path, **changes) -> Path:
    base = {"task": "mc:mc", "capability": "commonsense", "metric": "acc_norm", "value": 0.5,
            "higher_is_better": True, "n": 4, "limit": None}
    report = {"results": [{**base, **changes}], "settings": {"window": 512, "max_new_tokens": 256}}
    path = tmp_path / "dense.json"
    path.write_text(json.dumps(report))
    return path


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "holds a JSON list, not a `cola evaluate --output` report (a JSON object with a 'results' list)"),
    ("3", "holds a JSON int, not a `cola evaluate --output` report"),
    ('{"tasks": []}', "has no 'results' list (expected a `cola evaluate --output` report)"),
    ('{"results": [3]}', "results[0] is int, not a task result"),
    ('{"results": [{"task": "mc:mc", "capability": "c", "metric": "acc_norm", "higher_is_better": true}]}',
     "results[0] (mc:mc) has no number 'value'"),
    ('{"results": [{"task": "mc:mc", "capability": "c", "metric": "acc_norm", "higher_is_better": true, '
     '"value": "0.5"}]}', "results[0] (mc:mc) has no number 'value'"),
    ('{"results": [{"task": "mc:mc", "capability": "c", "metric": "acc_norm", "value": 1}]}',
     "has no true/false 'higher_is_better'"),
    ("{not json", "dense.json is not valid JSON (Expecting property name enclosed in double quotes at line 1 "
                  "column 2)"),
])
def test_a_dense_file_without_usable_results_is_one_error(tmp_path: Path, content: str, message: str):
    from cola.evaluate import read_dense_report

    path = tmp_path / "dense.json"
    path.write_text(content)
    with pytest.raises(ColaError, match=re.escape(message)):
        read_dense_report(path)
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ColaError, match=r"^--dense .*dense.json is not UTF-8 text: byte 0xff at offset 0"):
        read_dense_report(path)


def test_a_dense_file_must_match_the_tasks_metrics_and_items(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from cola.evaluate import plan_evaluation, read_dense_report
    from cola.evaluate.runner import check_dense

    mc = f"mc:{_mc_file(tmp_path)}"
    text = tmp_path / "text.txt"
    text.write_text("some words " * 50)

    def check(dense: Path, tasks: list[str], **options) -> None:
        check_dense(read_dense_report(dense), plan_evaluation(tasks, read_files=False, **options), dense)

    other = _report(tmp_path, task="hellaswag")
    with pytest.raises(ColaError, match=r"^--dense .*dense.json has none of the evaluated tasks \(mc:mc\); it holds "
                                        r"hellaswag$"):
        check(other, [mc])
    with pytest.raises(ColaError, match=r"task 'mc:mc' was scored by acc there, by acc_norm here"):
        check(_report(tmp_path, metric="acc"), [mc])
    with pytest.raises(ColaError, match=r"task 'mc:mc' was evaluated with limit None there, 2 here; retention needs "
                                        r"the same items \(use the same --limit\)"):
        check(_report(tmp_path), [mc], limit=2)
    with pytest.raises(ColaError, match=r"task 'ppl:text' was evaluated with --window 512 there, 64 here"):
        check(_report(tmp_path, task="ppl:text", metric="perplexity", higher_is_better=False), [f"ppl:{text}"],
              window=64)
    with caplog.at_level("WARNING", logger="cola.evaluate.runner"):
        check(_report(tmp_path), [mc, f"ppl:{text}"])
    assert [r.getMessage() for r in caplog.records] == [
        f"--dense {tmp_path / 'dense.json'} has no result for ppl:text: no retention for it"]


def test_retention_names_the_tasks_it_could_not_compare():
    def row(task, value, n=4, metric="m"):
        return {"task": task, "capability": "c", "metric": metric, "value": value, "higher_is_better": True, "n": n}

    kept = retention([row("a", 0.4), row("b", 0.5), row("c", 0.5, n=2), row("d", 0.3, metric="other")],
                     [row("a", 0.8), row("c", 0.5), row("d", 0.3)])
    assert kept == {"tasks": {"a": 0.5}, "capabilities": {"c": 0.5},
                    "unmatched": {"b": "no dense result", "c": "dense scored 4 items, here 2",
                                  "d": "dense metric m, here other"}}
    with pytest.raises(ColaError, match=r"^dense results: results\[0\] \(a\) has no number 'value'$"):
        retention([row("a", 0.4)], [row("a", None)])


def test_an_output_that_cannot_be_written_fails_before_the_model_loads(tmp_path: Path, capsys):
    from cola.cli import main

    task = f"mc:{_mc_file(tmp_path)}"
    (tmp_path / "file").write_text("x")
    for output, message in ((tmp_path, f"--output {tmp_path} is a directory; name a file in it, e.g. "
                                       f"{tmp_path / 'results.json'}"),
                            (tmp_path / "file" / "res.json", f"--output {tmp_path / 'file' / 'res.json'}: "
                                                             f"{tmp_path / 'file'} is a file, not a directory")):
        assert main(["evaluate", str(tmp_path / "no-model-here"), "--task", task, "--output", str(output)]) == 2
        assert capsys.readouterr().err == f"cola: error: {message}\n"
