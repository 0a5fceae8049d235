"""A disk cache of activation extractions, so runs over the same pool with the same model run the model once.

An experiment curates many sets from one pool per seed (COLA's and cola's Stage 3 methods at several sizes); each
would otherwise run the model over the whole pool again. An entry is keyed by a digest of the model's weights
(`model_digest`), of the exact token ids, and of every setting the extraction reads; it holds the arrays
exactly as computed (`np.savez`, no compression), so a run that reads the cache writes byte-identical outputs.
Entries are written to a temporary file and renamed, so a killed run leaves no half-written entry.
An entry with moment sketches also serves a run that needs only the features, and one with per-channel maxima a
run that needs only the sketches (all are read off the same pass, so `outlier_coverage`, `moments` and
`activations` runs over one pool embed it once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cola.activations import Extraction, ExtractionStats
from cola.atomic import atomic_path
from cola.moments import MomentSketches, Site

log = logging.getLogger(__name__)

_SAMPLE = 4096  # values read from each end of every parameter for the model digest


def model_digest(model: torch.nn.Module) -> str:
    """A hex digest of the model's parameters: names, shapes, dtypes and the first and last 4,096 values of each
    (reading every weight of a large model would cost more than it saves)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            flat = parameter.detach().reshape(-1)
            ends = torch.cat([flat[:_SAMPLE], flat[-_SAMPLE:]]).to("cpu", torch.float32)
            digest.update(f"{name}:{tuple(parameter.shape)}:{parameter.dtype};".encode())
            digest.update(ends.numpy().tobytes())
    return digest.hexdigest()


PROBE_DIR = "probe-features"  # under cola's cache folder: Stage 1's reference probes, cached on every run


def probe_cache_dir() -> Path:
    """Where Stage 1's reference probes' features are kept when a run names no feature cache: cola's cache
    folder (`cola.gguf_models.cache_dir`, $COLA_CACHE_DIR) / probe-features. The probes are the same texts run
    after run (64 per capability by default): on a 16-sample run over 300 candidates (SmolLM2, one thread) their
    extraction took 78 s of 229 s, and 0.01 s when run again."""
    from cola.gguf_models import cache_dir

    return cache_dir() / PROBE_DIR


def tokens_digest(token_ids: Sequence[Sequence[int]]) -> str:
    digest = hashlib.sha256()
    for ids in token_ids:
        array = np.asarray(ids, dtype=np.int64)
        digest.update(len(array).to_bytes(8, "little"))
        digest.update(array.tobytes())
    return digest.hexdigest()


def cached_extraction(cache_dir: str | os.PathLike[str] | None, model_key: str, token_ids: Sequence[Sequence[int]],
                      settings: Mapping[str, Any], compute: Callable[[], Extraction], *,
                      also: Sequence[Mapping[str, Any]] = (), best_effort: bool = False) -> tuple[Extraction, bool]:
    """(`compute()`, False), or (the entry it stored before under the same model, token ids and settings, True);
    cache_dir None = no cache. A hit's stats are the computing run's, its seconds included. `best_effort` (a
    cache nobody asked for): an entry that cannot be read or written is a logged warning, not an error.

    `also`: other settings whose entry serves as well (looked up in order after `settings`; e.g. an extraction
    with moment sketches serves one without: the same pass computes the same features, the sketches are dropped
    by the caller). A miss computes and stores under `settings`.
    """
    if cache_dir is None:
        return compute(), False
    tokens = tokens_digest(token_ids)
    for candidate in (settings, *also):
        path = entry_path(cache_dir, model_key, tokens, candidate)
        if path.is_file():
            try:
                found = _read(path)
            except (OSError, ValueError, KeyError) as exc:
                if not best_effort:
                    raise
                log.warning("activations: feature cache entry %s unreadable (%s): computing again", path, exc)
                break
            log.info("activations: read from the feature cache (%s)", path.name)
            return found, True
    found = compute()
    try:
        _write(entry_path(cache_dir, model_key, tokens, settings), found)  # atomic_path makes the folder
    except OSError as exc:
        if not best_effort:
            raise
        log.warning("activations: cannot keep features in %s (%s); set COLA_CACHE_DIR to a writable folder",
                    cache_dir, exc)
    return found, False


def entry_path(cache_dir: str | os.PathLike[str], model_key: str, tokens: str, settings: Mapping[str, Any]) -> Path:
    """The file that holds (or would hold) the extraction of the token ids digested as `tokens`
    (`tokens_digest`) by model `model_key` with `settings`."""
    key = hashlib.sha256(json.dumps({"model": model_key, "tokens": tokens,
                                     "settings": dict(settings)}, sort_keys=True, default=str).encode()).hexdigest()
    return Path(cache_dir) / f"{key[:32]}.npz"


def _write(path: Path, found: Extraction) -> None:
    arrays: dict[str, Any] = {"features": found.features, "stats": np.asarray(json.dumps(asdict(found.stats)))}
    if found.sketches is not None:
        sketches = found.sketches
        arrays.update(sketch_values=sketches.values, sketch_tokens=sketches.tokens,
                      sketch_meta=np.asarray(json.dumps({"sketch_dim": sketches.sketch_dim,
                                                         "sites": [asdict(s) for s in sketches.sites]})))
        if sketches.maxima is not None:
            arrays["sketch_maxima"] = sketches.maxima
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        np.savez(stream, **arrays)


def _read(path: Path) -> Extraction:
    with np.load(path, allow_pickle=False) as data:
        stats = ExtractionStats(**json.loads(str(data["stats"])))
        sketches = None
        if "sketch_values" in data:
            meta = json.loads(str(data["sketch_meta"]))
            sites = tuple(Site(layer=s["layer"], modules=tuple(s["modules"]), width=s["width"]) for s in meta["sites"])
            sketches = MomentSketches(values=data["sketch_values"], tokens=data["sketch_tokens"], sites=sites,
                                      sketch_dim=meta["sketch_dim"],
                                      maxima=data["sketch_maxima"] if "sketch_maxima" in data else None)
        return Extraction(features=data["features"], stats=stats, sketches=sketches)
