"""Stage 1's default general reference: held-out records of the pool's free-text prose sources, chosen by rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cola.cli import main
from cola.config import CurateConfig
from cola.data.sources import load_source, parse_source
from cola.errors import ColaError
from cola.export import MANIFEST_FILE
from cola.stages.mixture import (PROSE_WORD_SHARE, general_reference_sources, held_out_texts, load_references,
                                 pool_general_reference, prose_share, reference_spec)
from cola.stages.process import reference_probes

from tests.conftest import byte_tokenizer, write_jsonl

WORDS = ["river", "mill", "town", "market", "bridge", "harbour", "garden", "station", "meadow", "chapel"]


def _prose(i: int) -> str:
    return (f"The {WORDS[i % 10]} beside the {WORDS[(i + 3) % 10]} was quiet that morning, and the "
            f"{WORDS[(i + 7) % 10]} keepers walked home slowly along the {WORDS[(i + 1) % 10]} road number {i}.")


def _arithmetic(i: int) -> str:
    return f"{i} + {3 * i} = {4 * i} and {i} * 2 = {2 * i}, so {4 * i} - {2 * i} = {2 * i}."


def _code(i: int) -> str:
    return f"def f{i}(x):\n    y = x * {i} + {i % 5}\n    return [y, y ** 2]\n"


def _file(folder: Path, name: str, make, n: int = 40, key: str = "text") -> Path:
    return write_jsonl(folder / f"{name}.jsonl", [{key: make(i)} for i in range(n)])


def _load(spec: str, candidates: int = 16):
    return load_source(parse_source(spec), max_candidates=candidates, seed=0)


def test_prose_share_tells_prose_from_code_and_arithmetic() -> None:
    assert prose_share(["The river , near the (old) mill's bridge \"was\" quiet ."]) == 1.0  # lone punctuation skipped
    assert prose_share(["def f(x):\n    return x * 2 + 1"]) == 3 / 8  # def, return, x
    assert prose_share([]) == 0.0 and prose_share([" , . "]) == 0.0
    assert prose_share([_prose(i) for i in range(20)]) >= PROSE_WORD_SHARE
    assert prose_share([_arithmetic(i) for i in range(20)]) < PROSE_WORD_SHARE
    assert prose_share([_code(i) for i in range(20)]) < PROSE_WORD_SHARE


def test_the_rule_picks_the_free_text_prose_sources(tmp_path) -> None:
    """Free text, no other capability's hint, prose unless a hint says general: exactly `web` and `labelled`."""
    web = _file(tmp_path, "web", _prose)
    labelled = _file(tmp_path, "labelled", _code)  # code labelled general: the label is trusted
    sums = _file(tmp_path, "sums", _arithmetic)  # label-less free text, but not prose
    snippets = _file(tmp_path, "snippets", _code)
    story = _file(tmp_path, "story", _prose)  # prose, but labelled math
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": _prose(i), "answer": str(i)} for i in range(40)])
    chat = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": _prose(i), "output": _prose(i + 1)}
                                                   for i in range(40)])  # general, but not free text
    sources = [_load(s) for s in (str(web), f"{labelled}@general", str(sums), str(snippets), f"{story}@math", str(qa),
                                  str(chat))]
    assert [s.spec.name for s in general_reference_sources(sources)] == ["web", "labelled"]
    assert reference_spec("general", CurateConfig(), sources) == "pool:web+labelled"
    assert reference_spec("general", CurateConfig(), sources[2:]) == "embedded-general"  # none: the fallback
    assert reference_spec("math", CurateConfig(), sources) == "embedded-math"


def test_held_out_texts_are_not_candidates_and_repeat_under_a_seed(tmp_path) -> None:
    source = _load(str(_file(tmp_path, "web", _prose)))
    texts, held_out = held_out_texts(source, 8, seed=3)
    assert held_out and len(texts) == 8 and not set(texts) & set(source.texts)
    assert held_out_texts(source, 8, seed=3) == (texts, True)
    assert held_out_texts(source, 0, seed=3) == ((), True)
    whole = _load(str(_file(tmp_path, "small", _prose, n=10)), candidates=16)  # nothing left over
    texts, held_out = held_out_texts(whole, 4, seed=3)
    assert not held_out and len(texts) == 4 and set(texts) <= set(whole.texts)


def test_the_pool_reference_shares_its_size_evenly_and_is_free_text(tmp_path) -> None:
    web = _load(str(_file(tmp_path, "web", _prose)))
    news = _load(str(_file(tmp_path, "news", lambda i: _prose(i + 100))))
    reference = pool_general_reference([web, news], 5, seed=0)
    assert reference.spec.name == "pool:web+news" and reference.capability == "general"
    assert not set(reference.texts) & {*web.texts, *news.texts}  # held out
    from_web = [t for t in reference.texts if t in {_prose(i) for i in range(40)}]
    assert (len(reference.texts), len(from_web)) == (5, 3)  # 3 + 2: the first source takes the odd one
    assert pool_general_reference([web, news], 5, seed=0).texts == reference.texts  # deterministic
    probes = reference_probes(reference, byte_tokenizer(), 64)
    assert len(probes) == 5 and all(t.startswith(p.text) for p, t in zip(probes, reference.texts))  # plain text
    with pytest.raises(ColaError, match="no free-text prose source"):
        pool_general_reference([], 5, seed=0)


def test_load_references_builds_the_pool_reference_and_the_override_still_wins(tmp_path) -> None:
    web = _file(tmp_path, "web", _prose)
    sums = _load(f"{_file(tmp_path, 'sums', _arithmetic)}@math")
    sources = [_load(str(web)), sums]
    config = CurateConfig(reference_size=6)
    references = load_references(config, ["general", "math"], sources)
    assert references["general"].spec.name == "pool:web" and len(references["general"].texts) == 6
    assert references["math"].spec.name == "embedded-math"
    mine = _file(tmp_path, "mine", lambda i: f"My own general text {i}.", n=5)
    overridden = CurateConfig(reference_size=6, references=(("general", str(mine)),))
    assert reference_spec("general", overridden, sources) == str(mine)
    assert load_references(overridden, ["general"], sources)["general"].texts == tuple(
        f"My own general text {i}." for i in range(5))


def test_no_general_reference_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    """No prose in the pool and an empty embedded general part (a Python without pydoc_data): say what to give."""
    import cola.data.embedded as embedded

    real = embedded.embedded_records
    monkeypatch.setattr(embedded, "embedded_records",
                        lambda capability, seed=0: iter(()) if capability == "general" else real(capability, seed=seed))
    sources = [_load(str(_file(tmp_path, "sums", _arithmetic)))]
    with pytest.raises(ColaError) as err:
        load_references(CurateConfig(), ["general"], sources)
    assert str(err.value) == (
        "no general reference set: the pool has no free-text prose source and the embedded general pool (Python's "
        "documentation) gives none here (embedded-general: the source is empty); give one with --reference "
        "general=PATH")


def test_prose_scores_above_code_on_general_with_the_pool_reference(tiny_model_dir, tmp_path) -> None:
    """The tiny model end to end: the label-less prose file probes general and outscores the code on it."""
    web, snippets = _file(tmp_path, "web", _prose), _file(tmp_path, "snippets", _code)

    def run(out: Path) -> dict:
        assert main(["curate", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--quiet",
                     "--dtype", "float32", "--device", "cpu", "--num_samples", "6", "--sequence_length", "48",
                     "--candidates_per_source", "16", "--reference_size", "8", "--datasets", str(web),
                     f"{snippets}@code", "--target_capabilities", "general", "code"]) == 0
        return json.loads((out / MANIFEST_FILE).read_text())["stage1"]

    stage1 = run(tmp_path / "a")
    assert stage1["references"] == {"general": "pool:web", "code": "embedded-code"}
    general = {name: row["general"]["score"] for name, row in stage1["coverage"].items()}
    assert general["web"] > general["snippets"], general
    again = run(tmp_path / "b")
    assert (again["coverage"], again["quotas"]) == (stage1["coverage"], stage1["quotas"])  # deterministic
