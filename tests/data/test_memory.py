"""In-memory data in the Python API: Datasets, IterableDatasets, lists of texts or dicts, (data, capability) pairs
and cola.InMemory go through the same schema table, Stage 2 and manifest as files, named by content hash."""

from __future__ import annotations

import json
import re

import pytest

import cola
from cola.api import COLA
from cola.data.memory import MEMORY_DIR, dataset_items, specs_of
from cola.errors import ColaError
from cola.export import MANIFEST_FILE

from tests.conftest import byte_tokenizer, tiny_llama

PROSE = [f"Paragraph {i}. " + "The river ran past the old mill and the town. " * (2 + i % 5) for i in range(30)]
PROBLEMS = [{"question": f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?",
             "answer": f"He has {i} + {i + 2} = {2 * i + 2} apples.\n#### {2 * i + 2}"} for i in range(30)]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COLA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / MEMORY_DIR


def test_every_in_memory_kind_is_curated_like_a_file_and_named_by_its_content(tmp_path, cache):
    from datasets import Dataset, IterableDataset

    streamed = IterableDataset.from_generator(lambda: iter({"text": t.upper()} for t in PROSE))
    model, tokenizer = tiny_llama(), byte_tokenizer()
    curator = COLA(model=model, tokenizer=tokenizer, quiet=True, output_dir=tmp_path / "out",
                   available_datasets=[Dataset.from_list(PROBLEMS), PROSE, (PROSE[:20], "code"), streamed,
                                       cola.InMemory([{"body": t, "id": 1} for t in PROSE[:25]], fields=("body",),
                                                     name="notes")])
    specs = curator.settings.datasets
    assert len(set(specs)) == 5 and specs[2].endswith("@code") and specs[4].endswith("#body")
    assert sorted(p.name for p in cache.iterdir()) == sorted({re.sub(r"[@#].*$", "", s).split("/")[-1]
                                                              for s in specs})
    assert all(re.fullmatch(r"(memory|notes)-[0-9a-f]{16}\.jsonl", p.name) for p in cache.iterdir())
    assert specs_of([PROSE]) == (specs[1],)  # the same content again: the same file, not rewritten

    samples = curator.run(num_samples=8, sequence_length=64)
    assert len(samples) == 8
    sources = {s["name"]: s for s in json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())["sources"]}
    problems = next(s for name, s in sources.items() if s["fields"] == ["question", "answer"])
    assert problems["capability"] == "math" and problems["capability_origin"] == "catalog"  # gsm8k's schema
    assert next(s for s in sources.values() if s["spec"].endswith("@code"))["capability"] == "code"
    assert next(s for s in sources.values() if s["spec"].endswith("#body"))["records_seen"] == 25
    assert all(re.fullmatch(r"(memory|notes)-[0-9a-f]{16}", name) for name in sources)
    assert all(len(s["content_sha256"]) == 64 for s in sources.values())


def test_a_single_dataset_or_pair_is_one_item_and_a_list_of_names_stays_names():
    from datasets import Dataset

    data = Dataset.from_list(PROBLEMS)
    assert dataset_items(data) == [data]
    assert dataset_items((PROSE, "math")) == [(PROSE, "math")]
    assert dataset_items(("gsm8k", "c4")) == ["gsm8k", "c4"]
    assert dataset_items(["gsm8k", PROSE]) == ["gsm8k", PROSE]
    assert specs_of("embedded-math") == ("embedded-math",)


@pytest.mark.parametrize("available, message", [
    ([[{"id": 1, "score": 0.5}]], "COLA: available_datasets[0]: cannot tell which column holds the text; its "
                                  "columns are: id, score. Name them: cola.InMemory(data, fields=(\"column\",))"),
    ([[]], "COLA: available_datasets[0]: the in-memory dataset is empty"),
    ([["a text", {"text": "a record"}]], "COLA: available_datasets[0]: row 1 mixes texts and records"),
    ([[3, 4]], "COLA: available_datasets[0]: row 0 is a int; in-memory data holds texts (str) or records"),
    (["gsm8k", None], "COLA: available_datasets[1] must be a dataset name, a path or in-memory data"),
    ([("gsm8k", "math")], "COLA: available_datasets[0] must be a dataset name, a path or in-memory data (a "
                          "datasets.Dataset, a list of texts or of dicts, a (data, capability) pair, cola.InMemory), "
                          "got ('gsm8k', 'math') (a"),
    (5, "COLA: available_datasets must be a dataset name, a path, in-memory data or a list of them, got 5 (an "
        "integer)"),
    (["The cat sat on the mat."], "COLA: available_datasets[0] looks like a text, not a dataset name or path: "
                                  "pass texts as one list inside the list"),
    ([cola.InMemory(PROSE, name="my notes")], "COLA: available_datasets[0]: name 'my notes' must be letters"),
])
def test_bad_in_memory_data_is_one_line_naming_the_item(available, message, cache):
    with pytest.raises(ColaError) as err:
        specs_of(available)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not cache.exists() or not any(cache.iterdir())  # nothing written for bad data


def test_the_same_data_twice_is_one_dataset_named_twice(tmp_path):
    with pytest.raises(ColaError, match=r"the same dataset is named twice: memory-[0-9a-f]{16}"):
        COLA(model=tiny_llama(), tokenizer=byte_tokenizer(), quiet=True, output_dir=tmp_path / "out",
             available_datasets=[PROSE, list(PROSE)]).run(num_samples=4, sequence_length=32)
