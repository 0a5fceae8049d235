"""Write a curation's outputs atomically: the seed's JSON, an HF dataset, parquet files and a manifest.

Everything is first written into a staging folder inside the output directory, then each artefact is
moved into place with an atomic rename, the manifest last: a crash leaves the previous outputs or none,
never half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cola.errors import ColaError

SAMPLES_FILE = "calibration_samples.json"
DATASET_DIR = "calibration_dataset"
DATASET_PARQUET = "calibration_dataset.parquet"
POOL_PARQUET = "pool.parquet"
MANIFEST_FILE = "manifest.json"
LIBRARIES = ("cola", "torch", "transformers", "datasets", "scikit-learn", "numpy", "scipy", "safetensors",
             "gguf", "pyarrow")


def ensure_writable(output_dir: Path) -> None:
    """Fail early, before any heavy work, when the output directory cannot be created or written."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".cola-write-test-"):
            pass
    except OSError as exc:
        raise ColaError(f"output directory {output_dir} is not writable: {exc.strerror or exc}") from exc


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape the result."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def cpu_model() -> str:
    """The CPU's `model name` from /proc/cpuinfo (Linux), else platform.processor(), else 'unknown'.

    Results depend on it: bf16 matmuls run about 2,500 GFLOP/s on Intel Xeons with AMX and about 430 on AMD EPYC,
    and the two take different kernels, so floats differ in their last bits between them."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run_environment() -> dict[str, Any]:
    """What shapes a result besides its inputs: library versions, the CPU model, and torch's CPU thread count (bf16
    sums run in a thread-dependent order: GPTQ W3 g64 of SmolLM2 on one calibration set gave wikitext-2 perplexity
    178.9 at 1 thread and 164.8 at 2)."""
    import torch

    return {"libraries": library_versions(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads()}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """Enough to tell later whether a calibration set was made with the same tokenizer."""
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()
    return {"name_or_path": getattr(tokenizer, "name_or_path", ""), "vocab_size": len(vocab),
            "vocab_sha256": digest}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")


def _token_table(input_ids: Sequence[np.ndarray]) -> pa.Table:
    """input_ids and an all-ones attention_mask (no padding) as list columns, built from flat arrays."""
    lengths = np.array([len(x) for x in input_ids], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat = np.concatenate([np.asarray(x, dtype=np.int32) for x in input_ids])  # (sum T,)
    ids = pa.ListArray.from_arrays(offsets, pa.array(flat))
    mask = pa.ListArray.from_arrays(offsets, pa.array(np.ones(len(flat), dtype=np.int8)))
    return pa.table({"input_ids": ids, "attention_mask": mask})


def _tokens_digest(input_ids: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for ids in input_ids:
        digest.update(np.int64(len(ids)).tobytes())
        digest.update(np.asarray(ids, dtype=np.int32).tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def staged_outputs(output_dir: Path) -> Iterator[Path]:
    """Yield a staging folder; on success move its entries into `output_dir` (manifest last), else drop it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".cola-staging-", dir=output_dir))
    try:
        yield staging
        entries = sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST_FILE)
        for entry in entries:
            target = output_dir / entry.name
            if entry.is_dir() and target.exists():  # a directory cannot replace a non-empty one in one rename
                trash = Path(tempfile.mkdtemp(prefix=".cola-old-", dir=output_dir))
                os.replace(target, trash / entry.name)
                os.replace(entry, target)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_outputs(output_dir: Path, *, samples: list[dict[str, Any]], input_ids: Sequence[np.ndarray],
                  pool: dict[str, list[Any]], manifest: dict[str, Any]) -> dict[str, str]:
    """Write all artefacts atomically and return {file name: sha256}; the manifest records the same hashes."""
    from datasets import Dataset

    with staged_outputs(output_dir) as staging:
        _write_json(staging / SAMPLES_FILE, samples)
        table = _token_table(input_ids)
        pq.write_table(table, staging / DATASET_PARQUET)
        # An explicit fingerprint keeps save_to_disk byte-identical between identical runs.
        Dataset(table, fingerprint=_tokens_digest(input_ids)[:16]).save_to_disk(str(staging / DATASET_DIR))
        pq.write_table(pa.table(pool), staging / POOL_PARQUET)
        hashes = {p.relative_to(staging).as_posix(): file_sha256(p)
                  for p in sorted(staging.rglob("*")) if p.is_file()}
        _write_json(staging / MANIFEST_FILE, {**manifest, "outputs": hashes})
    return hashes
