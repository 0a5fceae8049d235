"""Reasoning-chain generation: which records change, how, the cache, batching, and loading another model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from cola.data.formatters import Formatted, qa_text
from cola.errors import ColaError
from cola.stages.reasoning import (
    ReasoningConfig, clean_reasoning, generate_reasoning, load_reasoning_model, model_reasoning_prompt,
    reasoning_prompt,
)
from tests.conftest import byte_tokenizer

FAST = ReasoningConfig(max_new_tokens=8, batch_size=4)


def qa(question: str, answer: str, reasoning: str | None = None, **kwargs) -> Formatted:
    return Formatted(text=qa_text(question, reasoning, answer), question=question, reasoning=reasoning,
                     answer=answer, **kwargs)


def pool() -> list[Formatted]:
    """Needing records of different lengths mixed with records that must stay untouched."""
    return [
        Formatted(text="Free text, no question."),
        qa("What is 2 plus 3?", "5"),
        qa("Add 4 and 4.", "8", reasoning="4 + 4 = 8."),
        qa("Write f.", "def f(): pass", reasoning_optional=True),
        qa("A train goes 60 km in one hour. How far in three hours?", "180 km"),
        qa("Is 7 prime?", "yes"),
    ]


def raising_generate(*args, **kwargs):
    raise AssertionError("generate must not be called: everything is cached")


def scripted_generate(tokenizer, replies: dict[str, str]):
    """A stand-in for model.generate: the reply for the prompt naming a question, right-padded like HF."""
    def generate(input_ids, attention_mask, max_new_tokens, pad_token_id, **kwargs):
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = tokenizer.decode(ids[mask.bool()])
            reply = next(r for q, r in replies.items() if f"Question: {q}\n" in prompt)
            rows.append(tokenizer(reply, add_special_tokens=False)["input_ids"][:max_new_tokens])
        width = max(map(len, rows))
        new = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows], dtype=input_ids.dtype)
        return torch.cat([input_ids, new], dim=1)
    return generate


def test_only_needing_records_change_in_order(tiny_model):
    records = pool()
    out, enhanced, counts = generate_reasoning(records, tiny_model, byte_tokenizer(), FAST, cache_path=None,
                                               quiet=True)
    assert len(out) == len(records)
    assert enhanced == [False, True, False, False, True, True]
    for before, after, changed in zip(records, out, enhanced):
        if not changed:
            assert after is before
            continue
        assert after.reasoning and after.question == before.question and after.answer == before.answer
        assert after.text == f"Question: {before.question}\n\nReasoning:\n{after.reasoning}\n\nAnswer: {before.answer}"
        assert not after.needs_reasoning
    assert counts == {"needed": 3, "generated": 3, "cached": 0, "empty": 0}


def test_counts_cleaning_empty_and_duplicates(tiny_model, monkeypatch):
    tokenizer = byte_tokenizer()
    replies = {"What is 2 plus 3?": "  Two and three.\nThat makes five.\nAnswer: 5\nQuestion: next",
               "Is 7 prime?": "  \n ",
               "A train goes 60 km in one hour. How far in three hours?": "60 * 3 = 180."}
    monkeypatch.setattr(tiny_model, "generate", scripted_generate(tokenizer, replies))
    records = pool() + [qa("What is 2 plus 3?", "5")]  # a duplicate: generated once, used twice
    out, enhanced, counts = generate_reasoning(records, tiny_model, tokenizer, ReasoningConfig(batch_size=2),
                                               cache_path=None, quiet=True)
    assert counts == {"needed": 4, "generated": 4, "cached": 0, "empty": 1}
    assert out[1].reasoning == out[6].reasoning == "Two and three.\nThat makes five."
    assert out[4].text == "Question: A train goes 60 km in one hour. How far in three hours?\n\n" \
                          "Reasoning:\n60 * 3 = 180.\n\nAnswer: 180 km"
    assert out[5] is records[5] and not enhanced[5]  # empty generation: unchanged
    assert enhanced == [False, True, False, False, True, False, True]


def test_greedy_is_deterministic(tiny_model):
    first = generate_reasoning(pool(), tiny_model, byte_tokenizer(), FAST, cache_path=None, quiet=True)
    second = generate_reasoning(pool(), tiny_model, byte_tokenizer(), FAST, cache_path=None, quiet=True)
    assert first == second


def test_batched_equals_one_at_a_time(tiny_model):
    """Left padding is right: prompts of different lengths give the same greedy text alone or batched."""
    tokenizer = byte_tokenizer()
    batched = generate_reasoning(pool(), tiny_model, tokenizer, FAST, cache_path=None, quiet=True)
    single = generate_reasoning(pool(), tiny_model, tokenizer, ReasoningConfig(max_new_tokens=8, batch_size=1),
                                cache_path=None, quiet=True)
    assert batched == single


def test_cache_is_written_and_reused(tiny_model, tmp_path: Path, monkeypatch):
    cache = tmp_path / "sub" / "reasoning.jsonl"
    tokenizer = byte_tokenizer()
    first = generate_reasoning(pool(), tiny_model, tokenizer, FAST, cache_path=cache, quiet=True)
    lines = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 3 and all(re.fullmatch(r"[0-9a-f]{64}", e["key"]) for e in lines)
    monkeypatch.setattr(tiny_model, "generate", raising_generate)
    second = generate_reasoning(pool(), tiny_model, tokenizer, FAST, cache_path=cache, quiet=True)
    assert second[:2] == first[:2]
    assert second[2] == {"needed": 3, "generated": 0, "cached": 3, "empty": 0}


def test_changed_config_misses_cache(tiny_model, tmp_path: Path):
    cache = tmp_path / "reasoning.jsonl"
    generate_reasoning(pool(), tiny_model, byte_tokenizer(), FAST, cache_path=cache, quiet=True)
    longer = ReasoningConfig(max_new_tokens=12, batch_size=4)
    _, _, counts = generate_reasoning(pool(), tiny_model, byte_tokenizer(), longer, cache_path=cache, quiet=True)
    assert counts == {"needed": 3, "generated": 3, "cached": 0, "empty": 0}
    assert len(cache.read_text(encoding="utf-8").splitlines()) == 6


def test_batch_size_does_not_key_the_cache(tiny_model, tmp_path: Path, monkeypatch):
    cache = tmp_path / "reasoning.jsonl"
    generate_reasoning(pool(), tiny_model, byte_tokenizer(), FAST, cache_path=cache, quiet=True)
    monkeypatch.setattr(tiny_model, "generate", raising_generate)
    config = ReasoningConfig(max_new_tokens=8, batch_size=1)
    assert generate_reasoning(pool(), tiny_model, byte_tokenizer(), config, cache_path=cache, quiet=True)[2][
        "cached"] == 3


def test_torn_cache_line_is_skipped_and_not_extended(tiny_model, tmp_path: Path):
    cache = tmp_path / "reasoning.jsonl"
    cache.write_text('{"key": "abc", "reaso', encoding="utf-8")  # an interrupted write
    generate_reasoning(pool(), tiny_model, byte_tokenizer(), FAST, cache_path=cache, quiet=True)
    _, _, counts = generate_reasoning(pool(), tiny_model, byte_tokenizer(), FAST, cache_path=cache, quiet=True)
    assert counts["cached"] == 3


def test_tokenizer_is_left_as_it_was(tiny_model):
    tokenizer = byte_tokenizer()
    tokenizer.pad_token = None
    tokenizer.padding_side = "right"
    generate_reasoning(pool(), tiny_model, tokenizer, FAST, cache_path=None, quiet=True)
    assert tokenizer.pad_token is None and tokenizer.padding_side == "right"


def test_sampling_is_seeded_and_restores_global_rng(tiny_model):
    config = ReasoningConfig(max_new_tokens=8, temperature=1.0, seed=3)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = generate_reasoning(pool(), tiny_model, byte_tokenizer(), config, cache_path=None, quiet=True)
    assert torch.equal(torch.rand(1), expected_next)
    assert generate_reasoning(pool(), tiny_model, byte_tokenizer(), config, cache_path=None, quiet=True) == first


def test_prompts():
    plain = reasoning_prompt(" What is 2 plus 3? ", " 5 ")
    assert "step by step" in plain and plain.endswith("Question: What is 2 plus 3?\n\nAnswer: 5\n\nReasoning:\n")
    tokenizer = byte_tokenizer()
    assert model_reasoning_prompt(tokenizer, "Q?", "A") == reasoning_prompt("Q?", "A")
    tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    chat = model_reasoning_prompt(tokenizer, "Q?", "A")
    assert chat.startswith("<user>") and "Question: Q?\n\nAnswer: A</s>" in chat and chat.endswith("<assistant>")


def test_chat_template_prompts_are_used(tiny_model, monkeypatch):
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    seen: list[str] = []

    def generate(input_ids, attention_mask, max_new_tokens, pad_token_id, **kwargs):
        seen.extend(tokenizer.decode(ids[m.bool()]) for ids, m in zip(input_ids, attention_mask))
        return torch.cat([input_ids, torch.full((len(input_ids), 1), 65)], dim=1)

    monkeypatch.setattr(tiny_model, "generate", generate)
    generate_reasoning(pool(), tiny_model, tokenizer, FAST, cache_path=None, quiet=True)
    assert len(seen) == 3 and all(p.startswith("<user>") and p.endswith("<assistant>") for p in seen)


def test_clean_reasoning():
    assert clean_reasoning("  a\nb\n  Answer: 5\nmore") == "a\nb"
    assert clean_reasoning("The Answer: is inline.\n") == "The Answer: is inline."
    assert clean_reasoning("Answer: 5") == ""


@pytest.mark.parametrize("kwargs, shown", [
    ({"max_new_tokens": 0}, "0"), ({"batch_size": -1}, "-1"), ({"batch_size": 2.5}, "2.5"),
    ({"temperature": -0.1}, "-0.1"), ({"temperature": float("nan")}, "nan"), ({"seed": -1}, "-1"),
    ({"max_new_tokens": True}, "True"),
])
def test_config_validation(kwargs, shown):
    with pytest.raises(ColaError, match=re.escape(shown)):
        ReasoningConfig(**kwargs)


def test_load_reasoning_model(tiny_model, tiny_model_dir: Path, tmp_path: Path):
    tokenizer = byte_tokenizer()
    assert load_reasoning_model(None, tiny_model, tokenizer, device="cpu", dtype="float32", quiet=True) == (
        tiny_model, tokenizer)
    loaded, _ = load_reasoning_model(str(tiny_model_dir), tiny_model, tokenizer, device="cpu", dtype="float32",
                                     quiet=True)
    assert loaded is not tiny_model and loaded.config.num_hidden_layers == 3
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ColaError) as error:
        load_reasoning_model(str(tmp_path), tiny_model, tokenizer, device="cpu", dtype="float32", quiet=True)
    message = str(error.value)
    assert message.startswith(f"reasoning-generation model {str(tmp_path)!r} failed to load: ")
    assert "no config.json" in message and "\n" not in message
