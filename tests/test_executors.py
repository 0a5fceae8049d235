"""--executor ray: a local 2-worker Ray cluster extracts the same features and picks the same samples as one
process (the Python API, its model shipped to the workers; the command line, each worker loading the model
itself); the bad input of the Ray settings is a one-line error before the model loads."""

from __future__ import annotations

import builtins

import importlib.util
import json
import socket
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cola.api import COLA
from cola.config import CurateConfig, SelectionConfig
from cola.errors import ColaError
from cola.executors import check_address, check_executor, plan_workers
from cola.export import SAMPLES_FILE

from tests.cli.test_curate import curate
from tests.conftest import byte_tokenizer, tiny_llama

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed: pip install 'cola[ray]' (make install-test "
                                                   "installs it)")
ACTIVATIONS = SelectionConfig(method="activations", projection_dim=8)


def _outputs(out: Path) -> tuple[list[dict], np.ndarray]:
    """(the calibration samples, the pool's (N, P) features) a run wrote."""
    return json.loads((out / SAMPLES_FILE).read_text()), np.asarray(pq.read_table(out / "pool.parquet")
                                                                    .column("feature").to_pylist())


@needs_ray
def test_two_ray_workers_give_the_features_and_picks_of_one_process(tmp_path, pool_files, monkeypatch,
                                                                     caplog) -> None:
    import cola.feature_cache as feature_cache
    import cola.stages.select as select

    monkeypatch.setattr(feature_cache, "CHUNK_CANDIDATES", 4)  # several chunks, so both workers get some
    calls: list[int] = []
    real = select.embed_pool
    monkeypatch.setattr(select, "embed_pool", lambda model, ids, *a, **k: calls.append(len(ids)) or real(
        model, ids, *a, **k))
    runs = {}
    for name, executor in (("local", {}), ("ray", {"executor": "ray", "ray_workers": 2})):
        calls.clear()
        with caplog.at_level("DEBUG", logger="cola.feature_cache"):
            COLA(model=tiny_llama(), tokenizer=byte_tokenizer(), output_dir=tmp_path / name, quiet=True,
                 available_datasets=[str(p) for p in pool_files.values()], candidates_per_source=8, stage1=False,
                 selection=ACTIVATIONS, **executor).run(num_samples=4, sequence_length=32)
        runs[name] = (*_outputs(tmp_path / name), list(calls))
    (local, local_features, local_calls), (ray, ray_features, ray_calls) = runs["local"], runs["ray"]
    assert len(local_features) > 8 and local_calls  # a pool of several chunks, computed here by the local run
    assert ray_calls == []  # the Ray run's chunks were all computed by its workers, none in this process
    assert "activations: read " not in caplog.text and "chunks read from" not in caplog.text  # nor cache hits
    np.testing.assert_allclose(ray_features, local_features, rtol=1e-5, atol=1e-6)  # float32 on both paths
    assert [s["selection_index"] for s in ray] == [s["selection_index"] for s in local]
    assert ray == local


@needs_ray
def test_the_command_line_runs_on_ray_with_workers_loading_the_model(tiny_model_dir, pool_files, tmp_path,
                                                                     monkeypatch, capfd, caplog) -> None:
    monkeypatch.setattr("cola.feature_cache.CHUNK_CANDIDATES", 8)
    args = ("--selection_method", "activations", "--projection_dim", "8")
    assert curate(tiny_model_dir, pool_files, tmp_path / "local", *args) == 0
    print_before = builtins.print
    capfd.readouterr()
    with caplog.at_level("INFO"):
        assert curate(tiny_model_dir, pool_files, tmp_path / "ray", *args, "--executor", "ray",
                      "--ray_workers", "2") == 0
    assert builtins.print is print_before  # the local Ray cola started is gone, and so is the print it installs
    said = capfd.readouterr().err + caplog.text
    assert "Starting execution of Dataset" not in said  # --quiet: Ray Data's progress lines too
    (local, local_features), (ray, ray_features) = _outputs(tmp_path / "local"), _outputs(tmp_path / "ray")
    np.testing.assert_allclose(ray_features, local_features, rtol=1e-5, atol=1e-6)
    assert ray == local
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert (manifest["settings"]["executor"], manifest["settings"]["ray_workers"]) == ("ray", 2)
    assert manifest["timings"]["stage3_ray_extract_wall"] > 0


def test_ray_settings_without_executor_ray_are_refused(tiny_model_dir, pool_files, tmp_path, capsys) -> None:
    with pytest.raises(ColaError, match=r"^--ray_address applies to --executor ray, and this run's executor is "
                                        r"'local': add --executor ray, or drop --ray_address$"):
        CurateConfig(ray_address="auto")
    with pytest.raises(ColaError, match="--ray_workers applies to --executor ray"):
        COLA(model=tiny_llama(), tokenizer=byte_tokenizer(), ray_workers=2)
    assert curate(tiny_model_dir, pool_files, tmp_path / "out", "--selection_method", "activations",
                  "--ray_address", "127.0.0.1:6379") != 0
    err = capsys.readouterr().err.strip()
    assert "--ray_address applies to --executor ray" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_executor_ray_where_the_model_never_reads_the_pool_is_refused(tiny_model_dir, pool_files, tmp_path,
                                                                       capsys) -> None:
    assert curate(tiny_model_dir, pool_files, tmp_path / "out", "--executor", "ray") != 0  # random pick, no Stage 1
    assert "--executor ray runs the model over the pool, which this run never does" in capsys.readouterr().err


def test_executor_ray_without_ray_names_the_install(tiny_model_dir, pool_files, tmp_path, capsys,
                                                     monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(ColaError, match=r"--executor ray needs Ray Data, which is not installed .*: "
                                        r"pip install 'cola\[ray\]'$"):
        check_executor(CurateConfig(executor="ray"))
    assert curate(tiny_model_dir, pool_files, tmp_path / "out", "--selection_method", "activations",
                  "--executor", "ray") != 0
    err = capsys.readouterr().err.strip()
    assert "pip install 'cola[ray]'" in err and "\n" not in err and not (tmp_path / "out").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_an_address_nobody_answers_at_is_one_line_within_the_timeout() -> None:
    port = _closed_port()
    with pytest.raises(ColaError, match=rf"^--ray_address 127.0.0.1:{port}: the Ray head at 127.0.0.1:{port} does "
                                        rf"not answer within 0.5 s \(.*\): start it with `ray start --head "
                                        rf"--port={port}`, or check the address and the firewall$"):
        check_address(f"127.0.0.1:{port}", timeout_s=0.5)
    # an unroutable address (TEST-NET-1, RFC 5737): a timeout or an unreachable network, never a wait of minutes
    with pytest.raises(ColaError, match="does not answer within 0.5 s"):
        check_address("192.0.2.1:6379", timeout_s=0.5)
    for bad in ("6379", "head-node", "host:port"):
        with pytest.raises(ColaError, match="is neither auto nor HOST:PORT"):
            check_address(bad)


@needs_ray
def test_the_command_line_refuses_an_address_nobody_answers_at_before_the_model_loads(tiny_model_dir, pool_files,
                                                                                      tmp_path, capsys) -> None:
    port = _closed_port()
    assert curate(tiny_model_dir, pool_files, tmp_path / "out", "--selection_method", "activations",
                  "--executor", "ray", "--ray_address", f"127.0.0.1:{port}") != 0
    err = capsys.readouterr().err.strip()
    assert f"the Ray head at 127.0.0.1:{port} does not answer" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_the_actor_pool_is_one_replica_per_gpu_else_per_node() -> None:
    two_cpus = [{"CPU": 2.0}]
    assert plan_workers(two_cpus, 2, use_gpu=False) == (plan := plan_workers(two_cpus, 2, use_gpu=True))
    assert (plan.workers, plan.cpus, plan.gpus) == (2, 1, 0)  # 2 cores, 2 workers: one torch thread each
    assert plan_workers(two_cpus, None, use_gpu=False).cpus == 2  # one per node, all its cores
    one = plan_workers(two_cpus, 2, use_gpu=False, chunks=1)
    assert (one.workers, one.cpus, one.gpus) == (1, 2, 0)  # one chunk: one replica, with both cores
    assert plan_workers(two_cpus, 2, use_gpu=False, chunks=5) == plan
    nodes = [{"CPU": 16.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 2.0}]
    assert (plan_workers(nodes, None, use_gpu=True).workers, plan_workers(nodes, None, use_gpu=True).gpus) == (4, 1)
    cpu_only = plan_workers(nodes, None, use_gpu=False)
    assert (cpu_only.workers, cpu_only.cpus, cpu_only.gpus) == (2, 8, 0)  # a replica fits the smaller node
    assert plan_workers(nodes, None, use_gpu=True, chunks=3).workers == 3
    with pytest.raises(ColaError, match="--ray_workers 5 is more than the cluster's 4 GPUs"):
        plan_workers(nodes, 5, use_gpu=True, chunks=1)  # a request that cannot fit is refused all the same
    with pytest.raises(ColaError, match="--ray_workers 3 is more than the cluster's 2 CPUs"):
        plan_workers(two_cpus, 3, use_gpu=False)


def test_executor_ray_with_a_device_map_is_refused(tiny_model_dir, pool_files, tmp_path, capsys) -> None:
    from cola.cli import main
    from tests.test_device_map import _curate_args

    args = [a for a in _curate_args(tiny_model_dir, pool_files, tmp_path / "out") if a not in ("--device", "cpu")]
    assert main([*args, "--selection_method", "activations", "--executor", "ray", "--device_map", "auto"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--executor ray puts one whole replica of the model on each GPU or CPU worker: drop --device_map" in err
    assert "\n" not in err and not (tmp_path / "out").exists()


@pytest.fixture()
def ray_of_two_cpus():
    """A local Ray this process has joined already: cola uses it as it is, and leaves it running."""
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'cola[ray]'")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    before = builtins.print
    yield
    ray.shutdown()
    builtins.print = before  # ray.shutdown installs its own print; other tests pickle the builtin one


@needs_ray
def test_a_worker_that_cannot_load_the_model_or_loads_another_is_one_line(tiny_model_dir, pool_files, tmp_path,
                                                                           ray_of_two_cpus) -> None:
    import ray

    from cola.config import ModelConfig

    def run(model_config: ModelConfig) -> None:
        COLA(model=tiny_llama(), tokenizer=byte_tokenizer(), available_datasets=[str(p) for p in pool_files.values()],
             output_dir=tmp_path / "out", quiet=True, candidates_per_source=8, stage1=False, selection=ACTIVATIONS,
             executor="ray", ray_workers=2, model_config=model_config).run(num_samples=4, sequence_length=32)

    with pytest.raises(ColaError, match=r"^a Ray worker failed: .*missing") as info:  # no such model on the node
        run(ModelConfig(model=str(tmp_path / "missing"), device="cpu", dtype="float32"))
    assert "\n" not in str(info.value)
    with pytest.raises(ColaError, match=r"^a Ray worker loaded other weights than this process \(digest \w{12} "
                                        r"against \w{12}\): give every node the same model files$"):
        run(ModelConfig(model=str(tiny_model_dir), device="cpu", dtype="float32"))  # 3 layers, not tiny_llama()'s 2
    assert ray.is_initialized() and not (tmp_path / "out").exists()


def test_another_executor_is_handed_only_the_chunks_the_store_lacks(tmp_path) -> None:
    """The fill contract Ray's executor meets (no Ray needed): chunks kept by an earlier run are read, a chunk
    repeated in the pool is handed over once, what the fill yields is kept and read back as computed here."""
    from cola.activations import extract_features
    from cola.feature_cache import chunked_extraction

    model = tiny_llama()
    ids = [list(range(1, 6 + i)) for i in range(10)]

    def compute(chunk):
        return extract_features(model, chunk, layers=None, projection_dim=8, seed=0, quiet=True)

    chunked_extraction(tmp_path, "model", ids[:4], {}, compute, chunk_size=4)  # an earlier run kept chunk 0
    pool = ids[:4] + ids[4:8] + ids[4:8] + ids[8:10]  # chunk 1 twice
    handed: list[list] = []

    def fill(chunks):
        handed.extend(chunks)
        for index in reversed(range(len(chunks))):  # in any order, as workers finish
            yield index, compute(chunks[index])

    found, hits, chunks = chunked_extraction(tmp_path, "model", pool, {}, compute, chunk_size=4, fill=fill)
    assert handed == [ids[4:8], ids[8:10]] and (hits, chunks) == (1, 4)
    alone, _, _ = chunked_extraction(None, "model", pool, {}, compute, chunk_size=4)
    assert np.array_equal(found.features, alone.features)  # same function, same chunks, same process: bit for bit
