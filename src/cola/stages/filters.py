"""Stage 2 quality filters: drop duplicate, out-of-range, junk and implausible documents before packing.

Applied in a fixed order, each to what the previous ones kept: exact duplicates, near duplicates (MinHash
LSH over character 5-grams; Broder 1997), token-length bounds, character heuristics (symbol, digit and
repeated-line shares; in the spirit of Gopher's rules, Rae et al. 2021), and optionally the
highest-perplexity fraction under the model being compressed (Ji et al., ICLR 2025). Every mask function is
pure (texts or numbers in, a (N,) bool "keep" mask out); only `sequence_perplexities` runs a model.

Near-duplicate shingles are character 5-grams for every text, chosen by benchmarks/near_duplicates.py
(threshold 0.8, 128 permutations). Word 5-shingles see a Chinese, Japanese or Thai paragraph as one or a
few "words": they removed 4 of 316 planted one-edit near duplicates of 35 such paragraphs (the issue's
246-character pair differing by 清晨 -> 早上 survived), and 1,700 of 1,800 one-word edits of c4 and gsm8k
texts. Character 5-grams removed 316 of 316 and 1,798 of 1,800, and none of the 635 distinct originals
(3-grams: all of them, 7-grams: 311 and 1,796). Words for spaced text with characters only where spaces are
rare would catch the unspaced copies too but keep the English recall of words (1,702 of 1,800). In real pools
with nothing planted, 5-grams remove what words keep only among near-identical records: 12 of 2,000 MATH
problem + solution texts (templated variants with other numbers), 12 of 474 MBPP tasks (one word apart:
"even" / "odd" parity, the same code) and 25 of them in SmolLM2's chat template, and none of 1,000 c4
documents or 2,000 gsm8k or Alpaca records (3-grams remove 32 MATH and 19 MBPP records). They take 2-2.5 times
as long as word shingles: 15 s against 6 s for those 11,948 texts (7.8 MB) on an AMD EPYC.

Character-heuristic defaults were read off real data (../shared/data): the share of symbol characters
(neither letter, digit nor whitespace, over all characters) has a 99th percentile of 0.38 on MATH
problem+solution texts (LaTeX: `\\`, `$`, `{}`, `^`), 0.32 on MBPP and 0.23 on HumanEval Python, 0.10 on C4.
A bound of 0.25 would drop 30% of MATH and 4% of MBPP, so the default is 0.5: it keeps 99.95% of MATH and all
code, and still drops symbol runs (separators, ASCII art, mangled markup), which sit near 1.0. The digit
share bound 0.5 keeps all of GSM8K (max 0.32) and MATH (max 0.39). The repeated-line bound 0.3 (Gopher)
keeps all of MBPP, HumanEval, GSM8K and C4 but drops 1.8% of MATH (Asymptote figures repeated in problem
and solution).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cola.config import FilterConfig
from cola.errors import ColaError
from cola.models import context_length, input_device
from cola.progress import progress_bar
from cola.stages.dedup import DuplicateIndex, normalise

if TYPE_CHECKING:  # torch is imported where a model runs
    import torch

log = logging.getLogger(__name__)

SHINGLE_WORDS = 5
SHINGLE_CHARS = 5  # near-duplicate shingles: character 5-grams for every text (see the module docstring)
LSH_RECALL = 0.95  # chance that a pair exactly at the threshold becomes an LSH candidate
_SYMBOL = re.compile(r"[^\w\s]|_")  # \w is Unicode letters, digits and "_"; "_" is a symbol here
_DIGIT = re.compile(r"\d")


@dataclass(frozen=True, eq=False)  # holds an array: compare fields, not reports
class FilterReport:
    """What the filters kept (ascending indices) and how many each removed, in the order applied."""

    kept: np.ndarray            # (K,) int64
    removed: dict[str, int]     # each counted on what survived the filters before it
    before: int
    after: int


def exact_duplicate_mask(texts: Sequence[str]) -> np.ndarray:
    """(N,) keep mask: False for a text equal to an earlier one after case and whitespace normalisation."""
    with DuplicateIndex(None, threshold=1.0, num_perm=2, seed=0, bands=2, rows=1, shingle=character_shingles) as index:
        return index.exact_mask(texts)


def word_shingles(text: str, size: int = SHINGLE_WORDS) -> set[bytes]:
    """Contiguous `size`-word windows of the normalised text; a shorter text is one shingle of all its words."""
    words = normalise(text).split(" ")
    return {" ".join(words[i : i + size]).encode("utf-8") for i in range(max(len(words) - size + 1, 1))}


def character_shingles(text: str, size: int = SHINGLE_CHARS) -> set[bytes]:
    """Contiguous `size`-character windows of the normalised text; a shorter text is one shingle of itself."""
    chars = normalise(text)
    return {chars[i : i + size].encode("utf-8") for i in range(max(len(chars) - size + 1, 1))}


def lsh_bands(threshold: float, num_perm: int, recall: float = LSH_RECALL) -> tuple[int, int]:
    """(bands, rows): the most selective banding whose candidate chance at `threshold` is >= `recall`.

    A pair of Jaccard J is a candidate with probability 1 - (1 - J^rows)^bands. Tuned for recall, because
    false candidates cost one Jaccard estimate each and are rejected by it (datasketch's default balance
    gives ~40% at the threshold). At least 2 bands, which datasketch requires; rows=1 if nothing reaches it.
    """
    for rows in range(num_perm // 2, 1, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def near_duplicate_mask(texts: Sequence[str], *, threshold: float, num_perm: int, seed: int,
                        shingle: Callable[[str], set[bytes]] = character_shingles) -> np.ndarray:
    """(N,) keep mask: False for a text whose estimated shingle Jaccard with an earlier KEPT text >= threshold.

    `shingle` maps a text to its shingle set: character 5-grams by default, `word_shingles` for the former
    word 5-shingles (benchmarks/near_duplicates.py compares them).
    MinHash (Broder, "On the resemblance and containment of documents", 1997) sketches each shingle set;
    LSH banding proposes candidates, and the sketch's Jaccard estimate confirms them. Texts are visited in
    order, so the first of each near-duplicate group is kept; seeded permutations and a fixed hash (SHA-1)
    make the result the same in every run. The LSH index is `cola.stages.dedup.DuplicateIndex` (on disk).
    """
    bands, rows = lsh_bands(threshold, num_perm)
    with DuplicateIndex(None, threshold=threshold, num_perm=num_perm, seed=seed, bands=bands, rows=rows,
                        shingle=shingle) as index:
        return index.near_mask(texts)


def character_heuristics_mask(texts: Sequence[str], *, max_symbol_ratio: float, max_digit_ratio: float,
                              max_repeated_line_ratio: float) -> np.ndarray:
    """(N,) keep mask: each share at most its bound; an empty text has shares 0.

    symbol share: characters that are neither letters, digits nor whitespace, over all characters;
    digit share: digits over all characters; repeated-line share: non-empty (stripped) lines equal to an
    earlier line, over non-empty lines.
    """
    keep = np.ones(len(texts), dtype=bool)
    for index, text in enumerate(texts):
        chars = max(len(text), 1)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        repeated = (len(lines) - len(set(lines))) / max(len(lines), 1)
        keep[index] = (len(_SYMBOL.findall(text)) / chars <= max_symbol_ratio
                       and len(_DIGIT.findall(text)) / chars <= max_digit_ratio
                       and repeated <= max_repeated_line_ratio)
    return keep


def length_mask(token_counts: Sequence[int], *, min_tokens: int, max_tokens: int | None) -> np.ndarray:
    """(N,) keep mask: min_tokens <= count <= max_tokens (both inclusive; max None = no bound)."""
    counts = np.asarray(token_counts, dtype=np.int64).reshape(-1)
    keep = counts >= min_tokens
    return keep if max_tokens is None else keep & (counts <= max_tokens)


def sequence_perplexities(model: torch.nn.Module, token_ids: Sequence[Sequence[int]], *, batch_size: int = 16,
                          batch_tokens: int = 4096, pad_token_id: int = 0, quiet: bool = False) -> np.ndarray:
    """(N,) float64 perplexity of each sequence: exp(mean next-token NLL over its real tokens).

    The ids are scored as given, so they must be what the model reads: Stage 2's documents start with
    exactly one BOS where the model's format has one (`cola.tokenization.encode_texts`), and none is added.
    Sequences are batched by length with right padding (a causal model's real tokens never see the pads,
    and positions stay 0..n-1), so a batched score equals the score of the sequence alone. NLL is taken in
    float32 on each row's real positions only. A sequence longer than the model's context is scored on its
    first context-length tokens; one shorter than 2 tokens has no next-token loss and gets nan. Memory:
    a batch's logits take batch_tokens x vocabulary x dtype bytes (805 MB for SmolLM2 at 4096 in float32).
    """
    import torch

    from cola.batching import length_batches, pad_batch

    limit = context_length(model) or math.inf
    lengths = [int(min(len(ids), limit)) for ids in token_ids]
    perplexities = np.full(len(token_ids), np.nan, dtype=np.float64)
    scored = [i for i, n in enumerate(lengths) if n >= 2]
    batches = length_batches([lengths[i] for i in scored], max_batch_size=batch_size, max_batch_tokens=batch_tokens)
    device = input_device(model)
    bar = progress_bar(total=sum(lengths[i] for i in scored), quiet=quiet, desc="perplexity", unit="tok",
                       unit_scale=True)
    try:
        with torch.inference_mode():
            for batch in batches:
                rows = [scored[j] for j in batch]
                ids, mask = pad_batch([token_ids[i][: lengths[i]] for i in rows], pad_token_id)  # (B, T) each
                ids, mask = ids.to(device), mask.to(device)
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
                for row, index in enumerate(rows):  # one row at a time: only real positions go to float32
                    n = lengths[index]
                    nll = torch.nn.functional.cross_entropy(logits[row, : n - 1].float(), ids[row, 1:n])
                    perplexities[index] = math.exp(nll.item())
                bar.update(sum(lengths[i] for i in rows))
    finally:
        bar.close()
    return perplexities


def perplexity_mask(perplexities: np.ndarray, drop_fraction: float) -> np.ndarray:
    """(N,) keep mask dropping the ceil(drop_fraction * N) highest perplexities (Ji et al., ICLR 2025).

    nan (unscorable) is always kept; ties drop the later index first, so earlier documents win.
    """
    if not 0 <= drop_fraction < 1:
        raise ColaError(f"perplexity drop fraction must be in [0, 1), got {drop_fraction!r}")
    ppl = np.asarray(perplexities, dtype=np.float64).reshape(-1)  # (N,)
    keep, finite = np.ones(len(ppl), dtype=bool), np.flatnonzero(~np.isnan(ppl))
    # round first: 0.1 * 30 is 3.0000000000000004 in floats, whose ceiling would drop one too many
    count = min(math.ceil(round(drop_fraction * len(ppl), 9)), len(finite))
    order = finite[np.lexsort((-finite, -ppl[finite]))]  # highest perplexity first; ties: later index first
    keep[order[:count]] = False
    return keep


FILTER_CHUNK = 4096  # documents per chunk: the filters hold one chunk's texts and signatures in memory


class QualityFilters:
    """Stage 2's filters before the perplexity filter (exact dedup, near dedup, length, characters), fed the
    pool chunk by chunk in order; the dedup state lives on disk (`cola.stages.dedup.DuplicateIndex`, in
    `folder` or a temporary folder), so memory stays that of one chunk however large the pool. Feeding the
    pool in chunks decides every document as one call over the whole pool would: each filter sees what the
    filters before it kept, and dedup compares with every earlier document."""

    def __init__(self, config: FilterConfig, *, folder: Path | None = None) -> None:
        self.config = config
        bands, rows = lsh_bands(config.near_duplicate_threshold, config.num_perm)
        self._index = DuplicateIndex(None if folder is None else Path(folder) / "dedup.sqlite",
                                     threshold=config.near_duplicate_threshold, num_perm=config.num_perm,
                                     seed=config.seed, bands=bands, rows=rows, shingle=character_shingles)
        names = (["exact_duplicate"] if config.dedup_exact else []) + (["near_duplicate"] if config.dedup_near else [])
        self.removed: dict[str, int] = dict.fromkeys([*names, "length", "character"], 0)  # in the order applied
        self.before = 0

    def feed(self, texts: Sequence[str], token_counts: Sequence[int]) -> np.ndarray:
        """(K,) int64 positions in this chunk of the documents every filter kept, ascending."""
        c = self.config
        steps: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = []
        if c.dedup_exact:
            steps.append(("exact_duplicate", lambda idx: self._index.exact_mask([texts[i] for i in idx])))
        if c.dedup_near:
            steps.append(("near_duplicate", lambda idx: self._index.near_mask([texts[i] for i in idx])))
        steps.append(("length", lambda idx: length_mask([token_counts[i] for i in idx], min_tokens=c.min_tokens,
                                                        max_tokens=c.max_tokens)))
        steps.append(("character", lambda idx: character_heuristics_mask(
            [texts[i] for i in idx], max_symbol_ratio=c.max_symbol_ratio, max_digit_ratio=c.max_digit_ratio,
            max_repeated_line_ratio=c.max_repeated_line_ratio)))
        kept = np.arange(len(texts), dtype=np.int64)
        for name, step in steps:
            keep = step(kept)
            self.removed[name] += int(len(kept) - keep.sum())
            kept = kept[keep]
        self.before += len(texts)
        return kept

    def close(self) -> None:
        self._index.close()

    def __enter__(self) -> QualityFilters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def apply_quality_filters(texts: Sequence[str], token_ids: Sequence[Sequence[int]], config: FilterConfig, *,
                          model: torch.nn.Module | None = None, quiet: bool = False, folder: Path | None = None,
                          chunk_size: int = FILTER_CHUNK) -> FilterReport:
    """Run the enabled filters in order (exact dedup, near dedup, length, characters, perplexity), the first
    four chunk by chunk (`QualityFilters`, its dedup state in `folder`, else a temporary folder)."""
    if len(texts) != len(token_ids):
        raise ColaError(f"texts and token_ids differ in length: {len(texts)} vs {len(token_ids)}")
    if config.perplexity_drop_fraction > 0 and model is None:
        raise ColaError("perplexity_drop_fraction > 0 needs the model: pass model=, or set the fraction to 0")
    parts = []
    with QualityFilters(config, folder=folder) as filters:
        for start in range(0, len(texts), chunk_size):
            end = min(start + chunk_size, len(texts))
            parts.append(start + filters.feed(texts[start:end], [len(ids) for ids in token_ids[start:end]]))
    kept = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    removed = dict(filters.removed)
    if config.perplexity_drop_fraction > 0:
        keep = perplexity_mask(sequence_perplexities(model, [token_ids[i] for i in kept], quiet=quiet),
                               config.perplexity_drop_fraction)
        removed["perplexity"] = int(len(kept) - keep.sum())
        kept = kept[keep]
    left = len(texts)
    for name, count in removed.items():
        left -= count
        log.info("filter %s: removed %d, %d left", name, count, left)
    return FilterReport(kept=kept, removed=removed, before=len(texts), after=len(kept))
