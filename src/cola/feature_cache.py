"""A disk cache of activation extractions, so runs over the same pool with the same model run the model once.

An experiment curates many sets from one pool per seed (COLA's and cola's Stage 3 methods at several sizes); each
would otherwise run the model over the whole pool again. An entry is keyed by a digest of the model's weights
(`model_digest`), of the exact token ids, and of every setting the extraction reads; it holds the arrays
exactly as computed (`np.savez`, no compression), so a run that reads the cache writes byte-identical outputs.
Entries are written to a temporary file and renamed, so a killed run leaves no half-written entry.
A pool is extracted and kept in chunks of CHUNK_CANDIDATES candidates (`chunked_extraction`), each its own entry:
a killed run, run again, computes only the chunks it had not finished, and every run (cached or not, resumed or
not) batches within the same chunks, so all of them write the same bytes.
An entry with moment sketches also serves a run that needs only the features, and one with per-channel maxima a
run that needs only the sketches (all are read off the same pass, so `outlier_coverage`, `moments` and
`activations` runs over one pool embed it once).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cola.activations import Extraction, ExtractionStats
from cola.atomic import atomic_path
from cola.moments import MomentSketches, Site
from cola.spill import Subset

if TYPE_CHECKING:
    from cola.config import SelectionConfig

log = logging.getLogger(__name__)
# another executor's pass over chunks of token ids: yields (index into them, extraction) as each is computed
Fill = Callable[[Sequence[Sequence[Sequence[int]]]], Iterable[tuple[int, Extraction]]]

_SAMPLE = 4096  # values read from each end of every parameter for the model digest


def model_digest(model: torch.nn.Module) -> str:
    """A hex digest of the model's parameters: names, shapes, dtypes and the first and last 4,096 values of each
    (reading every weight of a large model would cost more than it saves). A model sharded with offloaded
    weights (`load_model(device_map=...)`, weights on cpu or disk) has each offloaded module's weights loaded
    for the read, so it digests as the same model loaded whole."""
    from accelerate.utils import align_module_device

    digest = hashlib.sha256()
    seen: set[int] = set()  # a tied weight once, as named_parameters gives it
    with torch.no_grad():
        for prefix, module in model.named_modules():
            with align_module_device(module, torch.device("cpu")):
                for name, parameter in module.named_parameters(recurse=False):
                    if id(parameter) in seen:
                        continue
                    seen.add(id(parameter))
                    flat = parameter.detach().reshape(-1)
                    ends = torch.cat([flat[:_SAMPLE], flat[-_SAMPLE:]]).to("cpu", torch.float32)
                    digest.update(f"{prefix + '.' if prefix else ''}{name}:{tuple(parameter.shape)}:"
                                  f"{parameter.dtype};".encode())
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
                      also: Sequence[Mapping[str, Any]] = (), best_effort: bool = False,
                      say_hit: bool = True) -> tuple[Extraction, bool]:
    """(`compute()`, False), or (the entry it stored before under the same model, token ids and settings, True);
    cache_dir None = no cache. A hit's stats are the computing run's, its seconds included. `best_effort` (a
    cache nobody asked for): an entry that cannot be read or written is a logged warning, not an error.

    `also`: other settings whose entry serves as well (looked up in order after `settings`; e.g. an extraction
    with moment sketches serves one without: the same pass computes the same features, the sketches are dropped
    by the caller). A miss computes and stores under `settings`. A hit is logged unless `say_hit` is false (an
    entry another executor has just made).
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
            if say_hit:  # debug: a run's summary line counts the chunks read
                log.debug("activations: read %s from %s", path.name, path.parent)
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


CHUNK_CANDIDATES = 4096  # candidates per feature-cache entry: a killed extraction loses at most this much work
OWNER_FILE = "owner.json"  # in a run's own work cache: the model and settings its entries were made with


def chunked_extraction(cache_dir: str | os.PathLike[str] | None, model_key: str,
                       token_ids: Sequence[Sequence[int]], settings: Mapping[str, Any],
                       compute: Callable[[Sequence[Sequence[int]]], Extraction], *,
                       also: Sequence[Mapping[str, Any]] = (), best_effort: bool = False,
                       narrow: Callable[[Extraction], Extraction] | None = None,
                       on_hit: Callable[[Sequence[Sequence[int]]], None] | None = None,
                       chunk_size: int | None = None, fill: Fill | None = None) -> tuple[Extraction, int, int]:
    """The extraction of `token_ids`, made of consecutive chunks of `chunk_size` candidates, each read from
    `cache_dir` (`cached_extraction`, with `also` and `best_effort`) or computed by `compute(chunk)` and kept
    there; (the joined extraction, chunks read from the cache, chunks). `narrow` trims an entry read from the
    cache to what was asked (an entry of a richer setting in `also`); `on_hit(chunk)` is called for each chunk
    read (for progress). Without a cache the chunks are computed all the same, so the result never depends on
    whether, or how much of it, came from a cache. `chunk_size` None: CHUNK_CANDIDATES.

    `fill` (another executor, `cola.executors`; needs `cache_dir`): first handed the chunks that no entry holds
    yet, it yields (index into them, extraction) as each is computed elsewhere, and each is kept here as it
    comes (a killed run keeps what was finished); the chunks are then read as entries, and those it filled do
    not count as read from the cache.
    """
    chunk_size = chunk_size or CHUNK_CANDIDATES
    chunks = _Chunks(token_ids, chunk_size)  # each read when it is needed: a pool on disk stays there
    filled = _fill(cache_dir, model_key, chunks, settings, also, fill) if fill is not None else set()
    parts, hits, features = [], 0, None
    for index in range(len(chunks)):
        chunk = chunks[index]
        found, hit = cached_extraction(cache_dir, model_key, chunk, settings, lambda chunk=chunk: compute(chunk),
                                       also=also, best_effort=best_effort, say_hit=index not in filled)
        if hit:
            hits += index not in filled
            found = narrow(found) if narrow is not None else found
            if on_hit is not None:
                on_hit(chunk)
        if features is None:
            features = feature_array(len(token_ids), found.features.shape[1], mapped=len(chunks) > 1)
        features[index * chunk_size:index * chunk_size + len(chunk)] = found.features
        parts.append(dataclasses.replace(found, features=found.features[:0]))  # its rows are in `features` now
    joined = join_extractions(parts)
    return dataclasses.replace(joined, features=features), hits, len(parts)


class _Chunks(Sequence[list[Sequence[int]]]):
    """Consecutive chunks of `chunk_size` candidates of a sequence of token ids, each sliced when asked for."""

    def __init__(self, token_ids: Sequence[Sequence[int]], chunk_size: int) -> None:
        self.token_ids, self.chunk_size = token_ids, chunk_size

    def __len__(self) -> int:
        return (len(self.token_ids) + self.chunk_size - 1) // self.chunk_size

    def __getitem__(self, index: int) -> list[Sequence[int]]:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        return list(self.token_ids[index * self.chunk_size:(index + 1) * self.chunk_size])


def feature_array(rows: int, width: int, *, mapped: bool) -> np.ndarray:
    """A (rows, width) float32 array to fill: with `mapped`, memory-mapped to a file in the temporary folder
    (unlinked at once, so it goes when the array does), so the OS can page a big pool's features out."""
    if not mapped:
        return np.zeros((rows, width), dtype=np.float32)
    with tempfile.NamedTemporaryFile(prefix="cola-features-", suffix=".npy") as handle:
        return np.lib.format.open_memmap(handle.name, mode="w+", dtype=np.float32, shape=(rows, width))


def _fill(cache_dir: str | os.PathLike[str] | None, model_key: str, chunks: Sequence[Sequence[Sequence[int]]],
          settings: Mapping[str, Any], also: Sequence[Mapping[str, Any]], fill: Fill) -> set[int]:
    """Have `fill` compute the chunks no entry holds (under `settings` or `also`; a chunk repeated in `chunks`
    once), each kept under `settings` as it arrives; the indices (into `chunks`) of those it computed."""
    if cache_dir is None:
        raise ValueError("an executor other than this process fills a feature cache: give cache_dir")
    digests = [tokens_digest(chunk) for chunk in chunks]
    first = {digest: i for i, digest in reversed(list(enumerate(digests)))}
    missing = sorted(i for digest, i in first.items() if not any(
        entry_path(cache_dir, model_key, digest, s).is_file() for s in (settings, *also)))
    for position, found in (fill(Subset(chunks, np.asarray(missing))) if missing else ()):  # read when handed on
        _write(entry_path(cache_dir, model_key, digests[missing[position]], settings), found)
    computed = {digests[i] for i in missing}
    return {i for i, digest in enumerate(digests) if digest in computed}


def pool_extraction(cache: str | os.PathLike[str] | None, model_key: str,
                    token_ids: Sequence[Sequence[int]], selection: SelectionConfig, pad: int,
                    compute: Callable[[Sequence[Sequence[int]]], Extraction], *, sketches: bool, maxima: bool,
                    work: bool, best_effort: bool,
                    on_hit: Callable[[Sequence[Sequence[int]]], None] | None = None,
                    fill: Fill | None = None) -> tuple[Extraction, int]:
    """(the extraction of `token_ids` with `selection`'s settings, how many of its chunks came from folder
    `cache`), made chunk by chunk (`chunked_extraction`) and keyed by every setting extraction reads; an entry
    holding more than asked for (sketches, maxima: the same pass) serves, trimmed. `cache` None: computed,
    nothing kept; `work`: `cache` is a run's own work folder (`claim_work_cache`); `fill`: the chunks not
    kept yet are computed by another executor (`chunked_extraction`).

    `selection.compile` is keyed as given: the caller resolves "auto" to the "on" or "off" that runs (once for
    the whole pool, `cola.activations.use_compile`), since compiled and eager blocks round differently and can
    pick different medoids. "off" adds nothing to the key, so eager entries kept before the mode was keyed
    still serve."""
    s = selection
    base = {"layers": s.layers, "pooling": s.pooling, "projection_dim": s.projection_dim, "seed": s.seed,
            "batch_size": s.batch_size, "batch_tokens": s.batch_tokens, "pad": pad,
            **({"compile": s.compile} if s.compile != "off" else {})}
    # keys from lean to rich; maxima are named only when read, so entries written before them keep their keys
    levels = [{**base, "sketch_dim": None}, {**base, "sketch_dim": s.sketch_dim},
              {**base, "sketch_dim": s.sketch_dim, "channel_maxima": True}]
    asked = 2 if maxima else 1 if sketches else 0
    if work and cache is not None:
        claim_work_cache(Path(cache), model_key, levels[asked])

    def narrow(found: Extraction) -> Extraction:
        if asked == 0:
            return dataclasses.replace(found, sketches=None)
        if asked == 1 and found.sketches is not None:
            return dataclasses.replace(found, sketches=dataclasses.replace(found.sketches, maxima=None))
        return found

    found, hits, chunks = chunked_extraction(cache, model_key, token_ids, levels[asked], compute,
                                             also=levels[asked + 1:], narrow=narrow, on_hit=on_hit,
                                             best_effort=best_effort, fill=fill)
    if hits:
        log.info("activations: %d of %d chunks read from %s, %d computed", hits, chunks, cache, chunks - hits)
    return found, hits


def join_extractions(parts: Sequence[Extraction]) -> Extraction:
    """One extraction of the candidates of `parts` in order: features, sketches (and maxima) stacked, the stats
    summed. Raises ValueError when the parts disagree on what they hold (sketches in some, sites, dimensions)."""
    if len(parts) == 1:
        return parts[0]
    stats = ExtractionStats(real_tokens=sum(p.stats.real_tokens for p in parts),
                            computed_tokens=sum(p.stats.computed_tokens for p in parts),
                            seconds=sum(p.stats.seconds for p in parts), batches=sum(p.stats.batches for p in parts),
                            compiled=any(p.stats.compiled for p in parts))
    sketches = [p.sketches for p in parts]
    joined = None
    if any(s is not None for s in sketches):
        first = sketches[0]
        if any(s is None or s.sites != first.sites or s.sketch_dim != first.sketch_dim
               or (s.maxima is None) != (first.maxima is None) for s in sketches):
            raise ValueError("the chunks of one extraction hold different sketches")
        joined = MomentSketches(values=np.concatenate([s.values for s in sketches]),
                                tokens=np.concatenate([s.tokens for s in sketches]), sites=first.sites,
                                sketch_dim=first.sketch_dim,
                                maxima=None if first.maxima is None else np.concatenate([s.maxima for s in sketches]))
    return Extraction(features=np.concatenate([p.features for p in parts]), stats=stats, sketches=joined)


def claim_work_cache(cache_dir: Path, model_key: str, settings: Mapping[str, Any]) -> None:
    """Make `cache_dir` (a run's own work cache, not a shared feature cache) this run's: where its entries were
    made by another model or other settings, they are removed (they could never be read again) and one log line
    says so; then the owner (model, settings) is written."""
    owner = {"model": model_key, "settings": json.loads(json.dumps(dict(settings), default=str))}
    path = Path(cache_dir) / OWNER_FILE
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        found = None
    if found == owner:
        return
    stale = sorted(Path(cache_dir).glob("*.npz")) if Path(cache_dir).is_dir() else []
    if stale:
        before = found if isinstance(found, dict) else {}
        was, now = before.get("settings") if isinstance(before.get("settings"), dict) else {}, owner["settings"]
        settings = sorted(key for key in {*was, *now} if was.get(key) != now.get(key))
        why = [*(["another model"] if before.get("model") != model_key else []),
               *([f"other settings ({', '.join(settings)})"] if settings else [])]
        log.info("activations: the %d cached chunk%s in %s %s made with %s: recomputing", len(stale),
                 "s" * (len(stale) != 1), cache_dir, "were" if len(stale) != 1 else "was",
                 " and ".join(why) or "another model or other settings")
        for entry in stale:
            entry.unlink(missing_ok=True)
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(owner, sort_keys=True))


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
