"""Stage 2's tokens and windows: filter settings, a sequence length with no room after BOS, pools that dedup
empties, and runs whose outputs must hold (one BOS per sample, Chinese near duplicates removed, whole
characters in sample texts, the manifest naming the length mode)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from audit.case import REPO, Case, Fixtures

CALIBRATION = ("calibration_dataset", "calibration_samples.json", "manifest.json")


def _curate(tmp: Path, fx: Fixtures, data: Path, *extra: str, model: Path | None = None) -> list[str]:
    return ["curate", "--model_name_or_path", str(model or fx.model_dir), "--output_dir", str(tmp / "out"),
            "--datasets", str(data), "--num_samples", "4", "--sequence_length", "32", "--no_stage1", "--quiet",
            "--dtype", "float32", "--device", "cpu", *extra]


def _nothing_written(tmp: Path) -> str | None:
    out = tmp / "out"
    return f"{out} was written" if out.exists() and any(out.iterdir()) else None


def _multilingual():
    sys.path.insert(0, str(REPO))
    from tests.stages import multilingual_texts

    return multilingual_texts


def _chinese_file(tmp: Path) -> Path:
    """20 distinct Chinese paragraphs, then 5 near duplicates (the issue's 清晨 -> 早上 pair and 4 more edits)."""
    import random

    texts = _multilingual()
    copies = [texts.MORNING_EDITED] + [texts.planted_edits(t, random.Random(i))[i % 3]
                                       for i, t in enumerate(texts.CHINESE[1:5])]
    path = tmp / "zh.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                            for t in [*texts.CHINESE, *copies]), encoding="utf-8")
    return path


def _check_chinese(tmp: Path) -> str | None:
    manifest = json.loads((tmp / "out" / "manifest.json").read_text(encoding="utf-8"))
    removed = manifest["stage2"]["filters"]["removed"]
    if removed.get("near_duplicate") != 5:
        return f"near duplicates removed: {removed.get('near_duplicate')}, expected 5 ({removed})"
    for sample in json.loads((tmp / "out" / "calibration_samples.json").read_text(encoding="utf-8")):
        if sample["text"][:1] == "\ufffd" or sample["text"][-1:] == "\ufffd":
            return f"a sample text starts or ends inside a character: {sample['text'][:40]!r}"
    return None


def _bos_model(tmp: Path) -> Path:
    """A tiny Llama whose tokenizer adds BOS and whose chat template writes {{ bos_token }} (Llama-3's way)."""
    sys.path.insert(0, str(REPO))
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.test_tokenization import LLAMA3, special_tokenizer

    path = tmp / "bos-model"
    config = LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=257, eos_token_id=256)
    LlamaForCausalLM(config).save_pretrained(path)
    special_tokenizer("<s>", "</s>", True, LLAMA3).save_pretrained(path)
    return path


def _qa_file(tmp: Path) -> Path:
    path = tmp / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": f"Question {i}: how many legs do {i} spiders have?",
                                        "answer": f"{8 * i}"}) + "\n" for i in range(30)), encoding="utf-8")
    return path


def _check_one_bos(tmp: Path) -> str | None:
    from datasets import load_from_disk

    for row in load_from_disk(str(tmp / "out" / "calibration_dataset"))["input_ids"]:
        doubled = any(a == b == 257 for a, b in zip(row, row[1:]))
        if row[:1] != [257] or doubled:
            return f"a sample does not start with exactly one BOS: {row[:6]}"
    return None


def _check_stages(tmp: Path) -> str | None:
    stages = json.loads((tmp / "out" / "manifest.json").read_text(encoding="utf-8"))["stages"]
    said = stages["stage2_processing"]
    return None if "length truncate: each document one sample" in said else f"stage2_processing says {said!r}"


CASES = [
    Case("curate: near-duplicate threshold 0", lambda tmp, fx: _curate(
        tmp, fx, fx.texts_file, "--near_duplicate_threshold", "0"), match="near_duplicate_threshold",
        check=_nothing_written),
    Case("curate: near-duplicate threshold 1.5", lambda tmp, fx: _curate(
        tmp, fx, fx.texts_file, "--near_duplicate_threshold", "1.5"), match="(0, 1]", check=_nothing_written),
    Case("curate: --min_length 0", lambda tmp, fx: _curate(tmp, fx, fx.texts_file, "--min_length", "0"),
         match="--min_length", check=_nothing_written),
    Case("curate: --max_length below --min_length", lambda tmp, fx: _curate(
        tmp, fx, fx.texts_file, "--min_length", "16", "--max_length", "5"), match="--max_length",
        check=_nothing_written),
    Case("curate: --perplexity_filter 1", lambda tmp, fx: _curate(tmp, fx, fx.texts_file, "--perplexity_filter", "1"),
         match="--perplexity_filter", check=_nothing_written),
    Case("curate: --sequence_length 1 with a tokenizer that adds BOS", lambda tmp, fx: _curate(
        tmp, fx, _qa_file(tmp), "--sequence_length", "1", model=_bos_model(tmp)), match="BOS",
        check=_nothing_written),
    Case("curate: --sequence_length 1 with BOS and --no_stage2", lambda tmp, fx: _curate(
        tmp, fx, _qa_file(tmp), "--sequence_length", "1", "--no_stage2", model=_bos_model(tmp)), match="BOS",
        check=_nothing_written),
    Case("curate: every record a near duplicate of the first", lambda tmp, fx: _curate(
        tmp, fx, _one_story(tmp), "--num_samples", "2", "--length", "truncate"), match="near_duplicate removed 11",
        check=_nothing_written),
    Case("curate: Chinese near duplicates are removed, texts hold whole characters", lambda tmp, fx: _curate(
        tmp, fx, _chinese_file(tmp), "--sequence_length", "40"), expect="ok", check=_check_chinese),
    Case("curate: BOS tokenizer and a template writing BOS give one BOS per sample", lambda tmp, fx: _curate(
        tmp, fx, _qa_file(tmp), model=_bos_model(tmp)), expect="ok", check=_check_one_bos),
    Case("curate: --length truncate is what the manifest says", lambda tmp, fx: _curate(
        tmp, fx, fx.texts_file, "--length", "truncate"), expect="ok", check=_check_stages),
]


def _one_story(tmp: Path) -> Path:
    """12 copies of one Chinese paragraph, each with one small edit: after dedup one is left."""
    import random

    texts = _multilingual()
    rng = random.Random(0)
    path = tmp / "one.jsonl"
    rows = [texts.MORNING] + [texts.planted_edits(texts.MORNING, rng)[i % 3] for i in range(11)]
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in rows), encoding="utf-8")
    return path
