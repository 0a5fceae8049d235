"""The feature cache: a second run over the same pool reads the model's features instead of recomputing them,
and writes byte-identical outputs; any change of model, pool or setting misses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
