"""Stage 1 (domain correspondence) on synthetic arrays with planted structure: similarities, table, allocation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cola.errors import ColaError
from cola.stages.domain import (DatasetStats, DomainConfig, _features, allocate_samples, capabilities_from_coverage,
                                capability_weights, coverage_table, parse_capability_weights, reference_balls,
                                reference_reach, semantic_similarity, token_similarity, unigram_distribution)

DIM, VOCAB = 16, 400
DOMAINS = {"c4-like": "language", "gsm8k-like": "math", "mbpp-like": "code", "arc-like": "reasoning"}


def _blobs(centers: np.ndarray, per: int, rng: np.random.Generator, scale: float = 0.3) -> np.ndarray:
    """(len(centers) * per, D) points around each center."""
    return np.concatenate([c + rng.normal(scale=scale, size=(per, centers.shape[1])) for c in centers])


def _domain(index: int, rng: np.random.Generator, samples: int) -> DatasetStats:
    """Domain `index`: a shared activation offset plus its own direction and 3 sub-clusters; shared tokens
    0-99 plus its own 75 token ids (half of all tokens each)."""
    layout = np.random.default_rng(100 + index)  # the domain's fixed geometry; `rng` draws the samples
    common = np.full(DIM, 2.0)
    centers = common + 6.0 * np.eye(DIM)[index] + layout.normal(scale=1.5, size=(3, DIM))  # (3, D)
    features = _blobs(centers, samples // 3, rng)
    own = np.arange(100 + 75 * index, 100 + 75 * (index + 1))
    docs = [np.where(rng.random(64) < 0.5, rng.integers(0, 100, 64), rng.choice(own, 64)) for _ in range(samples)]
    return DatasetStats(features=features, unigram=unigram_distribution(docs, VOCAB))


@pytest.fixture(scope="module")
def planted() -> tuple[dict[str, DatasetStats], dict[str, DatasetStats]]:
    rng = np.random.default_rng(0)
    datasets = {name: _domain(i, rng, 60) for i, name in enumerate(DOMAINS)}
    references = {cap: _domain(i, rng, 24) for i, cap in enumerate(DOMAINS.values())}
    return datasets, references


@pytest.fixture(scope="module")
def table(planted) -> dict[str, dict[str, dict[str, float]]]:
    return coverage_table(*planted, DomainConfig(reference_clusters=3, seed=0))


def _scores(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, dict[str, float]]]:
    """A hand-made table with only the scores allocation reads."""
    return {d: {c: {"score": s} for c, s in caps.items()} for d, caps in rows.items()}


# --- similarities ------------------------------------------------------------------------------------------

def test_unigram_distribution_is_smoothed_frequencies() -> None:
    p = unigram_distribution([[0, 0, 1], [0]], vocab_size=4, epsilon=0.5)
    np.testing.assert_allclose(p, np.array([3.5, 1.5, 0.5, 0.5]) / 6)
    np.testing.assert_allclose(unigram_distribution([], 5), 0.2)  # no tokens: uniform
    with pytest.raises(ColaError, match=r"token id out of range \[0, 4\).*max 4"):
        unigram_distribution([[1, 4]], vocab_size=4)
    with pytest.raises(ColaError, match="vocab_size must be at least 1"):
        unigram_distribution([[0]], vocab_size=0)


def test_token_similarity_identical_disjoint_and_between() -> None:
    p = unigram_distribution([list(range(50)) * 20], VOCAB)
    q = unigram_distribution([list(range(200, 250)) * 20], VOCAB)
    half = unigram_distribution([list(range(25, 75)) * 20], VOCAB)
    assert token_similarity(p, p) == pytest.approx(1.0)
    assert token_similarity(p, q) < 1e-3
    assert token_similarity(p, q) < token_similarity(p, half) < 1.0
    assert token_similarity(p, half) == pytest.approx(token_similarity(half, p))  # symmetric
    with pytest.raises(ColaError, match="one vocabulary size"):
        token_similarity(p, p[:-1])


def test_semantic_similarity_ranks_near_above_far() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(30, DIM)) + 3.0 * np.eye(DIM)[0]
    near = rng.normal(size=(40, DIM)) + 3.0 * np.eye(DIM)[0]
    far = rng.normal(size=(40, DIM)) + 3.0 * np.eye(DIM)[5]
    assert semantic_similarity(near, reference) > 0.9 > semantic_similarity(far, reference)
    assert semantic_similarity(reference, reference) == pytest.approx(1.0)
    assert semantic_similarity(-reference, reference) == pytest.approx(0.0)
    assert semantic_similarity(np.zeros((3, DIM)), reference) == 0.5  # undefined cosine: neutral
    with pytest.raises(ColaError, match="one width"):
        semantic_similarity(near[:, :4], reference)
    with pytest.raises(ColaError, match="non-empty"):
        semantic_similarity(near[:0], reference)


def activation_coverage(dataset: np.ndarray, reference: np.ndarray, *, clusters: int, seed: int) -> float:
    """The share of the reference's clusters the dataset reaches by coverage_table's absolute rule (the pieces
    it uses: reference_balls, reference_reach)."""
    x, r = _features(dataset, reference)
    return float(reference_reach(x, *reference_balls(r, clusters, seed))[1].mean())


def test_activation_coverage_full_none_and_half() -> None:
    rng = np.random.default_rng(2)
    centers = 20.0 * np.eye(DIM)[:4]  # 4 well-separated planted clusters
    reference = _blobs(centers, 15, rng)
    kw = dict(clusters=4, seed=0)
    assert activation_coverage(reference, reference, **kw) == 1.0
    assert activation_coverage(np.concatenate([reference, rng.normal(size=(50, DIM))]), reference, **kw) == 1.0
    assert activation_coverage(_blobs(100.0 * np.eye(DIM)[8:10], 30, rng), reference, **kw) == 0.0
    assert activation_coverage(_blobs(centers[:2], 30, rng), reference, **kw) == 0.5
    # A sample between two clusters but inside neither reaches none of them.
    assert activation_coverage((centers[0] + centers[1])[None] / 2, reference, **kw) == 0.0


def test_activation_coverage_caps_k_and_handles_singletons() -> None:
    rng = np.random.default_rng(3)
    reference = 10.0 * np.eye(DIM)[:3]  # 3 points, k=8 is capped to 3 singleton clusters
    near = reference + rng.normal(scale=0.5, size=reference.shape)  # within half the gap of each
    assert activation_coverage(near, reference, clusters=8, seed=0) == 1.0
    assert activation_coverage(near[:1], reference, clusters=8, seed=0) == pytest.approx(1 / 3)
    assert activation_coverage(reference[:1] + 100.0, reference, clusters=8, seed=0) == 0.0
    with pytest.raises(ColaError, match="one width"):
        activation_coverage(near[:, :3], reference, clusters=2, seed=0)


# --- the table --------------------------------------------------------------------------------------------

def test_coverage_table_ranks_each_domain_first_for_its_reference(table) -> None:
    assert set(table) == set(DOMAINS) and all(set(row) == set(DOMAINS.values()) for row in table.values())
    for dataset, capability in DOMAINS.items():
        ranked = sorted(table, key=lambda d: table[d][capability]["score"], reverse=True)
        assert ranked[0] == dataset, (capability, ranked)
    math = table["gsm8k-like"]["math"]
    assert math["coverage"] == 1.0 and math["token"] > 0.9
    off = table["c4-like"]["math"]
    assert off["coverage"] == 0.0 and off["token"] < 0.05  # half of every domain's tokens are shared
    assert math["score"] == pytest.approx(0.4 * math["semantic"] + 0.3 * math["token"] + 0.3 * math["coverage"])


def test_coverage_table_normalises_signal_weights_and_is_deterministic(planted, table) -> None:
    doubled = coverage_table(*planted, DomainConfig(semantic_weight=0.8, token_weight=0.6, coverage_weight=0.6,
                                                    reference_clusters=3, seed=0))
    assert doubled == table  # same weights up to scale, same seed: identical
    only_token = coverage_table(*planted, DomainConfig(semantic_weight=0, coverage_weight=0, reference_clusters=3))
    assert all(c["score"] == c["token"] for row in only_token.values() for c in row.values())
    with pytest.raises(ColaError, match="at least one dataset"):
        coverage_table({}, planted[1], DomainConfig())


def test_domain_config_validation() -> None:
    with pytest.raises(ColaError, match=r"finite and >= 0.*-0\.1"):
        DomainConfig(token_weight=-0.1)
    with pytest.raises(ColaError, match="all 0"):
        DomainConfig(semantic_weight=0, token_weight=0, coverage_weight=0)
    with pytest.raises(ColaError, match="reference_clusters must be at least 1"):
        DomainConfig(reference_clusters=0)
    with pytest.raises(TypeError):
        DomainConfig(0.5)  # keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        DomainConfig().seed = 1  # type: ignore[misc]


# --- capabilities from content ------------------------------------------------------------------------------

def test_each_planted_domain_takes_the_capability_of_its_reference(table) -> None:
    assert capabilities_from_coverage(table, list(DOMAINS)) == DOMAINS
    assert capabilities_from_coverage(table, ["gsm8k-like"]) == {"gsm8k-like": "math"}  # only the ones asked for


def test_capability_from_coverage_ties_and_errors() -> None:
    tied = _scores({"a": {"math": 0.5, "code": 0.5, "general": 0.2}, "b": {"math": 0.1, "code": 0.4, "general": 0.4}})
    assert capabilities_from_coverage(tied, ["a", "b"]) == {"a": "math", "b": "code"}  # ties: the row's first
    with pytest.raises(ColaError, match=r"unknown dataset \(not in the coverage table\) 'c'.*Valid choices: a, b"):
        capabilities_from_coverage(tied, ["c"])
    with pytest.raises(ColaError, match="scores dataset 'e' on no capability"):
        capabilities_from_coverage({"e": {}}, ["e"])


# --- capability weights -----------------------------------------------------------------------------------

def test_capability_weights_general_targeted_and_overrides() -> None:
    caps = ["language", "math", "code"]
    assert capability_weights(caps, "general", None, None) == {"language": 1.0, "math": 1.0, "code": 1.0}
    assert capability_weights(caps, "targeted", "math", None) == {"language": 0.2, "math": 1.0, "code": 0.2}
    assert capability_weights(caps, "targeted", "math", {"code": 0.5, "language": 0}) == {
        "language": 0.0, "math": 1.0, "code": 0.5}


@pytest.mark.parametrize("args, message", [
    ((["math", "code"], "targeted", "chemistry", None), r"targeted capability 'chemistry'.*Valid choices: code, math"),
    ((["math"], "targetted", "math", None), r"deployment type 'targetted'.*Valid choices: general, targeted"),
    ((["math"], "targeted", None, None), "needs a targeted capability"),
    (([], "general", None, None), "no target capabilities"),
    ((["math", "code"], "general", None, {"maths": 1.0}), r"'maths'.*Did you mean 'math'.*code, math"),
    ((["math"], "general", None, {"math": -1.0}), r"'math' must be finite and >= 0, got -1\.0"),
    ((["math"], "general", None, {"math": 0.0}), "all capability weights are 0"),
])
def test_capability_weights_errors(args, message) -> None:
    with pytest.raises(ColaError, match=message):
        capability_weights(*args)


def test_parse_capability_weights() -> None:
    assert parse_capability_weights("math=1,code=0.5") == {"math": 1.0, "code": 0.5}
    assert parse_capability_weights(" math = 2 , code=0 ") == {"math": 2.0, "code": 0.0}


@pytest.mark.parametrize("spec, message", [
    ("math", r"invalid capability weight 'math'.*name=number"),
    ("math=1,", r"invalid capability weight ''"),
    ("math=x", "invalid capability weight 'math=x'"),
    ("=1", "invalid capability weight '=1'"),
    ("math=1=2", "invalid capability weight"),
    ("math=nan", "invalid capability weight"),
    ("math=-0.5", r"'math' must be >= 0, got -0\.5"),
    ("math=1,math=2", "'math' given twice"),
])
def test_parse_capability_weights_errors(spec, message) -> None:
    with pytest.raises(ColaError, match=message):
        parse_capability_weights(spec)


# --- allocation -------------------------------------------------------------------------------------------

def test_targeted_math_allocation_favours_the_math_dataset(table) -> None:
    weights = capability_weights(list(DOMAINS.values()), "targeted", "math", None)
    quotas = allocate_samples(table, weights, 128, {d: 1000 for d in table}, "targeted")
    assert sum(quotas.values()) == 128
    assert quotas["gsm8k-like"] >= 0.6 * 128, quotas
    # General deployment on the same table spreads the samples: no dataset gets most of them.
    general = allocate_samples(table, capability_weights(list(DOMAINS.values()), "general", None, None), 128,
                               {d: 1000 for d in table}, "general")
    assert sum(general.values()) == 128 and max(general.values()) < 0.5 * 128 and min(general.values()) > 0


def test_general_allocation_represents_every_capability() -> None:
    # arc-like scores ~0 on everything but reasoning, whose weight is tiny: proportional shares alone give it 0.
    table = _scores({"c4": {"lang": 0.9, "math": 0.2, "code": 0.2, "reason": 0.0},
                     "gsm8k": {"lang": 0.2, "math": 0.9, "code": 0.2, "reason": 0.0},
                     "mbpp": {"lang": 0.2, "math": 0.2, "code": 0.9, "reason": 0.0},
                     "arc": {"lang": 0.0, "math": 0.0, "code": 0.0, "reason": 0.9}})
    weights = {"lang": 1.0, "math": 1.0, "code": 1.0, "reason": 0.01}
    for n in range(4, 12):
        quotas = allocate_samples(table, weights, n, {d: 100 for d in table}, "general")
        assert sum(quotas.values()) == n and min(quotas.values()) >= 1, (n, quotas)
    assert allocate_samples(table, weights, 4, {d: 100 for d in table}, "targeted")["arc"] == 0  # no guarantee
    assert allocate_samples(table, {**weights, "reason": 0.0}, 4, {d: 100 for d in table}, "general")["arc"] == 0
    # Fewer samples than capabilities: proportional only, still exact.
    assert sum(allocate_samples(table, weights, 3, {d: 100 for d in table}, "general").values()) == 3
    # The best dataset for a capability is full: its reserved sample goes to the next best.
    quotas = allocate_samples(table, {"lang": 1.0, "math": 1.0}, 4, {"c4": 0, "gsm8k": 5, "mbpp": 5, "arc": 5},
                              "general")
    assert quotas["c4"] == 0 and sum(quotas.values()) == 4


def test_quotas_respect_availability_and_redistribute_overflow() -> None:
    table = _scores({"a": {"math": 0.9}, "b": {"math": 0.6}, "c": {"math": 0.3}})
    free = allocate_samples(table, {"math": 1.0}, 18, {"a": 100, "b": 100, "c": 100}, "general")
    assert free == {"a": 9, "b": 6, "c": 3}  # proportional to the scores
    capped = allocate_samples(table, {"math": 1.0}, 18, {"a": 2, "b": 100, "c": 100}, "general")
    assert capped == {"a": 2, "b": 11, "c": 5}  # a's overflow of 7 shared 2:1 between b and c (16 * 2/3 = 10.67)
    cascade = allocate_samples(table, {"math": 1.0}, 18, {"a": 2, "b": 3, "c": 100}, "general")
    assert cascade == {"a": 2, "b": 3, "c": 13}
    everything = allocate_samples(table, {"math": 1.0}, 9, {"a": 2, "b": 3, "c": 4}, "targeted")
    assert everything == {"a": 2, "b": 3, "c": 4}


def test_allocation_totals_are_exact_and_deterministic(table) -> None:
    rng = np.random.default_rng(4)
    weights = {"language": 0.3, "math": 1.0, "code": 0.7, "reasoning": 0.1}
    for deployment in ("general", "targeted"):
        for n in range(1, 80, 3):
            available = {d: int(rng.integers(0, 40)) for d in table}
            if sum(available.values()) < n:
                continue
            quotas = allocate_samples(table, weights, n, available, deployment)
            assert sum(quotas.values()) == n
            assert all(0 <= quotas[d] <= available[d] for d in table)
            assert quotas == allocate_samples(table, weights, n, available, deployment)
    tied = _scores({"x": {"m": 0.5}, "y": {"m": 0.5}, "z": {"m": 0.5}})
    assert allocate_samples(tied, {"m": 1}, 4, {"x": 9, "y": 9, "z": 9}, "general") == {"x": 2, "y": 1, "z": 1}


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_samples=30), r"only 20 samples available.*30 requested \(short by 10\)"),
    (dict(num_samples=0), "num_samples must be at least 1"),
    (dict(deployment="broad"), r"deployment type 'broad'.*general, targeted"),
    (dict(available={"a": 10}), r"no available count for datasets \['b'\]"),
    (dict(available={"a": 10, "b": 10, "zz": 3}), r"not in the table \['zz'\]"),
    (dict(available={"a": -1, "b": 30}), "available counts must be >= 0"),
    (dict(weights={"chem": 1.0}), r"'chem'.*Valid choices: code, math"),
    (dict(weights={"math": -1.0}), r"'math' must be finite and >= 0"),
    (dict(weights={"math": 0.0, "code": 0.0}), "all capability weights are 0"),
])
def test_allocation_errors(kwargs, message) -> None:
    table = _scores({"a": {"math": 0.9, "code": 0.1}, "b": {"math": 0.1, "code": 0.9}})
    args = dict(table=table, weights={"math": 1.0, "code": 1.0}, num_samples=8, available={"a": 10, "b": 10},
                deployment="general") | kwargs
    with pytest.raises(ColaError, match=message):
        allocate_samples(**args)
