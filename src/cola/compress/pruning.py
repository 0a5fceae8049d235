"""Pruning math, pure: RIA's scores and the masks that zero the lowest scores.

RIA (Zhang et al., "Plug-and-Play", ICLR 2024): relative importance times activation norm.

score_ij = (|W_ij| / Σ_k |W_ik| + |W_ij| / Σ_k |W_kj|) · ‖X_j‖₂^α

The relative importance compares a weight with the others feeding the same output (its row) and with
the others reading the same input (its column), so channels with uniformly large weights do not take
all the budget; α = 0.5 as in the paper. Within each output row the lowest scores are removed
(unstructured), or the two lowest of every four consecutive inputs (2:4).
"""

from __future__ import annotations

import torch

from cola.compress.stats import InputStats


def ria_scores(weight: torch.Tensor, input_norms: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    w = weight.detach().abs().to(torch.float32)
    eps = torch.finfo(torch.float32).tiny
    relative = w / w.sum(dim=1, keepdim=True).clamp_min(eps) + w / w.sum(dim=0, keepdim=True).clamp_min(eps)
    return relative * input_norms.to(torch.float32).pow(alpha)


def prune_mask(scores: torch.Tensor, sparsity: float, pattern: str) -> torch.Tensor:
    """A boolean mask of the weights to zero: the lowest scores per output row, or 2 of every 4 inputs."""
    rows, cols = scores.shape
    if pattern == "2:4":
        if cols % 4:
            raise ValueError(f"2:4 sparsity needs the input size to be a multiple of 4, got {cols}")
        groups = scores.reshape(rows, cols // 4, 4)
        lowest = groups.topk(2, dim=-1, largest=False).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True)
        return mask.reshape(rows, cols)
    count = int(round(cols * sparsity))
    order = torch.argsort(scores, dim=1, stable=True)[:, :count]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, True)


def ria_prune_layer(linear: torch.nn.Linear, stats: InputStats, *, sparsity: float, pattern: str,
                    alpha: float = 0.5) -> None:
    """Zero the pruned weights of `linear` in place."""
    mask = prune_mask(ria_scores(linear.weight, stats.input_norms, alpha), sparsity, pattern)
    linear.weight.data.masked_fill_(mask, 0)
