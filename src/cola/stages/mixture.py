"""Stage 1 wiring: probe each target capability with a reference set, score every pool dataset, allocate quotas.

The pool's activation features (the same ones Stage 3 clusters) and token ids are scored against each
capability's reference set with `cola.stages.domain`; the deployment's capability weights then turn the
coverage table into per-dataset sample quotas, and Stage 3 picks medoids within each quota. Quotas (rather
than re-weighting candidates) keep Stage 3's k-means unchanged and make the mixture exact and auditable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from cola.config import CurateConfig
from cola.data.catalog import CATALOG
from cola.data.embedded import EMBEDDED_CAPABILITIES
from cola.data.sources import load_source, parse_source
from cola.errors import ColaError
from cola.stages.domain import (DatasetStats, allocate_samples, capability_weights, coverage_table,
                                unigram_distribution)

log = logging.getLogger(__name__)

# Offline-first default probes: the embedded pool where it has the capability, else the catalog's dataset.
CATALOG_REFERENCES = {"general": "wikitext", "math": "gsm8k", "code": "mbpp", "commonsense": "commonsense_qa"}


def reference_spec(capability: str, config: CurateConfig) -> str:
    """The source spec probing `capability`: the user's --reference, else a default; unknown → error."""
    given = dict(config.references)
    if capability in given:
        return given[capability]
    if capability in EMBEDDED_CAPABILITIES:
        return f"embedded-{capability}"
    if capability in CATALOG_REFERENCES:
        return CATALOG_REFERENCES[capability]
    known = sorted({*EMBEDDED_CAPABILITIES, *CATALOG_REFERENCES, *given})
    raise ColaError(f"capability {capability!r} has no reference set: known ones are {', '.join(known)}; "
                    f"give one with --reference {capability}=PATH_OR_DATASET")


def reference_samples(capability: str, tokenizer: Any, config: CurateConfig) -> list[Any]:
    """The reference probes for one capability (text + token ids), formatted as Stage 2 formats them, cut to length."""
    from cola.stages.process import format_records, source_formatter, truncate_to_length

    spec = parse_source(reference_spec(capability, config))
    if spec.name in CATALOG and spec.kind == "hub":
        log.info("reference for %s: hub dataset %s (needs network)", capability, spec.location)
    source = load_source(spec, max_candidates=config.reference_size, seed=config.selection.seed)
    _, formatter = source_formatter(source, None)
    texts = [f.text for _, f in format_records(source, formatter) if f.text] or list(source.texts)
    return truncate_to_length(tokenizer, texts, config.sequence_length)


def plan_mixture(features: np.ndarray, token_ids: Sequence[np.ndarray], sources: Sequence[str],
                 targets: Sequence[str], config: CurateConfig, *, embed: Any, tokenizer: Any,
                 texts: Sequence[str] = (), quiet: bool = False) -> tuple[dict[str, int], dict[str, Any]]:
    """Score each pool dataset per capability and turn the deployment's weights into sample quotas.

    `embed(token_ids) -> (N, P) features` must be the same projection as `features` (same model, seed).
    With `config.semantic_embedder`, semantic similarity uses sentence embeddings of `texts` instead.
    Returns (quotas by dataset name, report for the manifest).
    """
    from cola.embedder import load_embedder

    vocab = len(tokenizer)
    names = np.asarray(sources)
    sentence = load_embedder(config.semantic_embedder, quiet=quiet) if config.semantic_embedder else None
    pool_embeddings = sentence(texts) if sentence is not None else None  # (N, E)
    datasets = {name: DatasetStats(
        features[names == name], unigram_distribution([token_ids[i] for i in np.flatnonzero(names == name)], vocab),
        None if pool_embeddings is None else pool_embeddings[names == name]) for name in dict.fromkeys(sources)}
    references = {}
    for capability in targets:
        probes = reference_samples(capability, tokenizer, config)
        ids = [p.input_ids for p in probes]
        references[capability] = DatasetStats(embed(ids), unigram_distribution(ids, vocab),
                                              None if sentence is None else sentence([p.text for p in probes]))
    table = coverage_table(datasets, references, config.domain)
    weights = capability_weights(targets, config.deployment_type, config.targeted_capability,
                                 dict(config.capability_weights))
    available = {name: int((names == name).sum()) for name in datasets}
    quotas = allocate_samples(table, weights, config.num_samples, available, config.deployment_type)
    log.info("stage 1 coverage (score per capability):\n%s", format_table(table, quotas))
    report = {"references": {c: reference_spec(c, config) for c in targets}, "capability_weights": weights,
              "semantic_space": config.semantic_embedder or "model activations",
              "coverage": table, "quotas": quotas}
    return quotas, report


def format_table(table: dict[str, dict[str, dict[str, float]]], quotas: dict[str, int]) -> str:
    """The dataset x capability score table as aligned text, with each dataset's quota."""
    caps = list(next(iter(table.values())))
    width = max(len(n) for n in table) + 2
    lines = ["".ljust(width) + "".join(c[:12].rjust(13) for c in caps) + "quota".rjust(8)]
    for name, row in table.items():
        lines.append(name.ljust(width) + "".join(f"{row[c]['score']:13.3f}" for c in caps)
                     + f"{quotas.get(name, 0):8d}")
    return "\n".join(lines)
