"""Stage 2 quality filters: dedup (exact, MinHash), length, character heuristics, perplexity, the report."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from cola.errors import ColaError
from cola.stages.filters import (FilterConfig, apply_quality_filters, character_heuristics_mask,
                                 character_shingles, exact_duplicate_mask, length_mask, lsh_bands,
                                 near_duplicate_mask, perplexity_mask, sequence_perplexities, word_shingles)

from tests.conftest import REPO, SHARED_DATA, needs_shared_data, tiny_llama
from tests.stages.multilingual_texts import MORNING, MORNING_EDITED, UNSPACED, edit_words, planted_edits

# Three distinct 60-word paragraphs on one topic (rivers), sharing vocabulary but not phrasing.
RIVERS = [
    "Rivers begin as small streams high in the mountains, fed by melting snow and rain. As they flow "
    "downhill they gather water from many tributaries and grow wider and deeper. Along the way they carve "
    "valleys into the rock, carry sand and gravel toward the sea, and shape the land that farmers, towns and "
    "wild animals depend on for food.",
    "A river delta forms where a slow river meets the ocean and drops the mud it has carried for hundreds of "
    "miles. Over centuries the deposits build flat, fertile land cut by shifting channels. Deltas such as the "
    "Nile and the Mississippi feed millions of people, yet they sink when dams upstream trap the sediment that "
    "renewed them every year.",
    "Floods are part of how healthy rivers work. When heavy rain falls, water spills over the banks and spreads "
    "across the floodplain, leaving behind rich silt and recharging groundwater. Engineers once tried to stop "
    "every flood with tall levees, but many cities now give rivers room to spread out, building parks and wetlands "
    "that can safely store the extra water.",
]
PYTHON_FUNCTION = '''def moving_average(values: list[float], window: int) -> list[float]:
    """Return the mean of each run of `window` consecutive values."""
    if window < 1:
        raise ValueError(f"window must be positive, got {window}")
    totals = [0.0]
    for value in values:
        totals.append(totals[-1] + value)
    return [(totals[i + window] - totals[i]) / window for i in range(len(values) - window + 1)]
'''
LATEX_SOLUTION = (r"Solve for $x$: $2^{x-3}=4^{x+1}$. Since $4 = 2^2$, we have \begin{align*} 2^{x-3} &= "
                  r"(2^2)^{x+1} = 2^{2x+2} \\ x-3 &= 2x+2 \\ x &= \boxed{-5}. \end{align*} Checking: "
                  r"$2^{-8} = \frac{1}{256}$ and $4^{-4} = \frac{1}{256}$, so the answer is $x=-5$.")
LINE_NOISE = "}{|~^@#$%&*(_)+=-;:'\",.<>/?`!" * 4 + " ==== ---- ++++ |||| ^^^^"
ENGLISH = "The committee met on Tuesday to review the budget and agreed to fund two new libraries in the city."


def _default_mask(texts: list[str], seed: int = 42) -> np.ndarray:
    return near_duplicate_mask(texts, threshold=0.8, num_perm=128, seed=seed)


def _change_word(text: str, position: int, word: str = "CHANGED") -> str:
    words = text.split()
    words[position] = word
    return " ".join(words)


def test_exact_duplicates_ignore_whitespace_and_case_and_keep_the_first() -> None:
    texts = ["Hello world.", "Another text", "  hello   WORLD.\n", "HELLO\tworld.", "another text", "Hello world!"]
    assert exact_duplicate_mask(texts).tolist() == [True, True, False, False, False, True]
    assert exact_duplicate_mask([]).shape == (0,)


def test_word_shingles() -> None:
    assert word_shingles("A b  C d e F") == {b"a b c d e", b"b c d e f"}
    assert word_shingles("two Words") == {b"two words"}


def test_character_shingles() -> None:
    assert character_shingles("A b  C\td") == {b"a b c", b" b c ", b"b c d"}  # case and spaces normalised
    assert character_shingles("清晨的小镇") == {"清晨的小镇".encode()}
    assert character_shingles("清晨的小镇还") == {"清晨的小镇".encode(), "晨的小镇还".encode()}
    assert character_shingles("短") == {"短".encode()}


def test_one_changed_word_is_a_near_duplicate_but_paragraphs_on_the_same_topic_are_not() -> None:
    assert all(len(p.split()) == 60 for p in RIVERS)
    planted = [_change_word(RIVERS[0], 30), _change_word(RIVERS[1], 0), _change_word(RIVERS[2], 59)]
    texts = [RIVERS[0], planted[0], RIVERS[1], RIVERS[2], planted[1], planted[2]]
    assert _default_mask(texts).tolist() == [True, False, True, True, False, False]
    # Order decides which one survives: the first of the group.
    assert _default_mask([planted[0], RIVERS[0]]).tolist() == [True, False]


def test_near_duplicate_rate_at_the_worst_position_across_seeds() -> None:
    """A middle word replaced by "CHANGED" touches 9 or 10 of ~315 character 5-grams: true Jaccard 0.94-0.95,
    over 3 standard deviations (0.02 at 128 permutations) above 0.8, so every seed catches all three; word
    5-shingles (a middle word touches 5 of 56: 0.836) caught about 70%. Distinct paragraphs never collide."""
    middle = [_change_word(p, 30) for p in RIVERS]
    assert [round(_jaccard(p, m), 3) for p, m in zip(RIVERS, middle)] == [0.941, 0.954, 0.945]
    caught = [(~_default_mask([*RIVERS, *middle], seed=seed)).tolist() for seed in range(20)]
    assert all(row == [False] * 3 + [True] * 3 for row in caught)  # originals always kept, copies always caught
    words = [(~near_duplicate_mask([*RIVERS, *middle], threshold=0.8, num_perm=128, seed=seed,
                                   shingle=word_shingles)).tolist() for seed in range(20)]
    assert 0.5 * 60 <= sum(sum(row[3:]) for row in words) < 60


def _jaccard(a: str, b: str) -> float:
    x, y = character_shingles(a), character_shingles(b)
    return len(x & y) / len(x | y)


def test_near_duplicate_mask_is_deterministic_across_runs_and_hash_seeds() -> None:
    texts = [*RIVERS, *(_change_word(p, k) for p in RIVERS for k in (3, 20, 40))]
    first = _default_mask(texts)
    assert np.array_equal(first, _default_mask(texts))
    code = ("import json, sys; from cola.stages.filters import near_duplicate_mask; texts = json.load(sys.stdin); "
            "print(json.dumps(near_duplicate_mask(texts, threshold=0.8, num_perm=128, seed=42).tolist()))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True,
                            text=True, env=env, timeout=120, check=True)
    assert json.loads(result.stdout) == first.tolist()


def test_chinese_paragraphs_one_word_apart_are_near_duplicates() -> None:
    """The issue's instance: 246 characters, 清晨 -> 早上; word shingles saw each paragraph as one "word"."""
    assert len(MORNING) == len(MORNING_EDITED) == 246 and MORNING.count(" ") == 0
    assert _default_mask([MORNING, MORNING_EDITED]).tolist() == [True, False]
    assert near_duplicate_mask([MORNING, MORNING_EDITED], threshold=0.8, num_perm=128, seed=42,
                               shingle=word_shingles).tolist() == [True, True]  # what word shingles did
    texts = [MORNING, RIVERS[0], MORNING_EDITED]
    report = apply_quality_filters(texts, [list(t.encode()) for t in texts], FilterConfig())
    assert report.removed["near_duplicate"] == 1 and report.kept.tolist() == [0, 1]


def test_planted_multilingual_near_duplicates_are_removed_and_originals_kept() -> None:
    """35 distinct Chinese, Japanese and Thai paragraphs and 3 English ones; 115 copies with one small edit."""
    rng = random.Random(0)
    copies = ([MORNING_EDITED] + [e for t in UNSPACED for e in planted_edits(t, rng)]
              + [e for t in RIVERS for e in edit_words(t, rng)])
    originals = [*UNSPACED, *RIVERS]
    assert (len(originals), len(copies)) == (38, 115)
    removed = ~_default_mask([*originals, *copies])
    assert removed[:38].sum() == 0 and removed[38:].sum() == 115
    words = ~near_duplicate_mask([*originals, *copies], threshold=0.8, num_perm=128, seed=42, shingle=word_shingles)
    assert (words[:38].sum(), words[38:144].sum(), words[144:].sum()) == (0, 1, 7)  # 1 of 106 unspaced copies


@needs_shared_data
def test_planted_c4_near_duplicates() -> None:
    """100 c4 documents (23 words and more), each with a word replaced, one inserted and one deleted."""
    with (SHARED_DATA / "c4" / "c4_en_train_first1000.jsonl").open(encoding="utf-8") as handle:
        c4 = [json.loads(line)["text"] for line, _ in zip(handle, range(100))]
    rng = random.Random(1)
    copies = [e for t in c4 for e in edit_words(t, rng)]
    removed = ~_default_mask([*c4, *copies])
    assert (removed[:100].sum(), removed[100:].sum()) == (0, 300)
    words = ~near_duplicate_mask([*c4, *copies], threshold=0.8, num_perm=128, seed=42, shingle=word_shingles)
    assert (words[:100].sum(), words[100:].sum()) == (0, 280)


def test_threshold_one_is_accepted_and_removes_identical_shingle_sets() -> None:
    texts = [RIVERS[0], RIVERS[1], RIVERS[0].upper()]  # datasketch's own banding refuses threshold 1.0
    assert near_duplicate_mask(texts, threshold=1.0, num_perm=128, seed=0).tolist() == [True, True, False]


def test_lsh_bands_reach_the_recall_target() -> None:
    def recall(threshold: float, bands: int, rows: int) -> float:
        return 1 - (1 - threshold**rows) ** bands

    for threshold, num_perm in [(0.8, 128), (0.5, 64), (0.95, 16), (1.0, 128), (0.9, 256)]:
        bands, rows = lsh_bands(threshold, num_perm)
        assert bands >= 2 and bands * rows <= num_perm and recall(threshold, bands, rows) >= 0.95
        if rows < num_perm // 2:  # no more selective banding (one more row) would still reach the target
            assert recall(threshold, num_perm // (rows + 1), rows + 1) < 0.95
    assert lsh_bands(0.3, 2) == (2, 1)  # unreachable target: every permutation its own band


def test_length_bounds_are_inclusive() -> None:
    counts = [15, 16, 17, 99, 100, 101]
    assert length_mask(counts, min_tokens=16, max_tokens=100).tolist() == [False, True, True, True, True, False]
    assert length_mask(counts, min_tokens=16, max_tokens=None).tolist() == [False, True, True, True, True, True]


def test_symbol_ratio_drops_line_noise_but_keeps_python_and_latex() -> None:
    texts = [PYTHON_FUNCTION, LATEX_SOLUTION, LINE_NOISE, ENGLISH, ""]
    bounds = FilterConfig()
    mask = character_heuristics_mask(texts, max_symbol_ratio=bounds.max_symbol_ratio, max_digit_ratio=1.0,
                                     max_repeated_line_ratio=1.0)
    assert mask.tolist() == [True, True, False, True, True]
    # The reason the default is not 0.25: LaTeX math is that symbol-dense.
    assert not character_heuristics_mask([LATEX_SOLUTION], max_symbol_ratio=0.25, max_digit_ratio=1.0,
                                         max_repeated_line_ratio=1.0)[0]


def test_digit_ratio() -> None:
    digits = "3.14159 26535 89793 23846 26433 83279 50288 41971 69399 37510"  # 51 digits of 61 characters
    word_problem = "Tom has 12 apples and buys 30 more. 12 + 30 = 42, so he has 42 apples."
    mask = character_heuristics_mask([digits, word_problem], max_symbol_ratio=1.0, max_digit_ratio=0.5,
                                     max_repeated_line_ratio=1.0)
    assert mask.tolist() == [False, True]
    assert character_heuristics_mask(["1a"], max_symbol_ratio=1.0, max_digit_ratio=0.5,
                                     max_repeated_line_ratio=1.0).tolist() == [True]  # bound is inclusive


def test_repeated_line_ratio() -> None:
    spam = "Click here to subscribe!\n" * 10
    song = ("Row, row, row your boat\nGently down the stream\n\nMerrily, merrily\nLife is but a dream\n"
            "Row, row, row your boat\n")
    mask = character_heuristics_mask([spam, song, PYTHON_FUNCTION], max_symbol_ratio=1.0, max_digit_ratio=1.0,
                                     max_repeated_line_ratio=0.3)
    assert mask.tolist() == [False, True, True]  # spam: 9/10 repeated; song: 1/5 (blank lines do not count)


def test_perplexities_equal_the_model_loss_of_each_sequence_alone() -> None:
    model = tiny_llama(seed=1)
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, 257, size=n).tolist() for n in (2, 3, 7, 7, 12, 25, 40, 41)]
    batched = sequence_perplexities(model, sequences, batch_size=4, batch_tokens=10_000, pad_token_id=5,
                                    quiet=True)
    with torch.inference_mode():
        alone = [math.exp(model(torch.tensor([s]), labels=torch.tensor([s])).loss.item()) for s in sequences]
    np.testing.assert_allclose(batched, alone, rtol=1e-4)
    one_by_one = sequence_perplexities(model, sequences, batch_size=1, quiet=True)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4)


def test_unscorable_and_too_long_sequences() -> None:
    model = tiny_llama(seed=1)  # context 256
    long = (np.arange(300) % 257).tolist()
    ppl = sequence_perplexities(model, [[7], [], long, long[:256]], quiet=True)
    assert np.isnan(ppl[:2]).all()
    assert ppl[2] == pytest.approx(ppl[3], rel=1e-6)  # scored on the first context-length tokens


def test_perplexity_mask_drops_exactly_the_top_fraction() -> None:
    ppl = np.array([5.0, 50.0, np.nan, 7.0, 40.0, 6.0, 30.0, 8.0, 9.0, 10.0])
    assert np.flatnonzero(~perplexity_mask(ppl, 0.2)).tolist() == [1, 4]
    assert np.flatnonzero(~perplexity_mask(ppl, 0.21)).tolist() == [1, 4, 6]  # ceil(2.1) = 3
    assert perplexity_mask(ppl, 0.0).all()
    assert perplexity_mask(np.full(4, np.nan), 0.5).all()  # nan is kept
    assert (~perplexity_mask(np.ones(30), 0.1)).sum() == 3  # 0.1 * 30 = 3.0000000000000004 in floats
    assert np.flatnonzero(~perplexity_mask(np.array([2.0, 3.0, 3.0, 1.0]), 0.25)).tolist() == [2]  # later tie
    with pytest.raises(ColaError, match=r"\[0, 1\)"):
        perplexity_mask(ppl, 1.0)


def test_report_counts_each_filter_on_what_survived() -> None:
    base = [f"Document number {i} talks about {topic} in plain words and full sentences, nothing more."
            for i, topic in enumerate(["rivers", "bread", "chess", "trains", "music", "stars", "rain", "maps"])]
    texts = [*base, base[0].upper(), "  " + base[1],           # 2 exact duplicates
             *RIVERS, _change_word(RIVERS[0], 0),              # 1 near duplicate
             "Too short.",                                     # 1 below min_tokens
             LINE_NOISE, "Buy now!\n" * 8,                     # 2 character heuristics
             "Too short."]                                     # exact duplicate, so never reaches length
    token_ids = [list(t.encode("utf-8")) for t in texts]
    config = FilterConfig(min_tokens=16, perplexity_drop_fraction=0.25)
    report = apply_quality_filters(texts, token_ids, config, model=tiny_llama(), quiet=True)
    assert report.removed == {"exact_duplicate": 3, "near_duplicate": 1, "length": 1, "character": 2,
                              "perplexity": 3}  # ceil(0.25 * 11 survivors)
    assert (report.before, report.after) == (len(texts), len(texts) - 10) == (report.before, len(report.kept))
    assert np.all(np.diff(report.kept) > 0) and set(report.kept) <= set(range(8)) | {10, 11, 12}
    off = apply_quality_filters(texts, token_ids, FilterConfig(dedup_exact=False, dedup_near=False))
    assert list(off.removed) == ["length", "character"] and off.removed["length"] == 2
    empty = apply_quality_filters([], [], config, model=tiny_llama(), quiet=True)
    assert (empty.before, empty.after, len(empty.kept), sum(empty.removed.values())) == (0, 0, 0, 0)


def test_apply_quality_filters_errors() -> None:
    with pytest.raises(ColaError, match="needs the model"):
        apply_quality_filters(["a"], [[1]], FilterConfig(perplexity_drop_fraction=0.1))
    with pytest.raises(ColaError, match="2 vs 1"):
        apply_quality_filters(["a", "b"], [[1]], FilterConfig())


@pytest.mark.parametrize(("field", "value", "message"), [
    ("near_duplicate_threshold", 0.0, r"in \(0, 1\], got 0.0"),
    ("near_duplicate_threshold", 1.5, r"in \(0, 1\], got 1.5"),
    ("num_perm", 1, "at least 2, got 1"),
    ("min_tokens", 0, "at least 1, got 0"),
    ("max_tokens", 10, r"None or at least min_tokens \(16\), got 10"),
    ("max_symbol_ratio", -0.1, r"in \[0, 1\], got -0.1"),
    ("max_digit_ratio", 2, r"in \[0, 1\], got 2"),
    ("max_repeated_line_ratio", 1.01, r"in \[0, 1\], got 1.01"),
    ("perplexity_drop_fraction", 1.0, r"in \[0, 1\), got 1.0"),
    ("seed", -1, r"in \[0, 2\*\*32\), got -1"),
])
def test_config_validation_names_the_value_and_range(field: str, value: object, message: str) -> None:
    with pytest.raises(ColaError, match=f"{field} must be {message}"):
        FilterConfig(**{field: value})
    assert FilterConfig(max_tokens=16).as_dict()["max_tokens"] == 16


@pytest.mark.parametrize(("field", "value", "flag"), [
    ("min_tokens", 0, "--min_length"), ("max_tokens", 3, "--max_length"),
    ("perplexity_drop_fraction", 1.0, "--perplexity_filter")])
def test_config_errors_name_the_command_line_option(field: str, value: object, flag: str) -> None:
    with pytest.raises(ColaError, match=f"{field} must be .*, got {value!r} \\({flag}\\)$"):
        FilterConfig(**{field: value})


NORMAL_SENTENCES = [
    "The train to London leaves at nine o'clock every morning from the main station.",
    "She opened the window to let some fresh air into the small kitchen.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The children played football in the park until it started to rain.",
    "He bought a loaf of bread, a carton of milk and some apples at the market.",
    "The museum is closed on Mondays but open late on Friday evenings.",
    "Our teacher asked us to read the first three chapters of the book before next week.",
    "The cat slept on the warm windowsill for most of the afternoon.",
    "Many birds fly south for the winter to find food and warmer weather.",
    "The company reported higher profits this year thanks to strong sales in Europe.",
    "If a rectangle has a length of 8 and a width of 5, its area is 40.",
    "To solve 2x + 3 = 11, subtract 3 from both sides to get 2x = 8, so x = 4.",
    "The sum of the angles in a triangle is always 180 degrees.",
    "A car travels 60 miles in one hour, so in three hours it travels 180 miles.",
    "Half of 50 is 25, and a quarter of 100 is also 25.",
    "The square root of 81 is 9 because 9 times 9 equals 81.",
    "If Tom has 12 apples and gives 4 to his sister, he has 8 apples left.",
    "The doctor told him to drink more water and get plenty of sleep.",
    "We walked along the beach and watched the sun set over the sea.",
    "The library lends books, films and music to everyone in the town for free.",
]


@pytest.mark.integration
def test_perplexity_filter_on_smollm2_removes_exactly_the_planted_gibberish() -> None:
    from cola.models import load_model

    model, tokenizer = load_model("embedded", dtype="float32", quiet=True)
    rng = np.random.default_rng(0)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!?#%&*")
    random_strings = ["".join(rng.choice(alphabet, size=70)) for _ in range(3)]
    salads = [" ".join(rng.permutation(s.split())) for s in (NORMAL_SENTENCES[3], NORMAL_SENTENCES[9])]
    texts = [*NORMAL_SENTENCES[:7], random_strings[0], *NORMAL_SENTENCES[7:14], salads[0], random_strings[1],
             *NORMAL_SENTENCES[14:], salads[1], random_strings[2]]
    gibberish = {texts.index(t) for t in [*random_strings, *salads]}
    token_ids = [tokenizer(t)["input_ids"] for t in texts]
    config = FilterConfig(min_tokens=2, perplexity_drop_fraction=len(gibberish) / len(texts))
    report = apply_quality_filters(texts, token_ids, config, model=model, quiet=True)
    assert report.removed["perplexity"] == 5 and sum(report.removed.values()) == 5
    assert set(range(len(texts))) - set(report.kept.tolist()) == gibberish


def test_filters_fed_in_chunks_decide_as_one_pass_and_keep_dedup_state_on_disk(tmp_path) -> None:
    """Duplicates planted across chunk borders (and inside chunks) are found; every chunk size gives one answer."""
    rng = random.Random(3)
    texts = [*RIVERS, *UNSPACED[1:10], RIVERS[1].upper(), *(e for t in RIVERS for e in edit_words(t, rng)),
             MORNING, MORNING_EDITED, "x", LINE_NOISE, RIVERS[0]]
    token_ids = [list(t.encode()) for t in texts]
    whole = apply_quality_filters(texts, token_ids, FilterConfig(), chunk_size=len(texts))
    assert whole.removed == {"exact_duplicate": 2, "near_duplicate": 10, "length": 1, "character": 1}
    for size in (1, 2, 5, 7):
        chunked = apply_quality_filters(texts, token_ids, FilterConfig(), chunk_size=size, folder=tmp_path)
        assert chunked.kept.tolist() == whole.kept.tolist() and chunked.removed == whole.removed
    assert (tmp_path / "dedup.sqlite").is_file()  # the state lived in the named folder
