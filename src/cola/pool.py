"""What Stage 2 hands on (`Pool`) and what the model's pass over it gives (`PoolFeatures`), between the steps of
`cola.api.COLA`. A pool of 10^5-10^6 candidates stays on disk (`cola.spill`): its columns are read a batch at a
time, so holding a `Pool` costs about what one batch does."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cola.data.sources import Source
from cola.spill import RowStore, int_lists

if TYPE_CHECKING:
    from cola.activations import ExtractionStats
    from cola.moments import MomentSketches
    from cola.stages.process import TokenizedText


@dataclass(frozen=True)
class Pool:
    """What Stage 2 hands on: the candidates Stage 3 picks from, and Stage 1's probes made the same way.

    `candidates`: a `RowStore` of Stage 2's samples (on disk), or any sequence of them (Stage 2 off, tests)."""

    sources: tuple[Source, ...]
    candidates: Sequence[TokenizedText]            # exact token ids, each with its source's index
    report: dict[str, Any]                         # the manifest's `stage2` entry
    probes: dict[str, tuple[TokenizedText, ...]]   # probed capability -> its reference set, formatted and cut

    @property
    def source_indices(self) -> np.ndarray:
        """(N,) int64: each candidate's index into `sources`."""
        if isinstance(self.candidates, RowStore):
            return self.candidates.column_array("source", lambda array: array.to_numpy(), np.int64)
        return np.fromiter((c.source for c in self.candidates), np.int64, len(self.candidates))

    @property
    def names(self) -> list[str]:
        """Each candidate's dataset name, row by row."""
        names = [s.spec.name for s in self.sources]
        return [names[i] for i in self.source_indices.tolist()]

    @property
    def token_ids(self) -> Sequence[np.ndarray]:
        """Each candidate's (T,) token ids, read as they are needed."""
        if isinstance(self.candidates, RowStore):
            return self.candidates.column("input_ids", int_lists)
        return [c.input_ids for c in self.candidates]

    @property
    def texts(self) -> Sequence[str]:
        """Each candidate's text, read as they are needed."""
        if isinstance(self.candidates, RowStore):
            return self.candidates.column("text")
        return [c.text for c in self.candidates]

    @property
    def num_tokens(self) -> np.ndarray:
        """(N,) int64: each candidate's length in tokens."""
        if isinstance(self.candidates, RowStore):
            import pyarrow.compute as pc

            return self.candidates.column_array("input_ids", lambda array: pc.list_value_length(array), np.int64)
        return np.fromiter((len(c.input_ids) for c in self.candidates), np.int64, len(self.candidates))

    def take(self, indices: Iterable[int]) -> list[TokenizedText]:
        """The candidates at `indices`, in that order."""
        if isinstance(self.candidates, RowStore):
            return self.candidates.take(indices)
        return [self.candidates[int(i)] for i in indices]


@dataclass(frozen=True)
class PoolFeatures:
    """The activation features Stage 1 scores and Stage 3 clusters; None where no step needs them."""

    features: np.ndarray | None        # (N, P) one row per pool candidate
    stats: ExtractionStats | None      # what extracting the pool's features cost
    probes: dict[str, np.ndarray]      # probed capability -> (M, P) features of its probes (Stage 1 only)
    sketches: MomentSketches | None = None  # the pool's moment sketches (moments selection only)
