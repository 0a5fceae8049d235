"""`cola evaluate`: bad task files, options, --dense and --output files, and model-generated code (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

from audit.case import Case, Fixtures

MC = {"question": "Which one?", "choices": ["red", "blue"], "label": 1}
PROBLEM = {"task_id": "t/0", "prompt": "def add(a, b):\n", "entry_point": "add",
           "test": "def check(f):\n    assert f(2, 3) == 5\n"}
RESULT = {"task": "mc:mc", "capability": "commonsense", "metric": "acc_norm", "value": 0.5, "higher_is_better": True,
          "n": 2, "limit": None}


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _evaluate(fx: Fixtures, task: str, *extra: str) -> list[str]:
    return ["evaluate", str(fx.model_dir), "--task", task, "--quiet", *extra]


def _mc(records: list, name: str = "mc.jsonl"):
    """A case builder: `cola evaluate` on a multiple-choice file holding `records`."""
    return lambda tmp, fx: _evaluate(fx, f"mc:{_jsonl(tmp / name, records)}")


def _task(kind: str, records: list, *extra: str):
    return lambda tmp, fx: _evaluate(fx, f"{kind}:{_jsonl(tmp / 'items.jsonl', records)}", *extra)


def _dense(content: str | bytes, *extra: str):
    """`cola evaluate` of a good mc file against a --dense file holding `content`."""
    def build(tmp: Path, fx: Fixtures) -> list[str]:
        return _evaluate(fx, f"mc:{_jsonl(tmp / 'mc.jsonl', [MC, MC])}", "--dense",
                         str(_write(tmp / "dense.json", content)), *extra)
    return build


def _option(*extra: str, task: str = "mc"):
    def build(tmp: Path, fx: Fixtures) -> list[str]:
        path = (_jsonl(tmp / "mc.jsonl", [MC, MC]) if task == "mc"
                else _write(tmp / "text.txt", "The river ran past the old mill. " * 40))
        return _evaluate(fx, f"{task}:{path}", *extra)
    return build


def _report_has(key: str, expected: object):
    """Check (for an "ok" case): out.json's retention[key] equals `expected`."""
    def check(tmp: Path) -> str | None:
        try:
            found = json.loads((tmp / "out.json").read_text())["retention"][key]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"out.json unreadable: {exc}"
        return None if found == expected else f"retention[{key!r}] is {found!r}, expected {expected!r}"
    return check


def _executed(tmp: Path) -> str | None:
    """The humaneval_pass1 result records the isolation that applied and one outcome per program."""
    try:
        result = json.loads((tmp / "out.json").read_text())["results"][0]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        return f"out.json unreadable: {exc}"
    execution = result.get("execution") or {}
    if sum(execution.get("outcomes", {}).values()) != result["n"] or "network" not in execution.get("isolation", {}):
        return f"execution not recorded: {execution}"
    return None


def _contained(tmp: Path) -> str | None:
    """The probe ran to its end (its program passed) and left nothing outside."""
    if (tmp / "open" / "OUTSIDE").exists():
        return "the probe wrote OUTSIDE"
    try:
        execution = json.loads((tmp / "execution.json").read_text())
    except (OSError, ValueError) as exc:
        return f"execution.json unreadable: {exc}"
    return None if execution["outcomes"] == {"passed": 1} else f"the probe did not run: {execution['outcomes']}"


def _probe(tmp: Path, fx: Fixtures) -> str:
    """The issue's probe as a problem's tests: a shell command, a write to a folder anyone may write to, a
    socket. The model's completion lands inside a string literal, so the probe runs whatever it writes."""
    folder = tmp / "open"
    folder.mkdir()
    folder.chmod(0o777)
    prompt = 'def add(a, b):\n    return a + b\n\n\nNOTE = r"""'
    test = ('"""\n\n\ndef check(f):\n'
            "    import posix, socket\n"
            f"    posix.system('touch {folder}/OUTSIDE')\n"
            "    try:\n"
            f"        open('{folder}/OUTSIDE', 'w').write('escaped')\n"
            "    except OSError:\n"
            "        pass\n"
            "    try:\n"
            "        socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
            "    except OSError:\n"
            "        pass\n")
    path = _jsonl(tmp / "probe.jsonl", [{**PROBLEM, "prompt": prompt, "test": test}])
    return f"""
import json
from cola.evaluate import evaluate, load_for_evaluation
model, tok = load_for_evaluation({str(fx.model_dir)!r})
(result,) = evaluate(model, tok, ["humaneval_pass1:{path}"], max_new_tokens=4, confirm_run_unsafe_code=True)
open({str(tmp / 'execution.json')!r}, "w").write(json.dumps(result.execution))
"""


CASES = [
    # multiple-choice records
    Case("mc: empty choices list", _mc([{**MC, "choices": []}]), match="'choices' has 0 choices"),
    Case("mc: one choice", _mc([{**MC, "choices": ["red"], "label": 0}]), match="'choices' has 1 choice"),
    Case("mc: label 7 of 2 choices", _mc([MC, {**MC, "label": 7}]), match="mc.jsonl:2: multiple choice record: "
                                                                        "label 7 is out of range for 2 choices"),
    Case("mc: negative label", _mc([{**MC, "label": -1}]), match="label -1 is out of range"),
    Case("mc: label a letter", _mc([{**MC, "label": "B"}]), match="0-based index of the right choice, got 'B'"),
    Case("mc: label a fraction", _mc([{**MC, "label": 0.5}]), match="got 0.5"),
    Case("mc: choices a string", _mc([{**MC, "choices": "red blue"}]), match="must be a list of choices"),
    Case("mc: a choice is null", _mc([{**MC, "choices": ["red", None]}]), match="choice 1 of 'choices' must be text"),
    Case("mc: question is null", _mc([{**MC, "question": None}]), match="field 'question' must be text, got null"),
    Case("mc: missing label", _mc([{"question": "q", "choices": ["a", "b"]}]), match="missing field 'label'"),
    Case("mc: hellaswag endings empty", _mc([{"query": "q", "endings": [], "label": 0}]),
         match="'endings' has 0 choices"),
    Case("mc: commonsense_qa answerKey not a label",
         _mc([{"question": "q", "choices": {"label": ["A", "B"], "text": ["x", "y"]}, "answerKey": "E"}]),
         match="answerKey 'E' is not one of the choice labels A, B"),
    Case("mc: commonsense_qa labels and texts differ in number",
         _mc([{"question": "q", "choices": {"label": ["A", "B", "C"], "text": ["x", "y"]}, "answerKey": "A"}]),
         match="3 labels but 2 texts"),
    Case("mc: malformed JSON line", lambda tmp, fx: _evaluate(
        fx, f"mc:{_write(tmp / 'mc.jsonl', json.dumps(MC) + chr(10) + '{broken' + chr(10))}"), match="line 2"),
    Case("mc: empty file", lambda tmp, fx: _evaluate(fx, f"mc:{_write(tmp / 'mc.jsonl', '')}"), match="no records"),
    Case("mc: file not found", lambda tmp, fx: _evaluate(fx, f"mc:{tmp / 'absent.jsonl'}"), match="not found"),
    Case("unknown task kind", lambda tmp, fx: _evaluate(fx, f"mcq:{_jsonl(tmp / 'mc.jsonl', [MC])}"),
         match="unknown task kind 'mcq'"),
    # question/answer and generation records
    Case("qa: empty answer", _task("qa", [{"question": "q", "answer": ""}]), match="field 'answer' is empty"),
    Case("qa: answer a list", _task("qa", [{"question": "q", "answer": ["4"]}]),
         match="must be text, got a list of strings"),
    Case("qa: MATH solution blank", _task("qa", [{"problem": "p", "solution": "  "}]),
         match="field 'solution' is empty"),
    Case("qa: mbpp code null", _task("qa", [{"text": "t", "code": None}]), match="'code' must be text, got null"),
    Case("gsm8k_em: answer without '#### N'", _task("gsm8k_em", [{"question": "q", "answer": "it is four"}]),
         match="no final number after '####'"),
    Case("humaneval_pass1: without --confirm_run_unsafe_code", _task("humaneval_pass1", [PROBLEM]),
         match="pass --confirm_run_unsafe_code"),
    Case("humaneval_pass1: record without tests", _task("humaneval_pass1", [
        {"prompt": "def f():\n", "canonical_solution": "    return 1\n"}], "--confirm_run_unsafe_code"),
        match="missing field 'test' (humaneval records need prompt, test, entry_point)"),
    Case("humaneval_pass1: entry_point is code", _task("humaneval_pass1", [
        {**PROBLEM, "entry_point": "add); import os; (add"}], "--confirm_run_unsafe_code"),
        match="is not a python function name"),
    Case("humaneval_pass1: API without confirm_run_unsafe_code", lambda tmp, fx: f"""
from cola.evaluate import evaluate_path
evaluate_path({str(fx.model_dir)!r}, ["humaneval_pass1:{_jsonl(tmp / 'he.jsonl', [PROBLEM])}"])
""", api=True, match="confirm_run_unsafe_code=True in Python"),
    Case("humaneval_pass1: confirm_run_unsafe_code='false' (a YAML string)", lambda tmp, fx: f"""
from cola.evaluate import evaluate_path
evaluate_path({str(fx.model_dir)!r}, ["humaneval_pass1:{_jsonl(tmp / 'he.jsonl', [PROBLEM])}"],
              confirm_run_unsafe_code="false")
""", api=True, match="confirm_run_unsafe_code must be true or false, got 'false'"),
    Case("humaneval_pass1: the issue's probe is contained", _probe, api=True, expect="ok", check=_contained),
    Case("humaneval_pass1: with the flag runs and records its isolation", lambda tmp, fx: _evaluate(
        fx, f"humaneval_pass1:{_jsonl(tmp / 'he.jsonl', [PROBLEM, PROBLEM])}", "--confirm_run_unsafe_code",
        "--max_new_tokens", "4", "--output", str(tmp / "out.json")), expect="ok", check=_executed),
    # perplexity files
    Case("ppl: file not UTF-8", lambda tmp, fx: _evaluate(
        fx, f"ppl:{_write(tmp / 'latin.txt', 'café au lait. '.encode('latin-1') * 50)}"), match="is not UTF-8 text"),
    Case("ppl: jsonl text is null", _task("ppl", [{"text": "fine"}, {"text": None}]),
         match="items.jsonl:2: field 'text' must be text, got null"),
    Case("ppl: text shorter than a window", lambda tmp, fx: _evaluate(
        fx, f"ppl:{_write(tmp / 'short.txt', 'tiny')}"), match="fewer than one window of 512"),
    # options
    Case("--window 0", _option("--window", "0", task="ppl"), match="--window must be a whole number of tokens"),
    Case("--window 1", _option("--window", "1", task="ppl"), match="at least 2; got 1"),
    Case("--batch_tokens 0", _option("--batch_tokens", "0"), match="--batch_tokens must be"),
    Case("--batch_size 0", _option("--batch_size", "0"), match="--batch_size must be"),
    Case("--max_new_tokens -5", _option("--max_new_tokens", "-5"), match="--max_new_tokens must be"),
    Case("--limit 0", _option("--limit", "0"), match="positive number of items"),
    Case("--limit -1", _option("--limit", "-1"), match="positive number of items, got -1"),
    Case("--limit not a number", _option("--limit", "ten"), match="invalid --limit 'ten'"),
    Case("--limit task given twice", _option("--limit", "mc:mc=1,mc:mc=2"), match="given twice"),
    Case("--limit for a task not evaluated", _option("--limit", "hellaswag=5"), match="not evaluated: hellaswag"),
    Case("--limit with an empty task name", _option("--limit", "=5"), match="'=5' is not TASK=N"),
    Case("API: limit=2.5", lambda tmp, fx: f"""
from cola.evaluate import evaluate_path
evaluate_path({str(fx.model_dir)!r}, ["mc:{_jsonl(tmp / 'mc.jsonl', [MC])}"], limit=2.5)
""", api=True, match="limit must be a number of items"),
    Case("API: execution limit of 0 seconds", lambda tmp, fx: """
from cola.evaluate import ExecutionLimits
ExecutionLimits(wall_seconds=0)
""", api=True, match="execution limit wall_seconds must be a positive number"),
    # --dense
    Case("--dense is a JSON list", _dense("[1, 2]"), match="holds a JSON list, not a `cola evaluate --output` report"),
    Case("--dense is a JSON number", _dense("3"), match="holds a JSON int, not a"),
    Case("--dense is not JSON", _dense("{results: oops"), match="is not valid JSON"),
    Case("--dense is not UTF-8", _dense(b"\xff\xfe{}"), match="is not UTF-8 text"),
    Case("--dense without results", _dense('{"tasks": ["mc:mc"]}'), match="has no 'results' list"),
    Case("--dense results not objects", _dense('{"results": [1]}'), match="results[0] is int, not a task result"),
    Case("--dense result without a value", _dense(json.dumps({"results": [{**RESULT, "value": None}]})),
         match="results[0] (mc:mc) has no number 'value'"),
    Case("--dense result with a text value", _dense(json.dumps({"results": [{**RESULT, "value": "0.5"}]})),
         match="has no number 'value'"),
    Case("--dense with none of the evaluated tasks", _dense(json.dumps({"results": [{**RESULT, "task": "hellaswag"}]})),
         match="has none of the evaluated tasks (mc:mc); it holds hellaswag"),
    Case("--dense scored by another metric", _dense(json.dumps({"results": [{**RESULT, "metric": "acc"}]})),
         match="was scored by acc there, by acc_norm here"),
    Case("--dense with another --limit", _dense(json.dumps({"results": [RESULT]}), "--limit", "1"),
         match="use the same --limit"),
    Case("--dense lacking one of two tasks: warns, retention says which", lambda tmp, fx: [
        "evaluate", str(fx.model_dir), "--quiet", "--task", f"mc:{_jsonl(tmp / 'mc.jsonl', [MC, MC])}",
        f"mc:{_jsonl(tmp / 'other.jsonl', [MC])}", "--dense", str(_write(tmp / "dense.json", json.dumps(
            {"results": [RESULT]}))), "--output", str(tmp / "out.json")],
        expect="ok", check=_report_has("unmatched", {"mc:other": "no dense result"})),
    # --output
    Case("--output is an existing directory", lambda tmp, fx: _option("--output", str(tmp))(tmp, fx),
         match="is a directory; name a file in it"),
    Case("--output under a file",
         lambda tmp, fx: _option("--output", str(_write(tmp / "f", "x") / "out.json"))(tmp, fx),
         match="is a file, not a directory"),
]
