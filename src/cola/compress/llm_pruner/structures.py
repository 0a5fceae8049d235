"""The coupled structures of a decoder block, found from its modules and the data flow between them.

LLM-Pruner (Ma et al., NeurIPS 2023, §3.1) removes *groups* of weights that depend on each other, so the pruned
network stays a smaller network of the same shape:

- an attention head is its rows of q, k and v and its columns of o. Under grouped-query attention one key/value
  head serves `q_per_kv` query heads, so the unit removed here is a whole KV group: the KV head's rows of k and v,
  the rows of its query heads in q, and their columns in o. Every layer then keeps q heads / KV heads, the
  `num_key_value_groups` that transformers' attention reads;
- an MLP channel is its row of every input projection (gate, up) and its column of the output projection (down).

Nothing here is a per-model list of names. Each block runs once on a few tokens with a hook on every Linear: in
each parent module the *input projections* are the Linears called on one and the same tensor (q, k, v; gate, up),
and the *output projection* is the Linear called last, whose output has the block's width. A parent with a
`head_dim` attribute is attention; the other is the MLP. Llama, Mistral, Qwen2 (q/k/v biases) and Gemma 2/3
(q/k norms over head_dim, unchanged by pruning heads) are all found this way; a block that does not split so
(fused qkv or gate_up projections, as in Phi-3) is refused, naming what was found.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cola.errors import ColaError
from cola.models import config_int, find_decoder_layers


@dataclass(frozen=True)
class AttentionGroups:
    """One block's attention, pruned in KV groups of `q_per_kv` query heads and one key/value head.

    q: the query projection (num_kv * q_per_kv * head_dim rows); kv: the key and value projections
    (num_kv * head_dim rows each); o: the output projection (num_kv * q_per_kv * head_dim columns). Names are
    qualified module names."""

    module: str
    q: str
    kv: tuple[str, ...]
    o: str
    head_dim: int
    num_kv: int
    q_per_kv: int

    def rows(self, name: str, group: int) -> slice:
        """The rows (of q, k or v) or columns (of o) of KV group `group` in the projection `name`."""
        width = self.head_dim * (1 if name in self.kv else self.q_per_kv)
        return slice(group * width, (group + 1) * width)


@dataclass(frozen=True)
class MlpChannels:
    """One block's MLP, pruned in channels: row c of every input projection and column c of the output one."""

    module: str
    inputs: tuple[str, ...]
    output: str
    channels: int


@dataclass(frozen=True)
class BlockStructures:
    index: int
    attention: AttentionGroups
    mlp: MlpChannels


def _describe(linears: dict[str, torch.nn.Linear]) -> str:
    return ", ".join(f"{name} ({m.in_features}->{m.out_features})" for name, m in linears.items())


def _split(parent: str, calls: list[tuple[str, int]], linears: dict[str, torch.nn.Linear],
           width: int) -> tuple[list[str], str] | None:
    """(input projections, output projection) of one parent module from its Linears' calls in order, each with
    the id of the tensor it read; None when the parent does not split so."""
    names = [name for name, _ in calls]
    if len(set(names)) != len(names) or len(names) < 2:
        return None
    first_input = calls[0][1]
    inputs = [name for name, source in calls if source == first_input]
    outputs = [name for name in names if name not in inputs]
    if len(outputs) != 1 or outputs[0] != names[-1] or linears[outputs[0]].out_features != width:
        return None
    if any(linears[name].in_features != width for name in inputs):
        return None
    return inputs, outputs[0]


def find_structures(model: torch.nn.Module, indices: list[int]) -> list[BlockStructures]:
    """The coupled structures of decoder blocks `indices` of `model`, in that order.

    Runs the model once on 4 tokens (no gradients). Raises ColaError (one line, naming the Linears found) for a
    block whose attention or MLP cannot be split into separate input projections and one output projection of
    the hidden width, or whose head counts do not match the config's."""
    prefix, blocks = find_decoder_layers(model)
    width = config_int(model, "hidden_size", "n_embd", "d_model")
    heads = config_int(model, "num_attention_heads", "n_head")
    kv_heads = config_int(model, "num_key_value_heads") or heads
    if width is None or heads is None:
        raise ColaError(f"{type(model).__name__}'s config gives no hidden_size or num_attention_heads: LLM-Pruner "
                        "cannot count its heads")
    calls: dict[int, list[tuple[str, int]]] = {i: [] for i in indices}
    handles = []
    for index in indices:
        for name, module in blocks[index].named_modules():
            if isinstance(module, torch.nn.Linear):
                def hook(_m, args, _out, index=index, name=name):
                    calls[index].append((name, id(args[0])))
                handles.append(module.register_forward_hook(hook))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros((1, 4), dtype=torch.long, device=device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [_block_structures(f"{prefix}.{index}", index, blocks[index], calls[index], width, heads, kv_heads)
            for index in indices]


def _block_structures(qualified: str, index: int, block: torch.nn.Module, calls: list[tuple[str, int]],
                      width: int, heads: int, kv_heads: int) -> BlockStructures:
    linears = {name: m for name, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
    by_parent: dict[str, list[tuple[str, int]]] = {}
    for name, source in calls:
        by_parent.setdefault(name.rpartition(".")[0], []).append((name, source))
    attention = mlp = None
    for parent, parent_calls in by_parent.items():
        split = _split(parent, parent_calls, linears, width)
        if split is None:
            continue
        inputs, output = split
        module = block.get_submodule(parent) if parent else block
        head_dim = getattr(module, "head_dim", None)
        if isinstance(head_dim, int) and attention is None:
            attention = _attention(qualified, parent, inputs, output, linears, head_dim, heads, kv_heads)
        elif head_dim is None and mlp is None and len({linears[n].out_features for n in inputs}) == 1:
            mlp = MlpChannels(f"{qualified}.{parent}", tuple(f"{qualified}.{n}" for n in inputs),
                              f"{qualified}.{output}", linears[inputs[0]].out_features)
    if attention is None or mlp is None:
        missing = "attention (separate q, k, v and o projections)" if attention is None else \
            "MLP (separate input projections and one output projection)"
        raise ColaError(f"LLM-Pruner cannot group the structures of block {index} ({type(block).__name__}): no "
                        f"{missing} found among its Linears {_describe(linears)}; supported: Llama, Mistral, "
                        "Qwen2 and Gemma layouts")
    return BlockStructures(index, attention, mlp)


def _attention(qualified: str, parent: str, inputs: list[str], output: str, linears: dict[str, torch.nn.Linear],
               head_dim: int, heads: int, kv_heads: int) -> AttentionGroups | None:
    q_rows, kv_rows = heads * head_dim, kv_heads * head_dim
    queries = [n for n in inputs if linears[n].out_features == q_rows]
    kv = [n for n in inputs if linears[n].out_features == kv_rows]
    if heads == kv_heads:  # multi-head attention: q, k, v all have one head's rows per group
        queries, kv = queries[:1], queries[1:]
    if len(queries) != 1 or len(kv) != 2 or linears[output].in_features != q_rows or heads % kv_heads:
        return None
    return AttentionGroups(f"{qualified}.{parent}", f"{qualified}.{queries[0]}",
                           tuple(f"{qualified}.{n}" for n in kv), f"{qualified}.{output}", head_dim, kv_heads,
                           heads // kv_heads)
