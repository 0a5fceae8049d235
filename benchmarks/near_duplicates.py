"""Near-duplicate detection by shingle kind: word 5-shingles, character n-grams, or the hybrid of the two.

MinHash over word 5-shingles sees a Chinese, Japanese or Thai paragraph as one or a few "words", so a
one-word edit leaves nothing in common and near duplicates survive. This measures, at the default
threshold (0.8) and 128 permutations, for each shingle kind:
  1. recall of planted near duplicates: unspaced paragraphs (tests/stages/multilingual_texts.py: 20 Chinese,
     12 Japanese, 3 Thai) with one small edit each (a two-character word replaced, inserted, or two to four
     characters deleted), and English texts from ../shared/data (c4 documents, gsm8k question + answer)
     with one word replaced, inserted or deleted;
  2. false removals among the distinct originals (all must be kept);
  3. removals in real pools with nothing planted (c4, gsm8k, MATH, MBPP, Alpaca), where every removal is a
     duplicate in the data or a false one, and the pairs a kind removes that word 5-shingles keep;
  4. seconds per kind over the real pools (11,948 texts, 7.8 MB at the default --pool_size).
Run from the repository root: .venv/bin/python benchmarks/near_duplicates.py [--data_dir ../shared/data]
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cola.export import cpu_model
from cola.stages.filters import character_shingles, near_duplicate_mask, word_shingles

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.stages.multilingual_texts import MORNING, MORNING_EDITED, UNSPACED, edit_words, planted_edits  # noqa: E402


SMOLLM2_CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n")


def is_unspaced(text: str, run: int = 20) -> bool:
    """The hybrid's rule: text mostly written without spaces between words, i.e. the average character sits in
    a whitespace-separated run of more than `run` characters (English prose: 6-8; a Chinese paragraph: its
    length). Weighting by characters lets a few Latin words in a Chinese paragraph leave it unspaced."""
    runs = [len(r) for r in text.split()]
    return bool(runs) and sum(n * n for n in runs) / sum(runs) > run


def kinds() -> dict[str, Callable[[str], set[bytes]]]:
    """name -> shingle function."""
    out: dict[str, Callable[[str], set[bytes]]] = {"words5": word_shingles}
    for n in (3, 4, 5, 7):
        out[f"chars{n}"] = functools.partial(character_shingles, size=n)
    for n in (3, 5):
        chars = functools.partial(character_shingles, size=n)
        out[f"hybrid{n}"] = lambda text, chars=chars: chars(text) if is_unspaced(text) else word_shingles(text)
    return out


def read_jsonl(path: Path, limit: int) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
            if len(rows) == limit:
                break
    return rows


def real_pools(data: Path, limit: int) -> dict[str, list[str]]:
    """Texts as Stage 2 formats them (near enough): plain text, Q&A, problem + solution, task + code."""
    alpaca = json.loads((data / "alpaca/alpaca_5000.json").read_text(encoding="utf-8"))[:limit]
    gsm8k = read_jsonl(data / "gsm8k/train.jsonl", limit)
    mbpp = read_jsonl(data / "mbpp/mbpp_train_valid_prompt.jsonl", limit)
    return {
        "c4": [r["text"] for r in read_jsonl(data / "c4/c4_en_train_first1000.jsonl", limit)],
        "gsm8k": [f"Question: {r['question']}\n\nAnswer: {r['answer']}" for r in gsm8k],
        "math": [f"Question: {r['problem']}\n\nAnswer: {r['solution']}"
                 for r in read_jsonl(data / "math/train.jsonl", limit)],
        "mbpp": [f"{r['text']}\n\n{r['code']}" for r in mbpp],
        "alpaca": ["\n\n".join(x for x in (r["instruction"], r["input"], r["output"]) if x) for r in alpaca],
        # SmolLM2's chat template with its default system turn: the same ~100 characters in front of every record
        "gsm8k_chat": [SMOLLM2_CHAT.format(q=r["question"], a=r["answer"]) for r in gsm8k],
        "mbpp_chat": [SMOLLM2_CHAT.format(q=r["text"], a=r["code"]) for r in mbpp],
        "alpaca_chat": [SMOLLM2_CHAT.format(q="\n\n".join(x for x in (r["instruction"], r["input"]) if x),
                                            a=r["output"]) for r in alpaca],
    }


def planted(bases: list[str], edit: Callable, rounds: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [e for _ in range(rounds) for base in bases for e in edit(base, rng)]


def measure(texts: list[str], shingle: Callable, seed: int) -> np.ndarray:
    return ~near_duplicate_mask(texts, threshold=0.8, num_perm=128, seed=seed, shingle=shingle)  # True = removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--pool_size", type=int, default=2000, help="texts read from each real pool at most")
    parser.add_argument("--english_bases", type=int, default=300, help="c4 documents and gsm8k records edited")
    parser.add_argument("--rounds", type=int, default=3, help="edit rounds per original (3 edits each)")
    parser.add_argument("--seed", type=int, default=42, help="MinHash seed")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        print(f"near_duplicates: data folder {args.data_dir} not found (give --data_dir)", file=sys.stderr)
        return 2
    print(f"cpu: {cpu_model()}")
    pools = real_pools(args.data_dir, args.pool_size)
    for name, texts in {**pools, "unspaced (zh/ja/th)": UNSPACED}.items():
        print(f"{name}: {len(texts)} texts, {np.mean([is_unspaced(t) for t in texts]):.1%} unspaced")

    english = ([t for t in pools["c4"] if len(t.split()) >= 20][: args.english_bases]
               + pools["gsm8k"][: args.english_bases])
    sets = {  # name -> (originals, planted near duplicates)
        "unspaced": (UNSPACED, [MORNING_EDITED, *planted(UNSPACED, planted_edits, args.rounds, 0)]),
        "english": (english, planted(english, edit_words, 1, 0)),
    }
    sets["mixed"] = (sets["unspaced"][0] + sets["english"][0], sets["unspaced"][1] + sets["english"][1])
    reference = {name: measure(texts, word_shingles, args.seed) for name, texts in pools.items()}
    header = (f"{'kind':8} | {'unspaced recall':>16} {'false':>5} | {'english recall':>15} {'false':>5} | "
              f"{'mixed recall':>13} {'false':>5} | " + " ".join(f"{n:>4}" for n in pools) + " | seconds (pools)")
    print(f"\nplanted near duplicates removed (recall) and originals removed (false), threshold 0.8; real pools: "
          f"texts removed\n{header}")
    extra: dict[str, list[tuple[str, str]]] = {}
    for kind, shingle in kinds().items():
        cells = []
        for name, (originals, copies) in sets.items():
            removed = measure([*originals, *copies], shingle, args.seed)
            caught, false = removed[len(originals):], removed[:len(originals)]
            cells.append(f"{caught.sum():>4}/{len(copies):<4} ({caught.mean():4.0%}) {false.sum():>5}")
        counts = []
        start = time.perf_counter()
        for name, texts in pools.items():
            removed = measure(texts, shingle, args.seed)
            counts.append(f"{removed.sum():>{max(len(name), 4)}}")
            extra.setdefault(kind, []).extend((name, texts[i]) for i in np.flatnonzero(removed & ~reference[name]))
        seconds = time.perf_counter() - start
        print(f"{kind:8} | " + " | ".join(cells) + " | " + " ".join(counts) + f" | {seconds:.1f}")
    print("\nreal-pool texts a kind removes that words5 keeps (first 3 per kind):")
    for kind, found in extra.items():
        if found:
            print(f"  {kind}: {len(found)}; e.g. " + "; ".join(f"[{n}] {t[:70]!r}" for n, t in found[:3]))
    print("\nthe issue's instance (246 characters, 清晨 -> 早上): "
          + ", ".join(f"{kind} removes {int(measure([MORNING, MORNING_EDITED], s, args.seed)[1])}"
                      for kind, s in kinds().items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
