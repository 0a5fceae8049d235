"""Token sequences into model batches: one length-bucketed batcher, one padding helper, one generation helper.

Every forward pass over sequences of different lengths (activation extraction, the perplexity filter, the
evaluation proxies) groups them by length within a token budget (`length_batches`) and pads each batch
(`pad_batch`: right padding for scoring, where a causal model's real tokens never see the pads and positions
stay 0..n-1; left padding for generation, so every row's next token comes right after its prompt). Every
`model.generate` call (reasoning chains, self-generated calibration, the generation metrics) goes through
`generate_new_tokens`. The compression driver's batches are apart (`cola.compress.calibration`): they keep the
calibration set's order and never pad.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def length_batches(lengths: Sequence[int], *, max_batch_tokens: int, max_batch_size: int | None = None,
                   longest_first: bool = False) -> list[list[int]]:
    """Group indices into batches of similar length: sorted by length (ties by index), each batch within the
    budgets. A batch costs (size x its longest length) token slots; a sequence longer than the token budget
    still gets a batch of its own. `longest_first` puts the longest batch first (a run that will run out of
    memory does so at once); otherwise shortest first.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i] if longest_first else lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0  # the longest length in `current`
    for index in order:
        wider = max(width, lengths[index])
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (full or (len(current) + 1) * wider > max_batch_tokens):
            batches.append(current)
            current, wider = [], lengths[index]
        current.append(index)
        width = wider
    if current:
        batches.append(current)
    return batches


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, *, side: str = "right",
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) int64 token ids padded with `pad_id` to the longest sequence, and the (B, T) int64 attention mask
    (1 = a real token). `side` is "right" (scoring) or "left" (generation); raises ValueError otherwise."""
    import torch

    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)       # (B, T)
    for row, sequence in enumerate(sequences):
        n = len(sequence)
        columns = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, columns] = torch.as_tensor(sequence)
        mask[row, columns] = 1
    return ids, mask


def generate_new_tokens(model: Any, prompts: Sequence[Sequence[int]], *, pad_token_id: int,
                        **generate_kwargs: Any) -> torch.Tensor:
    """The (B, N) tokens `model.generate` writes after each prompt (token ids), the prompts left-padded with
    `pad_token_id` into one batch on the model's device; `generate_kwargs` go to `generate` as they are
    (sampling, max_new_tokens, stop strings). Rows that stop early are filled with `pad_token_id`."""
    import torch

    from cola.models import input_device

    device = input_device(model)
    ids, mask = pad_batch(prompts, pad_token_id, side="left")
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), pad_token_id=pad_token_id,
                             **generate_kwargs)  # (B, T + N)
    return out[:, ids.shape[1]:]
