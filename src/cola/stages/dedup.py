"""Stage 2's duplicate state on disk: exact and MinHash near-duplicate dedup whose memory does not grow with the pool.

A pool is filtered chunk by chunk (`cola.stages.filters.QualityFilters`), and a document must be compared with
every earlier one, so dedup keeps state across chunks. Held in Python sets and datasketch's MinHashLSH, that
state took 650 MB at 100k short documents (benchmarks/pool_scale.py); here it lives in one SQLite file
(the standard library's sqlite3, an 8 MB page cache): the normalised texts' digests, each kept document's
MinHash signature, and its LSH band keys under an index. Only one chunk's signatures are ever in memory.

The decisions are those of an in-memory MinHash LSH (Broder 1997; datasketch's MinHash for the permutations):
a document is a near duplicate when the Jaccard estimate of its signature with an earlier KEPT document's is
at least the threshold, among the documents sharing at least one LSH band with it (`lsh_bands` rows per
band). A band's key is a 64-bit mix of its rows' hash values, so two different bands collide with chance
2^-64 per pair; a collision only adds a candidate, which the Jaccard estimate then judges.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from cola.errors import ColaError
from cola.spill import scratch_folder

_QUERY_BATCH = 900  # parameters per `IN (...)` query (SQLite's oldest limit is 999)
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def normalise(text: str) -> str:
    """Case-folded, whitespace runs collapsed to one space, stripped: what both dedup steps compare."""
    return " ".join(text.casefold().split())


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(N, bands) int64 key of each signature's LSH bands: band b is hash values [b*rows, (b+1)*rows), mixed
    with b into 64 bits (a splitmix-style finaliser), so equal bands give equal keys and different bands
    almost never do. signatures: (N, num_perm) uint64."""
    keys = np.empty((len(signatures), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 products wrap, as the mix intends
        for band in range(bands):
            mixed = np.full(len(signatures), np.uint64(band + 1) * _MIX[0], dtype=np.uint64)
            for value in signatures[:, band * rows:(band + 1) * rows].T:
                mixed = (mixed ^ value) * _MIX[1]
                mixed ^= mixed >> np.uint64(31)
            keys[:, band] = mixed * _MIX[2]
    return keys.view(np.int64)


class DuplicateIndex:
    """The exact and near-duplicate state of one Stage 2 pass, in a SQLite file at `path` (None: a temporary
    folder, removed by `close`). Feed chunks in pool order; each call decides its chunk's documents against
    all earlier documents and the chunk's own earlier ones, and remembers what it kept.

    threshold: near-duplicate Jaccard in (0, 1]; num_perm: MinHash permutations; seed: their seed; bands and
    rows: the LSH banding (`cola.stages.filters.lsh_bands`); shingle: a text's shingle set.
    """

    def __init__(self, path: Path | None, *, threshold: float, num_perm: int, seed: int, bands: int, rows: int,
                 shingle: Callable[[str], set[bytes]]) -> None:
        self._temporary = scratch_folder("cola-dedup-") if path is None else None
        self.path = self._temporary / "dedup.sqlite" if self._temporary is not None else Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a killed run's state would mark every document a duplicate
        self.threshold, self.num_perm, self.seed, self.bands, self.rows = threshold, num_perm, seed, bands, rows
        self.shingle = shingle
        self._db = sqlite3.connect(self.path)
        self._db.executescript("""
            PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -8000; PRAGMA temp_store = FILE;
            CREATE TABLE exact (digest BLOB PRIMARY KEY) WITHOUT ROWID;
            CREATE TABLE signature (id INTEGER PRIMARY KEY, value BLOB NOT NULL);
            CREATE TABLE band (key INTEGER NOT NULL, id INTEGER NOT NULL);
            CREATE INDEX band_key ON band (key);
        """)
        self._kept = 0  # near-duplicate ids handed out so far

    def exact_mask(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) keep mask: False for a text equal, after `normalise`, to any text fed before it."""
        keep = np.ones(len(texts), dtype=bool)
        cursor = self._db.cursor()
        for index, text in enumerate(texts):
            digest = hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=16).digest()
            cursor.execute("INSERT OR IGNORE INTO exact VALUES (?)", (digest,))
            keep[index] = cursor.rowcount == 1
        self._db.commit()
        return keep

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        """(N, num_perm) uint64 MinHash signatures of the texts' shingle sets (datasketch's MinHash)."""
        try:
            from datasketch import MinHash
        except ImportError as exc:
            raise ColaError("near-duplicate filtering needs datasketch: pip install 'datasketch>=1.6'") from exc
        found = [m.hashvalues for m in MinHash.generator((self.shingle(t) for t in texts), num_perm=self.num_perm,
                                                         seed=self.seed)]
        return np.stack(found).astype(np.uint64) if found else np.empty((0, self.num_perm), dtype=np.uint64)

    def near_mask(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) keep mask: False for a text whose Jaccard estimate with an earlier kept text (of this call or
        an earlier one) is at least `threshold`; the texts kept are remembered."""
        signatures = self.signatures(texts)                            # (N, P)
        keys = band_keys(signatures, self.bands, self.rows)            # (N, bands)
        earlier: dict[int, list[int]] = defaultdict(list)              # band key -> kept ids of earlier calls
        unique = np.unique(keys.reshape(-1)).tolist()
        for start in range(0, len(unique), _QUERY_BATCH):
            batch = unique[start:start + _QUERY_BATCH]
            query = f"SELECT key, id FROM band WHERE key IN ({','.join('?' * len(batch))})"
            for key, other in self._db.execute(query, batch):
                earlier[key].append(other)
        stored = self._stored_signatures({i for ids in earlier.values() for i in ids})
        here: dict[int, list[int]] = defaultdict(list)                 # band key -> rows of this call kept
        keep = np.zeros(len(texts), dtype=bool)
        minimum = self.threshold * self.num_perm                       # equal hash values needed
        for row, signature in enumerate(signatures):
            row_keys = keys[row].tolist()
            others = [stored[i] for key in row_keys for i in earlier.get(key, ())]
            others += [signatures[r] for key in row_keys for r in here.get(key, ())]
            if any(np.count_nonzero(other == signature) >= minimum for other in others):
                continue
            keep[row] = True
            for key in row_keys:
                here[key].append(row)
        self._remember(signatures[keep], keys[keep])
        return keep

    def _stored_signatures(self, ids: set[int]) -> dict[int, np.ndarray]:
        found: dict[int, np.ndarray] = {}
        ordered = sorted(ids)
        for start in range(0, len(ordered), _QUERY_BATCH):
            batch = ordered[start:start + _QUERY_BATCH]
            query = f"SELECT id, value FROM signature WHERE id IN ({','.join('?' * len(batch))})"
            for other, value in self._db.execute(query, batch):
                found[other] = np.frombuffer(value, dtype=np.uint64)
        return found

    def _remember(self, signatures: np.ndarray, keys: np.ndarray) -> None:
        ids = range(self._kept, self._kept + len(signatures))
        self._db.executemany("INSERT INTO signature VALUES (?, ?)",
                             ((i, s.tobytes()) for i, s in zip(ids, signatures)))
        self._db.executemany("INSERT INTO band VALUES (?, ?)",
                             ((key, i) for i, row in zip(ids, keys.tolist()) for key in row))
        self._db.commit()
        self._kept += len(signatures)

    def close(self) -> None:
        """Close the database; a temporary one is removed, one at a given path is left for inspection."""
        self._db.close()
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)

    def __enter__(self) -> DuplicateIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
