"""Perplexity over non-overlapping windows equals a direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from cola.errors import ColaError
from cola.evaluation import perplexity
from tests.conftest import byte_tokenizer, tiny_llama


def test_perplexity_over_windows_matches_direct_computation():
    model, tok = tiny_llama(), byte_tokenizer()
    text = "the quick brown fox jumps over the lazy dog. " * 6  # 270 bytes: 4 windows of 64, rest dropped
    result = perplexity(model, tok, text, window=64, batch_size=3)
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    nlls = []
    with torch.no_grad():
        for w in range(4):
            chunk = ids[w * 64:(w + 1) * 64]
            logp = torch.log_softmax(model(input_ids=chunk[None]).logits[0, :-1], dim=-1)
            nlls.extend((-logp[torch.arange(63), chunk[1:]]).tolist())
    assert result.windows == 4 and result.tokens == 4 * 63 == len(nlls)
    assert result.perplexity == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-5)
    assert perplexity(model, tok, text, window=64, max_windows=2).tokens == 2 * 63


def test_perplexity_refuses_a_text_shorter_than_a_window():
    with pytest.raises(ColaError, match="fewer than one window"):
        perplexity(tiny_llama(), byte_tokenizer(), "short", window=64)
