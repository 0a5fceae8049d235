"""The feature cache: a second run over the same pool reads the model's features instead of recomputing them,
and writes byte-identical outputs; any change of model, pool or setting misses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cola.api import COLA
from cola.config import SelectionConfig
from cola.feature_cache import model_digest
from cola.export import MANIFEST_FILE, SAMPLES_FILE

from tests.conftest import byte_tokenizer, tiny_llama

MOMENTS = SelectionConfig(method="moments")
ACTIVATIONS = SelectionConfig(method="activations")


def curate(tmp_path: Path, pool_files, name: str, cache: Path, model=None, **settings) -> dict:
    out = tmp_path / name
    cola = COLA(model=model or tiny_llama(), tokenizer=byte_tokenizer(), available_datasets=[
        str(p) for p in pool_files.values()], output_dir=out, quiet=True, candidates_per_source=8,
        feature_cache=cache, reference_size=8, **{"stage1": True, **settings})  # Stage 1's probes: cache entries
    cola.run(num_samples=4, sequence_length=32)
    return {"samples": (out / SAMPLES_FILE).read_bytes(), "pool": (out / "pool.parquet").read_bytes(),
            "manifest": json.loads((out / MANIFEST_FILE).read_text())}


def test_a_second_run_reads_the_cache_and_writes_the_same_bytes(tmp_path, pool_files) -> None:
    cache = tmp_path / "cache"
    first = curate(tmp_path, pool_files, "first", cache, selection=MOMENTS)
    entries = sorted(cache.iterdir())
    assert len(entries) >= 2 and all(p.suffix == ".npz" for p in entries)  # the pool and Stage 1's probes
    assert "feature_cache_hits" not in first["manifest"]["timings"]
    second = curate(tmp_path, pool_files, "second", cache, selection=MOMENTS)
    assert sorted(cache.iterdir()) == entries
    assert second["manifest"]["timings"]["feature_cache_hits"] == len(entries)
    assert second["samples"] == first["samples"] and second["pool"] == first["pool"]
    assert second["manifest"]["diagnostics"] == first["manifest"]["diagnostics"]


def test_other_settings_seeds_and_weights_miss(tmp_path, pool_files) -> None:
    cache = tmp_path / "cache"
    curate(tmp_path, pool_files, "a", cache, selection=MOMENTS)
    count = len(list(cache.iterdir()))
    other_dim = curate(tmp_path, pool_files, "b", cache, selection=SelectionConfig(method="moments", sketch_dim=3))
    assert other_dim["manifest"]["timings"].get("feature_cache_hits", 0) >= 1  # the probes are the same
    assert len(list(cache.iterdir())) == count + 1  # the pool's entry is not: its sketches differ
    other_seed = curate(tmp_path, pool_files, "c", cache, seed=5, selection=MOMENTS)
    assert "feature_cache_hits" not in other_seed["manifest"]["timings"]
    model = tiny_llama()
    before = model_digest(model)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1.0
    assert model_digest(model) != before
    changed = curate(tmp_path, pool_files, "d", cache, model=model, selection=MOMENTS)
    assert "feature_cache_hits" not in changed["manifest"]["timings"]
    assert np.isfinite(changed["manifest"]["diagnostics"]["moment_match"]["relative_error"]["covariance_mean"])


def test_an_entry_with_sketches_serves_a_run_without_them(tmp_path, pool_files) -> None:
    # moments first: its pool entry (features + sketches) is the one the activations run reads
    cache = tmp_path / "cache"
    curate(tmp_path, pool_files, "moments", cache, selection=MOMENTS)
    entries = sorted(cache.iterdir())
    served = curate(tmp_path, pool_files, "served", cache, selection=ACTIVATIONS)
    assert sorted(cache.iterdir()) == entries  # nothing new computed: the pool and the probes were both there
    assert served["manifest"]["timings"]["feature_cache_hits"] == len(entries)
    alone = curate(tmp_path, pool_files, "alone", tmp_path / "cache2", selection=ACTIVATIONS)  # a cache of its own
    assert served["samples"] == alone["samples"]
    assert served["manifest"]["diagnostics"] == alone["manifest"]["diagnostics"]


def test_an_entry_with_channel_maxima_serves_moments_and_activations_runs(tmp_path, pool_files) -> None:
    cache = tmp_path / "cache"
    coverage = curate(tmp_path, pool_files, "coverage", cache, selection=SelectionConfig(method="outlier_coverage"))
    assert "range_coverage" in coverage["manifest"]["diagnostics"]
    entries = sorted(cache.iterdir())
    for name, selection in (("moments", MOMENTS), ("activations", ACTIVATIONS)):
        served = curate(tmp_path, pool_files, name, cache, selection=selection)
        assert sorted(cache.iterdir()) == entries, name  # served by the maxima entry: nothing new computed
        alone = curate(tmp_path, pool_files, f"{name}-alone", tmp_path / f"cache-{name}", selection=selection)
        assert served["samples"] == alone["samples"], name
        assert served["manifest"]["diagnostics"] == alone["manifest"]["diagnostics"], name  # maxima trimmed


def test_stage1_probes_are_cached_without_a_feature_cache(tmp_path, pool_files, probe_cache, monkeypatch) -> None:
    """No feature cache named: the pool is run again, the probes (the same texts run after run) are not."""
    import cola.stages.select as select

    extracted: list[int] = []  # samples per extraction the model ran
    real = select.embed_pool
    monkeypatch.setattr(select, "embed_pool", lambda model, ids, *a, **k: extracted.append(len(ids)) or real(
        model, ids, *a, **k))
    first = curate(tmp_path, pool_files, "first", None, selection=ACTIVATIONS)
    probes = first["manifest"]["stage1"]["references"]
    entries = sorted(probe_cache.iterdir())
    assert len(entries) == len(probes) >= 2 and len(extracted) == 1 + len(probes)
    extracted.clear()
    second = curate(tmp_path, pool_files, "second", None, selection=ACTIVATIONS)
    assert len(extracted) == 1 and sorted(probe_cache.iterdir()) == entries  # only the pool ran
    assert second["manifest"]["timings"]["feature_cache_hits"] == len(probes)
    assert second["samples"] == first["samples"] and second["pool"] == first["pool"]


def test_an_unwritable_probe_cache_warns_and_the_run_goes_on(tmp_path, pool_files, monkeypatch, caplog) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setattr("cola.feature_cache.probe_cache_dir", lambda: tmp_path / "a_file" / "probes")
    curate(tmp_path, pool_files, "out", None, selection=ACTIVATIONS)
    assert (tmp_path / "out" / SAMPLES_FILE).is_file()
    assert "cannot keep features in" in caplog.text and "COLA_CACHE_DIR" in caplog.text


def _curate_resumable(tmp_path: Path, pool_files, name: str, model=None) -> dict:
    out = tmp_path / name
    COLA(model=model or tiny_llama(), tokenizer=byte_tokenizer(), available_datasets=[
        str(p) for p in pool_files.values()], output_dir=out, quiet=True, candidates_per_source=8, stage1=False,
        selection=ACTIVATIONS).run(num_samples=4, sequence_length=32)
    return {"samples": (out / SAMPLES_FILE).read_bytes(), "pool": (out / "pool.parquet").read_bytes(),
            "manifest": json.loads((out / MANIFEST_FILE).read_text())}


def _kill_after_two_chunks(tmp_path: Path, pool_files, name: str, monkeypatch) -> None:
    """A curate run into `name` interrupted (KeyboardInterrupt, as a user's Ctrl-C) once its work folder holds two
    finished chunks; the model's extraction is restored afterwards."""
    import cola.stages.select as select
    from cola.output_dir import default_work_dir

    real = select.embed_pool

    def dies(model, ids, *args, **kwargs):
        if len(list(default_work_dir(tmp_path / name).glob("features/*.npz"))) == 2:
            raise KeyboardInterrupt
        return real(model, ids, *args, **kwargs)

    monkeypatch.setattr(select, "embed_pool", dies)
    with pytest.raises(KeyboardInterrupt):
        _curate_resumable(tmp_path, pool_files, name)
    monkeypatch.setattr(select, "embed_pool", real)


def test_a_killed_extraction_resumes_with_the_chunks_it_finished(tmp_path, pool_files, monkeypatch, caplog) -> None:
    """Killed after two chunks, run again: only the other chunks run the model, and the outputs are the bytes of
    a run never interrupted; the work folder beside the output is gone once the run succeeds."""
    import cola.feature_cache as feature_cache
    import cola.stages.select as select
    from cola.output_dir import default_work_dir

    monkeypatch.setattr(feature_cache, "CHUNK_CANDIDATES", 3)
    whole = _curate_resumable(tmp_path, pool_files, "whole")
    candidates = pq.read_metadata(tmp_path / "whole" / "pool.parquet").num_rows
    assert candidates > 9  # at least four chunks of 3
    assert not default_work_dir(tmp_path / "whole").exists()

    _kill_after_two_chunks(tmp_path, pool_files, "resumed", monkeypatch)
    work = default_work_dir(tmp_path / "resumed") / "features"
    assert len(list(work.glob("*.npz"))) == 2 and not (tmp_path / "resumed").exists()

    real, calls = select.embed_pool, []
    monkeypatch.setattr(select, "embed_pool", lambda model, ids, *a, **k: calls.append(len(ids)) or real(
        model, ids, *a, **k))
    with caplog.at_level("INFO", logger="cola.feature_cache"), caplog.at_level("INFO", logger="cola.api"):
        resumed = _curate_resumable(tmp_path, pool_files, "resumed")
    assert len(calls) == -(-candidates // 3) - 2 and sum(calls) == candidates - 6  # the missing chunks only
    assert resumed["manifest"]["timings"]["feature_cache_hits"] == 2
    assert resumed["samples"] == whole["samples"] and resumed["pool"] == whole["pool"]
    assert resumed["manifest"]["diagnostics"] == whole["manifest"]["diagnostics"]
    assert "2 of" in caplog.text and "chunks read from" in caplog.text
    assert not default_work_dir(tmp_path / "resumed").exists()


def test_a_work_folder_of_another_model_is_recomputed_and_said_so(tmp_path, pool_files, monkeypatch, caplog) -> None:
    import cola.feature_cache as feature_cache

    monkeypatch.setattr(feature_cache, "CHUNK_CANDIDATES", 3)
    _kill_after_two_chunks(tmp_path, pool_files, "out", monkeypatch)
    other = tiny_llama()
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1.0
    with caplog.at_level("INFO", logger="cola.feature_cache"):
        found = _curate_resumable(tmp_path, pool_files, "out", model=other)
    assert "the 2 cached chunks in" in caplog.text and "were made with another model: recomputing" in caplog.text
    assert "feature_cache_hits" not in found["manifest"]["timings"]


def test_chunks_with_sketches_join_to_one_extraction() -> None:
    from cola.activations import extract_features
    from cola.feature_cache import chunked_extraction

    model = tiny_llama()
    ids = [np.arange(1, 2 + n % 7) for n in range(10)]
    calls = []

    def compute(chunk):
        calls.append(len(chunk))
        return extract_features(model, chunk, layers=None, projection_dim=8, seed=0, sketch_dim=3,
                                channel_maxima=True, quiet=True)

    joined, hits, chunks = chunked_extraction(None, "", ids, {}, compute, chunk_size=4)
    whole = compute(ids)
    assert (hits, chunks, calls[:3]) == (0, 3, [4, 4, 2])
    assert joined.features.shape == (10, 8) and joined.sketches.values.shape == whole.sketches.values.shape
    assert joined.sketches.maxima.shape == whole.sketches.maxima.shape and joined.sketches.sites == whole.sketches.sites
    assert joined.stats.real_tokens == whole.stats.real_tokens
    # each chunk batches alone: equal to one pass over all to float tolerance, not necessarily bit for bit
    assert np.allclose(joined.features, whole.features, atol=1e-5)
    assert np.allclose(joined.sketches.values, whole.sketches.values, rtol=1e-4, atol=1e-5)


def test_compile_is_decided_once_per_pool_and_keyed(tmp_path, pool_files, monkeypatch) -> None:
    """`auto` compiles for the whole pool or none of it (here every chunk alone is under the threshold, the pool
    is not), and compiled and eager features never serve each other from the cache."""
    import cola.activations as activations
    import cola.feature_cache as feature_cache
    import cola.stages.select as select

    monkeypatch.setattr(feature_cache, "CHUNK_CANDIDATES", 3)
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # the switch is under test, not inductor
    real, modes = select.embed_pool, []
    monkeypatch.setattr(select, "embed_pool", lambda model, ids, config, **k: modes.append(config.compile) or real(
        model, ids, config, **k))
    cache = tmp_path / "cache"

    def run(name: str, mode: str, method: str = "activations") -> dict:
        modes.clear()
        return curate(tmp_path, pool_files, name, cache, stage1=False,
                      selection=SelectionConfig(method=method, compile=mode))

    eager = run("eager", "off")
    chunks, extraction = len(modes), eager["manifest"]["diagnostics"]["extraction"]
    assert chunks > 1 and set(modes) == {"off"} and extraction["compiled"] is False
    monkeypatch.setattr(activations, "COMPILE_MIN_TOKENS", extraction["real_tokens"])  # the pool's, not a chunk's
    auto = run("auto", "auto")
    assert modes == ["on"] * chunks  # none read from the eager entries
    assert "feature_cache_hits" not in auto["manifest"]["timings"]
    assert auto["manifest"]["diagnostics"]["extraction"]["compiled"] is True
    assert len(list(cache.iterdir())) == 2 * chunks
    again = run("again", "off")
    assert modes == [] and again["manifest"]["timings"]["feature_cache_hits"] == chunks
    assert again["samples"] == eager["samples"]
    moments = run("moments", "on", method="moments")  # sketches' hooks sit inside the blocks: eager whatever asked
    assert set(modes) == {"off"} and moments["manifest"]["diagnostics"]["extraction"]["compiled"] is False


def test_the_steps_called_one_by_one_make_the_run_and_leave_no_work_folder(tmp_path, pool_files) -> None:
    """load, process, embed, plan_mixture, select, export by hand: the set `run` writes, and the work folder
    beside the output is gone after export (or once a pool nobody exports is dropped)."""
    import gc

    from cola.output_dir import default_work_dir

    def curator(out: Path) -> COLA:
        return COLA(model=tiny_llama(), tokenizer=byte_tokenizer(), output_dir=out, quiet=True, stage1=False,
                    available_datasets=[str(p) for p in pool_files.values()], candidates_per_source=8,
                    selection=ACTIVATIONS)

    whole = _curate_resumable(tmp_path, pool_files, "whole")
    cola = curator(tmp_path / "steps")
    config = cola.config(num_samples=4, sequence_length=32)
    inputs = cola.load(config, cola.output_dir)
    timings = dict(inputs.timings)
    pool = cola.process(inputs.sources, config, timings, references=inputs.references)
    assert default_work_dir(cola.output_dir).is_dir()  # the spilled candidates
    features = cola.embed(pool, config, timings)
    plan = cola.plan_mixture(pool, features, inputs, config, timings)
    selection = cola.select(pool, features, plan, config)
    samples = cola.export(pool, plan, selection, config, timings)
    assert len(samples) == 4 and not default_work_dir(cola.output_dir).exists()
    assert (tmp_path / "steps" / SAMPLES_FILE).read_bytes() == whole["samples"]
    manifest = json.loads((tmp_path / "steps" / MANIFEST_FILE).read_text())
    assert list(manifest["timings"]) == list(whole["manifest"]["timings"])  # every step's seconds, in order
    assert manifest["diagnostics"] == whole["manifest"]["diagnostics"]

    explore = curator(tmp_path / "explore")
    pool = explore.process(inputs.sources, config, {})
    assert len(pool.candidates) > 4 and default_work_dir(explore.output_dir).is_dir()
    del pool
    gc.collect()
    assert not default_work_dir(explore.output_dir).exists()


def test_a_feature_cache_that_is_a_file_is_refused_before_any_work(tmp_path) -> None:
    from cola.errors import ColaError

    (tmp_path / "cache").write_text("x")
    with pytest.raises(ColaError, match="^feature_cache .*cache is a file, not a folder$"):
        COLA(model=tiny_llama(), tokenizer=byte_tokenizer(), output_dir=tmp_path / "out",
             feature_cache=tmp_path / "cache")
