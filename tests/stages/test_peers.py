"""Peer selection strategies (stages/peers.py) and their dispatch as Stage-3 methods."""

from __future__ import annotations

import numpy as np
import pytest

from cola.config import CurateConfig, SelectionConfig
from cola.errors import ColaError
from cola.experiment.self_generated import generate_self_calibration
from cola.stages.peers import select_lexical_diversity, select_text_clusters
from cola.stages.select import select_at_random, select_from_pool

from tests.conftest import byte_tokenizer, tiny_llama

TOPICS = {
    "fruit": "apple banana cherry mango orchard ripe juice peel harvest sweet",
    "engine": "piston cylinder crankshaft valve torque gasket exhaust fuel ignition",
    "music": "violin cello orchestra symphony melody chord tempo rhythm conductor",
    "space": "galaxy nebula comet orbit telescope planet asteroid rocket cosmos",
}


def topical_texts(per_topic: int = 6, seed: int = 0) -> tuple[list[str], list[int]]:
    """Texts from k topics with disjoint vocabularies, each a shuffled draw of its topic's words."""
    rng = np.random.default_rng(seed)
    texts, groups = [], []
    for group, words in enumerate(TOPICS.values()):
        vocab = words.split()
        for _ in range(per_topic):
            texts.append(" ".join(rng.choice(vocab, size=12)))
            groups.append(group)
    return texts, groups


def test_text_clusters_recovers_planted_topics() -> None:
    texts, groups = topical_texts()
    for seed in (0, 1, 2):
        picks = select_text_clusters(texts, len(TOPICS), seed)
        assert len(picks) == len(TOPICS) and list(picks) == sorted(set(picks.tolist()))
        assert sorted(groups[i] for i in picks) == list(range(len(TOPICS)))  # one text per topic


def test_text_clusters_exactly_k_and_seeded() -> None:
    texts, _ = topical_texts(per_topic=10)
    a, b = select_text_clusters(texts, 7, 3), select_text_clusters(texts, 7, 3)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 7
    duplicates = ["same words here"] * 5 + ["other words there"]  # fewer distinct texts than k
    assert len(set(select_text_clusters(duplicates, 4, 0).tolist())) == 4
    with pytest.raises(ColaError, match="cannot select 7 samples from a pool of 6"):
        select_text_clusters(duplicates, 7, 0)


def test_lexical_diversity_prefers_new_tokens_over_a_near_copy() -> None:
    base = list(range(10))
    pool = [base, base + [10], list(range(20, 30)), base[:9]]
    assert select_lexical_diversity(pool, 2, seed=0).tolist() == [1, 2]  # the copy of 1 adds nothing
    assert select_lexical_diversity(pool, 4, seed=0).tolist() == [0, 1, 2, 3]


def test_lexical_diversity_is_seeded_and_breaks_ties_at_random() -> None:
    pool = [[i, i + 100] for i in range(40)]  # every candidate adds 2 new types: all ties
    a, b = select_lexical_diversity(pool, 5, 1), select_lexical_diversity(pool, 5, 1)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 5
    assert any(not np.array_equal(a, select_lexical_diversity(pool, 5, s)) for s in (2, 3, 4))


def test_lexical_diversity_equals_the_plain_greedy() -> None:
    """The lazy heap gives what re-scoring every candidate at every step gives (ties: the seeded order)."""
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 60, size=rng.integers(3, 15)).tolist() for _ in range(30)]
    rank = np.random.default_rng(5).permutation(len(pool))
    chosen: list[int] = []
    covered: set[int] = set()
    for _ in range(12):
        best = min((i for i in range(len(pool)) if i not in chosen),
                   key=lambda i: (-len(set(pool[i]) - covered), rank[i]))
        chosen.append(best)
        covered |= set(pool[best])
    assert select_lexical_diversity(pool, 12, seed=5).tolist() == sorted(chosen)


def test_self_generation_returns_k_exact_length_sequences_and_drops_the_worst() -> None:
    model, tokenizer = tiny_llama(), byte_tokenizer()
    prompts, _ = topical_texts(per_topic=2)
    ids, report = generate_self_calibration(model, tokenizer, prompts, 6, 24, seed=0, prompt_tokens=4,
                                            batch_size=4, quiet=True)
    assert len(ids) == 6 and {len(x) for x in ids} == {24}
    assert report["generated"] == 8 and report["dropped"] == 2 == 8 - len(report["kept_indices"])
    assert report["perplexity_kept"]["max"] <= report["perplexity_dropped"]["min"]
    ppl = np.asarray(report["perplexities"])
    dropped = sorted(set(range(8)) - set(report["kept_indices"]))
    assert set(np.argsort(ppl)[-2:].tolist()) == set(dropped)
    assert all(ids[j][:4] == tokenizer(prompts[report["prompt_index"][i]])["input_ids"][:4]
               for j, i in enumerate(report["kept_indices"]))
    again, _ = generate_self_calibration(model, tokenizer, prompts, 6, 24, seed=0, prompt_tokens=4,
                                         batch_size=4, quiet=True)
    other, _ = generate_self_calibration(model, tokenizer, prompts, 6, 24, seed=1, prompt_tokens=4,
                                         batch_size=4, quiet=True)
    assert again == ids and other != ids
    with pytest.raises(ColaError, match="prompt_tokens"):
        generate_self_calibration(model, tokenizer, prompts, 2, 4, seed=0, prompt_tokens=4, quiet=True)


def test_unknown_selection_method_lists_choices() -> None:
    with pytest.raises(ColaError, match="unknown selection method 'kmeans'.*activations.*lexical_diversity"):
        SelectionConfig(method="kmeans")
    with pytest.raises(ColaError, match="stage3 off is the seeded random pick"):
        CurateConfig(stage3=False, selection=SelectionConfig(method="text_clusters"))
    with pytest.raises(ColaError, match="selection method 'activations' needs stage3 on"):
        CurateConfig(stage3=False, selection=SelectionConfig(method="activations"))
    assert CurateConfig(stage3=False).selection_method == "random"


def test_pool_selection_honours_quotas() -> None:
    texts, groups = topical_texts(per_topic=6)
    ids = [[ord(c) for c in t] for t in texts]
    sources = [f"s{g}" for g in groups]
    quotas = {"s0": 3, "s1": 0, "s2": 1, "s3": 2}
    for method in ("text_clusters", "lexical_diversity"):
        selection = select_from_pool(method, texts, ids, sources, 6, seed=0, quotas=quotas)
        assert selection.diagnostics["selected_per_source"] == {"s0": 3, "s2": 1, "s3": 2}
        whole = select_from_pool(method, texts, ids, sources, 4, seed=0)
        assert len(whole.indices) == 4 and whole.diagnostics["distinct_tokens"]["selected"] > 0
    with pytest.raises(ColaError, match="unknown pool selection method 'activations'"):
        select_from_pool("activations", texts, ids, sources, 4, seed=0)
    random = select_at_random(len(texts), sources, 6, seed=0, quotas=quotas)
    assert random.method == "random" and random.diagnostics["selected_per_source"] == {"s0": 3, "s2": 1, "s3": 2}
