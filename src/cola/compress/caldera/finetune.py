"""Fine-tuning of CALDERA's float16 factors, block by block (the LoRA-style recovery of Saha et al., NeurIPS 2024,
Sec. 4: the low-rank factors kept in 16 bits are trained while the quantized backbone stays fixed).

After a decoder block's Linears are decomposed, the float16 components of every layer's L and R (`finetune_rank`
of them; all with lr_bits 16), and with `finetune_signs` the Hadamard rotation's sign vectors, are trained with
Adam to make the compressed block reproduce the dense block's outputs on the calibration samples:

    loss = ‖block(x) − dense_block(x)‖² / ‖dense_block(x) − x‖²     (per batch, over its tokens and channels)

relative to what the dense block adds to its input x (the residual stream dominates a block's output in later
blocks, so an error relative to the whole output would read as nearly zero there).

Block-wise output MSE rather than end-to-end KL on the logits: a block's forward and backward touch one block's
weights and activations, so the whole fine-tuning costs about one forward and backward pass of the model per
sweep over the set, holds one block's activations at a time, and fits the 2-core CPU budget; the reference trains
end to end on a GPU. The samples held out of training (`finetune_holdout` of the set, at least one) are scored
before the first step and every `eval_every` steps; the parameters of the step with the lowest held-out loss are
kept (step 0, no change, included), so fine-tuning never makes the held-out fit worse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from cola.compress.caldera.config import CalderaConfig
from cola.compress.caldera.linear import CalderaLinear
from cola.compress.driver import BlockBatch
from cola.errors import ColaError

EVALUATIONS = 4  # held-out evaluations per block, besides the one before the first step


def held_out_samples(count: int, fraction: float) -> list[int]:
    """Indices of the calibration samples held out of fine-tuning: max(1, round(count · fraction)) of them, spread
    evenly over the set (its order is the curated one, which may group samples by source or cluster).

    Raises ColaError when fewer than two samples leave none to train on or none to hold out."""
    held = max(1, round(count * fraction))
    if count - held < 1:
        raise ColaError(f"fine-tuning holds out {held} of {count} calibration samples to pick its best step, which "
                        f"leaves none to train on; give a set of at least {held + 1} samples or --finetune_steps 0")
    return sorted({min(count - 1, int((i + 0.5) * count / held)) for i in range(held)})


@dataclass
class BlockLog:
    """How one block's fine-tuning went: relative output errors (loss as above)."""

    block: int
    held_out_before: float
    held_out_best: float
    best_step: int
    train_first: float
    train_last: float
    parameters: int

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _relative_mse(block: torch.nn.Module, batch: BlockBatch) -> torch.Tensor:
    out = block(batch.hidden, **batch.kwargs)
    out = out[0] if isinstance(out, tuple) else out
    target = batch.target.to(torch.float32)
    update = (target - batch.hidden.to(torch.float32)).square().sum()  # what the dense block adds to its input
    return (out.to(torch.float32) - target).square().sum() / update.clamp_min(1e-30)


def _held_out_loss(block: torch.nn.Module, batches: list[BlockBatch]) -> float:
    with torch.no_grad():
        return sum(_relative_mse(block, b).item() for b in batches) / len(batches)


def finetune_block(index: int, block: torch.nn.Module, train: list[BlockBatch], held_out: list[BlockBatch],
                   config: CalderaConfig) -> BlockLog:
    """Train the float16 factors (and signs) of the CalderaLinear layers in `block` for `config.finetune_steps`
    Adam steps, one training batch per step in turn; keep the step with the lowest held-out loss.

    `train` and `held_out` hold the block's inputs and the dense block's outputs. Every other parameter of the
    block stays fixed. Afterwards the layers hold their trained factors in float16 (as they are stored).
    Raises ColaError when there is no batch to train on or none to hold out.
    """
    if not train or not held_out:
        raise ColaError("fine-tuning needs calibration samples to train on and samples held out")
    layers = [m for m in block.modules() if isinstance(m, CalderaLinear)]
    frozen = [p for p in block.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    params = [p for layer in layers for p in layer.start_training(config.finetune_signs)]
    try:
        best = _held_out_loss(block, held_out)
        log = BlockLog(index, best, best, 0, math.nan, math.nan, sum(p.numel() for p in params))
        snapshot = [p.detach().clone() for p in params]
        optimizer = torch.optim.Adam(params, lr=config.finetune_lr)
        every = max(1, config.finetune_steps // EVALUATIONS)
        with torch.enable_grad():
            for step in range(1, config.finetune_steps + 1):
                loss = _relative_mse(block, train[(step - 1) % len(train)])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                log.train_first = loss.item() if step == 1 else log.train_first
                log.train_last = loss.item()
                if step % every == 0 or step == config.finetune_steps:
                    current = _held_out_loss(block, held_out)
                    if current < best:
                        best, log.best_step = current, step
                        snapshot = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, kept in zip(params, snapshot):
                p.copy_(kept)
        log.held_out_best = best
    finally:
        for layer in layers:
            layer.stop_training()
        for p in frozen:
            p.requires_grad_(True)
    return log
