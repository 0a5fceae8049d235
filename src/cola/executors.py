"""Where the model's pass over the pool runs: `local`, in this process, or `ray`, on a Ray cluster.

The pool is extracted in chunks, each kept in the feature store as it finishes (`cola.feature_cache`). With
`ray`, Ray Data makes a dataset of the chunks the store does not hold yet (each read from the pool's disk
store and put in Ray's object store on its own, a block per chunk: no shared filesystem), and an actor pool (one
model replica per GPU, or per CPU worker with its share of the CPUs as torch threads) runs `map_batches` over
it, one chunk per call, with the function the local path runs (`cola.stages.select.embed_pool`). Each chunk's
extraction comes back to this process, which keeps it in the store as it arrives (a killed run keeps the
finished chunks); then the local path reads every chunk from the store. Chunks, batching and function are those
of a local run, so the features agree with it to the dtype's tolerance (bit for bit where a worker runs the
same number of threads) and Stage 1, Stage 3 and export are unchanged.

A worker loads its replica from the run's ModelConfig where it has one (`cola curate` always does), else the
model object is shipped through Ray's object store (the Python API). Either way its weights' digest must be the
one this process keys the store with, or the run stops (a node with another checkpoint at the same path).

A multi-node run needs cola and the model (a local path present on every node, or hub access) on each node:
`ray start --head` on one, `ray start --address=HEAD_IP:6379` on the others, then
`cola curate --executor ray --ray_address auto ...` on the head (README, "Distributed extraction on Ray").
"""

from __future__ import annotations

import builtins
import logging
import pickle
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cola.config import CurateConfig, ModelConfig, SelectionConfig
from cola.errors import ColaError
from cola.progress import bars_disabled

if TYPE_CHECKING:
    from cola.feature_cache import Fill

log = logging.getLogger(__name__)

RAY_HINT = "pip install 'cola[ray]'"
CONNECT_TIMEOUT_S = 10.0  # how long a --ray_address may take to answer before the run stops


def require_ray() -> None:
    """Import Ray Data, or raise a one-line ColaError with the install hint."""
    try:
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ColaError(f"--executor ray needs Ray Data, which is not installed ({exc}): {RAY_HINT}") from None


def check_executor(config: CurateConfig, *, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Before any model work: the executor can run. For `ray`, Ray Data is installed and a `ray_address`
    answers within `timeout_s` seconds. Raises ColaError (one line) otherwise."""
    if config.executor != "ray":
        return
    require_ray()
    if config.ray_address is not None:
        check_address(config.ray_address, timeout_s=timeout_s)


def check_address(address: str, *, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """The Ray head at `address` (auto, HOST:PORT or ray://HOST:PORT) accepts a TCP connection within
    `timeout_s` seconds (`ray.init` itself waits minutes on an address nobody answers). Raises ColaError."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise ColaError(f"--ray_address {address}: the Ray head at {host}:{port} does not answer within "
                        f"{timeout_s:g} s ({why}): start it with `ray start --head --port={port}`, or check the "
                        "address and the firewall") from None


def _host_port(address: str) -> tuple[str, int]:
    """(host, port) of a Ray address; `auto` is resolved as Ray resolves it ($RAY_ADDRESS, else the cluster
    `ray start` made on this node)."""
    given = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die
        except ImportError:  # a Ray without this helper: only HOST:PORT is checked here
            raise ColaError("--ray_address auto cannot be resolved by this Ray: give HOST:PORT") from None
        try:
            address = canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as exc:
            raise ColaError(f"--ray_address auto: no Ray cluster found on this node ({str(exc).splitlines()[0]}): "
                            "start one with `ray start --head`, or give HOST:PORT") from None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ColaError(f"--ray_address {given!r} is neither auto nor HOST:PORT (e.g. 10.0.0.1:6379)")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class WorkerPlan:
    """How the actor pool is laid out on the cluster."""

    workers: int   # model replicas (actors)
    cpus: int      # CPUs each reserves: its torch threads
    gpus: int      # GPUs each reserves (0 or 1)


def plan_workers(nodes: Sequence[Mapping[str, float]], requested: int | None, *, use_gpu: bool,
                 chunks: int | None = None) -> WorkerPlan:
    """The actor pool for a cluster whose live nodes hold `nodes` resources (Ray's names: "CPU", "GPU").

    With GPUs (`use_gpu` and the cluster has some): one replica per GPU, or `requested`, each with one GPU and
    one CPU. Without: one replica per node, or `requested`, each reserving the cluster's CPUs divided among them
    (at most one node's fewest, so that every replica fits on a node) and running that many torch threads.
    Given `chunks`, at most that many replicas (none without a chunk), the CPUs shared among those.
    Raises ColaError where `requested` replicas do not fit."""
    gpus = int(sum(n.get("GPU", 0) for n in nodes))
    cpus = int(sum(n.get("CPU", 0) for n in nodes))
    if use_gpu and gpus:
        workers = requested or gpus
        if workers > gpus:
            raise ColaError(f"--ray_workers {workers} is more than the cluster's {gpus} GPUs: one replica per GPU")
        return WorkerPlan(workers=min(workers, chunks or workers), cpus=1, gpus=1)
    workers = requested or len(nodes)
    if workers > cpus:
        raise ColaError(f"--ray_workers {workers} is more than the cluster's {cpus} CPUs: at most one replica "
                        "per CPU")
    workers = min(workers, chunks or workers)
    fewest = min(int(n.get("CPU", 0)) for n in nodes if n.get("CPU", 0) >= 1)
    return WorkerPlan(workers=workers, cpus=max(1, min(fewest, cpus // workers)), gpus=0)


@contextmanager
def ray_cluster(address: str | None, *, quiet: bool) -> Iterator[None]:
    """Ray joined for the block: the cluster this process already joined (a notebook's, a test's), else the
    one at `address`, else a local one started here and stopped after. Raises ColaError where it cannot join."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address is not None:
        check_address(address)
    print_before = builtins.print
    try:
        ray.init(address=address or "local", logging_level=logging.WARNING, log_to_driver=not quiet,
                 **({} if address else {"include_dashboard": False}))
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        hint = ("" if address is None else ": is it the head's GCS port, and does this node hold the cluster's auth "
                "token (Ray's default: ~/.ray/auth_token copied from the head, RAY_AUTH_MODE=token)?")
        raise ColaError(f"cannot join Ray at {address or 'a local cluster'} ({str(exc).splitlines()[0]}){hint}") \
            from None
    data_log = logging.getLogger("ray.data")  # its INFO lines (each dataset's start, plan and end) are progress
    data_level = data_log.level
    if quiet:
        data_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        data_log.setLevel(data_level)
        ray.shutdown()
        builtins.print = print_before  # ray.shutdown leaves its own print (ray.experimental.tqdm_ray) installed


def ray_actor_id() -> str:
    """The Ray actor this code runs in ("" outside one)."""
    import ray

    return ray.get_runtime_context().get_actor_id() or ""


class ChunkEmbedder:
    """A Ray Data actor: its model replica loaded once, then `embed_pool` on one chunk per call."""

    def __init__(self, *, source: ModelConfig | list[Any], selection: SelectionConfig, pad_token_id: int,
                 sketches: bool, maxima: bool, threads: int) -> None:
        import torch

        from cola.feature_cache import model_digest

        torch.set_num_threads(threads)
        if isinstance(source, ModelConfig):
            self.model, _ = source.load(quiet=True)
        else:  # [the model's reference in the object store]: a list, so that Ray hands the reference over as is
            import ray

            self.model = ray.get(source[0])
        self.digest = model_digest(self.model)
        self.worker = ray_actor_id()
        self.options = {"pad_token_id": pad_token_id, "sketches": sketches, "maxima": maxima, "quiet": True}
        self.selection = selection

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows (index, ids: the chunk's token ids end to end, offsets: where each candidate starts, and the
        end) -> rows (index, digest of this replica's weights, worker: its actor id, extraction: the pickled
        `Extraction`)."""
        from cola.stages.select import embed_pool

        entries = []
        for flat, offsets in zip(batch["ids"], batch["offsets"]):
            chunk = np.split(np.array(flat), np.asarray(offsets)[1:-1])  # a copy: Ray hands read-only views
            entries.append(pickle.dumps(embed_pool(self.model, chunk, self.selection, **self.options)))
        return {"index": np.asarray(batch["index"]), "digest": np.asarray([self.digest] * len(entries)),
                "worker": np.asarray([self.worker] * len(entries)), "extraction": np.asarray(entries, dtype=object)}


def chunk_table(index: int, chunk: Sequence[Sequence[int]]) -> Any:
    """One chunk as the one-row Arrow table `ChunkEmbedder` reads: index, ids (the chunk's token ids end to end,
    int32) and offsets (where each candidate starts, and the end)."""
    import pyarrow as pa

    flat = np.concatenate([np.asarray(ids, dtype=np.int32) for ids in chunk])
    offsets = np.cumsum([0, *(len(ids) for ids in chunk)], dtype=np.int64)
    return pa.table({"index": pa.array([index], pa.int64()), "ids": pa.array([flat], pa.list_(pa.int32())),
                     "offsets": pa.array([offsets], pa.list_(pa.int64()))})


def _next_row(rows: Iterator[dict[str, Any]]) -> dict[str, Any] | None:
    """The next finished row, None at the end; a worker's failure (its model not loading on a node, a chunk's
    error) is a ColaError with the failure's own last line, not Ray's wrapped traceback."""
    import ray.exceptions

    try:
        return next(rows, None)
    except ray.exceptions.RayError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ColaError(f"a Ray worker failed: {lines[-1] if lines else type(exc).__name__}") from None


def executor_fill(config: CurateConfig, *, model: Any, model_config: ModelConfig | None, model_key: str,
                  pad_token_id: int, sketches: bool, maxima: bool, quiet: bool,
                  timings: dict[str, float] | None = None) -> Fill | None:
    """What `cola.feature_cache.chunked_extraction` hands the chunks it lacks to: None for the local executor
    (it computes them itself), else a function computing them on Ray (`ray_fill`, its wall time to `timings`)."""
    if config.executor == "local":
        return None
    return lambda chunks: ray_fill(chunks, model=model, model_config=model_config, model_key=model_key,
                                   selection=config.selection, pad_token_id=pad_token_id, sketches=sketches,
                                   maxima=maxima, address=config.ray_address, workers=config.ray_workers,
                                   quiet=quiet, timings=timings)


def ray_fill(chunks: Sequence[Sequence[Sequence[int]]], *, model: Any, model_config: ModelConfig | None,
             model_key: str, selection: SelectionConfig, pad_token_id: int, sketches: bool, maxima: bool,
             address: str | None, workers: int | None, quiet: bool,
             timings: dict[str, float] | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (index into `chunks`, its `Extraction`) as the actor pool finishes each chunk (in any order); the
    wall time from the first replica starting to the last chunk is added to `timings["stage3_ray_extract_wall"]`
    (the chunks' own seconds are each replica's, summed over replicas working at once).
    Replicas load from `model_config`, else `model` goes through the object store; `model_key` is the digest
    (`cola.feature_cache.model_digest`) every replica's weights must have. Raises ColaError where Ray cannot be
    joined, the replicas do not fit, or a replica's weights differ."""
    require_ray()
    import ray
    import ray.data

    device = model_config.device if model_config is not None else next(model.parameters()).device.type
    with ray_cluster(address, quiet=quiet):
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        plan = plan_workers(nodes, workers, use_gpu=device != "cpu", chunks=len(chunks))
        log.info("ray: %d chunk(s) on %d replica(s) (%d CPU, %d GPU each) over %d node(s)", len(chunks),
                 plan.workers, plan.cpus, plan.gpus, len(nodes))
        ray.data.DataContext.get_current().enable_progress_bars = not bars_disabled(quiet)  # as cola's own bars
        # each chunk read (from the pool's disk store) and put in the object store on its own, a block per chunk:
        # this process holds one chunk at a time, Ray spills blocks to disk past its store's size, and workers on
        # other nodes fetch theirs from this node (no shared filesystem needed)
        blocks = [ray.put(chunk_table(i, chunk)) for i, chunk in enumerate(chunks)]
        source = model_config if model_config is not None else [ray.put(model)]
        done = ray.data.from_arrow_refs(blocks).map_batches(
            ChunkEmbedder, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=plan.workers),
            num_cpus=plan.cpus, num_gpus=plan.gpus,
            fn_constructor_kwargs={"source": source, "selection": selection, "pad_token_id": pad_token_id,
                                   "sketches": sketches, "maxima": maxima, "threads": plan.cpus})
        start, replicas, tokens = time.perf_counter(), set(), 0
        rows_done = iter(done.iter_rows())
        while (row := _next_row(rows_done)) is not None:
            if row["digest"] != model_key:
                raise ColaError("a Ray worker loaded other weights than this process (digest "
                                f"{str(row['digest'])[:12]} against {model_key[:12]}): give every node the same "
                                "model files")
            replicas.add(str(row["worker"]))
            found = pickle.loads(row["extraction"])
            tokens += found.stats.real_tokens
            yield int(row["index"]), found
        seconds = time.perf_counter() - start
        if timings is not None:
            timings["stage3_ray_extract_wall"] = timings.get("stage3_ray_extract_wall", 0.0) + seconds
        log.info("ray: %d chunk(s), %d tokens, extracted in %.1f s by %d replica(s): %.0f useful tokens/s, model "
                 "loads included", len(chunks), tokens, seconds, len(replicas), tokens / max(seconds, 1e-9))
