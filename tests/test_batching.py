"""cola.batching: the one length batcher, padding helper and generation helper."""

from __future__ import annotations

import pytest
import torch

from cola.batching import generate_new_tokens, length_batches, pad_batch

from tests.conftest import tiny_llama


def test_length_batches_shortest_or_longest_first_within_both_budgets() -> None:
    lengths = [5, 300, 7, 120, 6, 128]
    assert length_batches(lengths, max_batch_tokens=512, max_batch_size=2) == [[0, 4], [2, 3], [5], [1]]
    # longest first (the evaluation proxies): the first batch is the widest, ties keep index order
    assert length_batches([4, 4, 2, 8, 2], max_batch_tokens=8, longest_first=True) == [[3], [0, 1], [2, 4]]
    assert length_batches([10, 10], max_batch_tokens=4) == [[0], [1]]  # a long sequence still gets a batch
    assert length_batches([], max_batch_tokens=4) == []


def test_pad_batch_right_and_left() -> None:
    ids, mask = pad_batch([[1, 2, 3], [4]], 9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    ids, mask = pad_batch([[1, 2, 3], [4]], 0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="side must be 'right' or 'left', got 'middle'"):
        pad_batch([[1]], 0, side="middle")


def test_generate_new_tokens_is_generate_after_the_prompt() -> None:
    model = tiny_llama()
    prompts = [[5, 6, 7], [8]]
    new = generate_new_tokens(model, prompts, pad_token_id=0, do_sample=False, max_new_tokens=4)
    ids, mask = pad_batch(prompts, 0, side="left")
    full = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=0, do_sample=False, max_new_tokens=4)
    assert new.shape == (2, 4) and new.tolist() == full[:, 3:].tolist()
