"""Removing coupled structures: how many per block, which ones, and the smaller Linears that remain.

The pruning ratio is a share of each pruned block's Linear parameters (LLM-Pruner's "local" pruning, §3.3: every
block in the range loses the same share). Attention loses whole KV groups, round(ratio x KV heads) of them (see
`structures`); the MLP loses as many channels as bring the block's total to the ratio. With 3 KV heads (SmolLM2)
the attention share is coarse (1 group = 1/3 of it), so the MLP share makes up the difference to the channel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cola.compress.llm_pruner.structures import BlockStructures
from cola.errors import ColaError


@dataclass(frozen=True)
class BlockPlan:
    """How many KV groups and MLP channels block `index` loses."""

    index: int
    kv_groups: int
    channels: int


def _linear_params(module: torch.nn.Linear) -> int:
    return module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)


def group_sizes(model: torch.nn.Module, block: BlockStructures) -> tuple[int, int, int]:
    """(parameters of one KV group, parameters of one MLP channel, all Linear parameters of the block)."""
    modules = dict(model.named_modules())
    att, mlp = block.attention, block.mlp
    attention = [att.q, *att.kv, att.o]
    total = sum(_linear_params(modules[name]) for name in (*attention, *mlp.inputs, mlp.output))
    per_group = sum(_linear_params(modules[name]) for name in attention) // att.num_kv
    per_channel = sum(_linear_params(modules[name]) // mlp.channels for name in mlp.inputs) + \
        modules[mlp.output].out_features  # a row of each input projection (and its bias), a column of the output
    return per_group, per_channel, total


def plan(model: torch.nn.Module, structures: Sequence[BlockStructures], ratio: float) -> list[BlockPlan]:
    """The KV groups and channels each block loses at `ratio` of its Linear parameters.

    Raises ColaError (one line) when the ratio would take every KV head or every channel of a block."""
    plans = []
    for block in structures:
        per_group, per_channel, total = group_sizes(model, block)
        groups = math.floor(ratio * block.attention.num_kv + 0.5)
        if groups >= block.attention.num_kv:
            most = (block.attention.num_kv - 0.5) / block.attention.num_kv
            raise ColaError(f"--pruning_ratio {ratio} would remove all {block.attention.num_kv} key/value heads of "
                            f"block {block.index}; use a ratio below {most:.3f}")
        channels = math.floor((ratio * total - groups * per_group) / per_channel + 0.5)
        if channels >= block.mlp.channels:
            raise ColaError(f"--pruning_ratio {ratio} would remove all {block.mlp.channels} MLP channels of block "
                            f"{block.index}; use a lower ratio")
        plans.append(BlockPlan(block.index, groups, max(channels, 0)))
    return plans


def _keep(scores: torch.Tensor, remove: int) -> torch.Tensor:
    """Indices of the `len(scores) - remove` highest scores, in their original order (ties: the earlier kept)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[: len(scores) - remove]).values


def _sliced(linear: torch.nn.Linear, index: torch.Tensor, dim: int) -> torch.nn.Linear:
    """A new Linear holding the rows (dim 0) or columns (dim 1) `index` of `linear`, same dtype and device."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device))
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.detach().index_select(0, index.to(bias.device))
    out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                          dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias.detach())
    return out


def prune_block(model: torch.nn.Module, block: BlockStructures, plan: BlockPlan,
                scores: tuple[torch.Tensor, torch.Tensor]) -> tuple[list[int], list[int]]:
    """Replace the block's Linears with smaller ones without the lowest-scored KV groups and channels; returns
    (kept KV groups, kept channels), each in ascending order."""
    att, mlp = block.attention, block.mlp
    groups = _keep(scores[0], plan.kv_groups)
    channels = _keep(scores[1], plan.channels)

    def rows(name: str) -> torch.Tensor:
        return torch.cat([torch.arange(att.rows(name, int(g)).start, att.rows(name, int(g)).stop) for g in groups])

    for name in (att.q, *att.kv):
        model.set_submodule(name, _sliced(model.get_submodule(name), rows(name), 0))
    model.set_submodule(att.o, _sliced(model.get_submodule(att.o), rows(att.o), 1))
    for name in mlp.inputs:
        model.set_submodule(name, _sliced(model.get_submodule(name), channels, 0))
    model.set_submodule(mlp.output, _sliced(model.get_submodule(mlp.output), channels, 1))
    return groups.tolist(), channels.tolist()


def pruned_shapes(model: torch.nn.Module, structures: Sequence[BlockStructures]) -> dict[str, list[int]]:
    """{qualified Linear name: [out_features, in_features, has bias]} of every Linear of the pruned blocks."""
    shapes = {}
    for block in structures:
        att, mlp = block.attention, block.mlp
        for name in (att.q, *att.kv, att.o, *mlp.inputs, mlp.output):
            module = model.get_submodule(name)
            shapes[name] = [module.out_features, module.in_features, int(module.bias is not None)]
    return shapes


def resize_linears(model: torch.nn.Module, shapes: dict[str, Sequence[int]]) -> None:
    """Put empty Linears of the recorded shapes in place of the named ones (before loading a pruned state dict).

    Raises ColaError when a name is not a Linear of the model."""
    for name, (out_features, in_features, bias) in shapes.items():
        try:
            current = model.get_submodule(name)
        except AttributeError as exc:
            raise ColaError(f"the pruned model names layer {name}, which {type(model).__name__} does not have") \
                from exc
        if not isinstance(current, torch.nn.Linear):
            raise ColaError(f"the pruned model's layer {name} is a {type(current).__name__}, not a Linear")
        model.set_submodule(name, torch.nn.Linear(in_features, out_features, bias=bool(bias),
                                                  device=current.weight.device, dtype=current.weight.dtype))
