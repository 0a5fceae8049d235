"""cola.pool.Pool: a pool on disk (Stage 2's candidate store) reads as the same pool held in memory."""

from __future__ import annotations

import numpy as np

from cola.data.sources import Source, SourceSpec
from cola.pool import Pool
from cola.stages.process import TokenizedText, candidate_store


def _source(name: str) -> Source:
    spec = SourceSpec(spec=name, name=name, kind="file", location=name, capability=None, fields=None)
    return Source(spec=spec, capability="general",
                  fields=("text",), texts=("x",), records_seen=1, empty_skipped=0)


def test_a_pool_on_disk_reads_as_the_pool_in_memory() -> None:
    rng = np.random.default_rng(0)
    candidates = [TokenizedText(text=f"candidate {i}", input_ids=rng.integers(0, 1000, rng.integers(1, 9)).astype(
        np.int32), source=i % 3, format_enhanced=i % 5 == 0) for i in range(9000)]  # three batches of 4,096
    store = candidate_store()
    store.extend(candidates)
    store.close()
    sources = (_source("a"), _source("b"), _source("c"))
    disk, memory = (Pool(sources=sources, candidates=c, report={}, probes={}) for c in (store, candidates))
    assert len(disk.candidates) == 9000
    assert disk.names == memory.names and disk.names[:4] == ["a", "b", "c", "a"]
    np.testing.assert_array_equal(disk.source_indices, memory.source_indices)
    np.testing.assert_array_equal(disk.num_tokens, memory.num_tokens)
    assert list(disk.texts) == list(memory.texts)
    assert all(np.array_equal(a, b) and a.dtype == np.int32 for a, b in zip(disk.token_ids, memory.token_ids))
    picked = [8999, 3, 4096, 3]
    for a, b in zip(disk.take(picked), memory.take(picked)):
        assert (a.text, a.source, a.format_enhanced) == (b.text, b.source, b.format_enhanced)
        np.testing.assert_array_equal(a.input_ids, b.input_ids)


def test_curate_spills_the_pool_into_its_work_dir_and_a_failed_run_leaves_none(pool_files, tmp_path):
    """Stage 2's candidates go to a store in the run's work directory; a run failing after Stage 2 (the pool is
    smaller than num_samples) leaves no work directory behind."""
    import pytest

    from cola.api import COLA
    from cola.errors import ColaError
    from cola.output_dir import default_work_dir
    from tests.conftest import byte_tokenizer, tiny_llama

    cola = COLA(model=tiny_llama(), tokenizer=byte_tokenizer(),
                available_datasets=[str(p) for p in pool_files.values()],
                output_dir=tmp_path / "out", quiet=True, candidates_per_source=8)
    config = cola.config(4, 32)
    pool = cola.process(cola.load(config, cola.output_dir).sources, config, {})
    assert pool.candidates.folder.parent == default_work_dir(tmp_path / "out")
    with pytest.raises(ColaError, match="larger than the pool"):
        cola.run(num_samples=100_000, sequence_length=32)
    assert not default_work_dir(tmp_path / "out").exists() and not (tmp_path / "out").exists()
