"""The one sequential layer driver of the native methods (CALDERA, RIA).

Decoder blocks are compressed one at a time, in order. Block i is calibrated on the outputs of blocks
0..i-1 *after* their compression, so each block corrects for the error its predecessors introduced
(the sequential scheme of GPTQ, SparseGPT and CALDERA). Per block: one pass collects the input
statistics of every Linear, the method rewrites the Linears, a second pass produces the inputs of the
next block. Only one block's inputs are held in memory at a time. With a Hessian cache
(`cola.compress.hessian_cache`) blocks are calibrated on the dense model's inputs instead, and a complete cache
replaces the model's forwards altogether.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from cola.compress.calibration import CalibrationSet, ordered_batches
from cola.compress.hessian_cache import HessianCache
from cola.compress.stats import InputStats, collect_input_stats
from cola.errors import ColaError
from cola.models import find_decoder_layers, single_threaded
from cola.progress import progress_bar

# (qualified name, the Linear, what it saw) -> a module to put in its place, or None when changed in place
LayerFn = Callable[[str, torch.nn.Linear, InputStats], "torch.nn.Module | None"]


class _Captured(Exception):
    """Raised by the hook on the first block: the rest of the model need not run."""


@dataclass
class _Batch:
    hidden: torch.Tensor
    kwargs: dict[int, dict[str, Any]] = field(default_factory=dict)  # block index -> its call's arguments
    held_out: bool = False  # samples kept out of a block's fine-tuning, to pick its best step


@dataclass
class BlockBatch:
    """One batch of a block's fine-tuning data: its input (B, T, d), call arguments, and the dense block's output
    on that input (B, T, d)."""

    hidden: torch.Tensor
    kwargs: dict[str, Any]
    target: torch.Tensor


# (block index, the block with its compressed layers in place, training batches, held-out batches) -> None
BlockFn = Callable[[int, torch.nn.Module, list[BlockBatch], list[BlockBatch]], None]


def block_linears(block: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {name: mod for name, mod in block.named_modules() if isinstance(mod, torch.nn.Linear)}


def argument_sources(model: torch.nn.Module, count: int) -> list[int]:
    """For each of the `count` blocks, the block whose call arguments (attention mask, rotary embeddings) it
    shares: the first block of its kind in the config's `layer_types`, else block 0.

    Gemma 2/3 alternate sliding-window and global attention layers, which get their own mask and their own
    rotary base (10,000 local, 1,000,000 global for Gemma 3): a global block run with block 0's arguments
    would attend through a 512-token window with the wrong positions.
    """
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    kinds = getattr(config, "layer_types", None)
    if not isinstance(kinds, (list, tuple)) or len(kinds) != count:
        return [0] * count
    first: dict[str, int] = {}
    return [first.setdefault(kind, index) for index, kind in enumerate(kinds)]


@torch.no_grad()
def _first_block_inputs(model: torch.nn.Module, blocks: torch.nn.ModuleList, sources: list[int],
                        calibration: CalibrationSet, max_batch_tokens: int,
                        held_out: Sequence[int] = ()) -> list[_Batch]:
    """Run the model up to the last block in `sources` for every batch; keep block 0's input and the call
    arguments of every block in `sources`. The samples in `held_out` are batched apart from the others."""
    device = next(model.parameters()).device
    captured: list[_Batch] = []
    last = max(sources)

    def grab(index: int):
        def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            rest = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "past_key_values", "use_cache")}
            if index == 0:
                captured.append(_Batch(hidden.detach()))
            captured[-1].kwargs[index] = rest
            if index == last:
                raise _Captured
        return hook

    handles = [blocks[i].register_forward_pre_hook(grab(i), with_kwargs=True) for i in sorted(set(sources))]
    kept = set(held_out)
    groups = [[i for i in range(len(calibration)) if i not in kept], sorted(kept)]
    lengths = [len(ids) for ids in calibration.input_ids]
    try:
        for group in groups:
            for batch in ordered_batches([lengths[i] for i in group], max_batch_tokens):  # equal lengths: no padding
                ids = torch.stack([calibration.input_ids[group[i]] for i in batch]).to(device)
                try:
                    model(input_ids=ids, use_cache=False)
                except _Captured:
                    pass
                captured[-1].held_out = group is groups[1]
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _block_output(block: torch.nn.Module, batch: _Batch, source: int) -> torch.Tensor:
    out = block(batch.hidden, **batch.kwargs[source])
    return out[0] if isinstance(out, tuple) else out


def _compress_block(prefix: str, index: int, block: torch.nn.Module, stats: dict[str, InputStats],
                    layer_fn: LayerFn, seen: dict[str, int], workers: int = 1) -> None:
    """Hand every Linear of block `index` with its statistics to `layer_fn`, and put in what it returns.

    With `workers` > 1 the layers are handed over concurrently, largest first, each worker running torch
    single-threaded (for a `layer_fn` of many small ops that one thread runs best, such as CALDERA's; the layers
    are independent, so the results are those of the one-at-a-time order)."""
    linears = block_linears(block)

    def run(name: str) -> torch.nn.Module | None:
        return layer_fn(f"{prefix}.{index}.{name}", linears[name], stats[name])

    if workers > 1:
        order = sorted(linears, key=lambda n: (linears[n].weight.numel(), linears[n].in_features), reverse=True)
        with single_threaded(), ThreadPoolExecutor(workers, initializer=torch.set_num_threads,
                                                   initargs=(1,)) as pool:
            replacements = dict(zip(order, pool.map(run, order)))
    else:
        replacements = {name: run(name) for name in linears}
    for name in linears:
        if replacements[name] is not None:
            block.set_submodule(name, replacements[name])
        seen[f"{prefix}.{index}.{name}"] = stats[name].tokens


def _cached_stats(cache: HessianCache, index: int, block: torch.nn.Module) -> dict[str, InputStats]:
    stats = cache.load_block(index)
    missing = sorted(set(block_linears(block)) - set(stats))
    if missing:
        raise ColaError(f"the Hessian cache {cache.path} has no Hessian for block {index}'s {', '.join(missing)}; "
                        "delete it to compute it again")
    return stats


@torch.no_grad()
def compress_sequentially(model: torch.nn.Module, calibration: CalibrationSet, layer_fn: LayerFn, *,
                          stats_kind: str, quiet: bool = False, max_batch_tokens: int = 4096,
                          hessian_cache: HessianCache | None = None, block_fn: BlockFn | None = None,
                          held_out: Sequence[int] = (), layer_workers: int = 1) -> dict[str, int]:
    """Compress every Linear of every decoder block with `layer_fn`; returns {layer name: calibration tokens}.

    With a `hessian_cache` (stats_kind "hessian" only) every block is calibrated on the *dense* model's inputs
    instead, as CALDERA's and QuIP#'s reference code do: a complete cache is read (and without a `block_fn` the
    model never runs); an empty or incomplete one is filled in the same pass that compresses.
    `block_fn`, when given, runs after each block's layers are replaced, with the block's inputs and the dense
    block's outputs on them, the samples `held_out` (indices into the calibration set) in batches of their own;
    what it leaves in the block produces the next block's inputs (without a cache). `layer_workers` > 1 hands a
    block's Linears to `layer_fn` that many at a time (see `_compress_block`).
    """
    prefix, blocks = find_decoder_layers(model)
    seen: dict[str, int] = {}
    cached = hessian_cache is not None and hessian_cache.complete
    if hessian_cache is not None and stats_kind != "hessian":
        raise ValueError(f"a Hessian cache holds full Hessians; stats_kind {stats_kind!r} cannot use one")
    if cached and block_fn is None:
        assert hessian_cache is not None
        for index in progress_bar(range(len(blocks)), quiet=quiet, desc="compressing blocks (cached Hessians)",
                                  unit="block"):
            _compress_block(prefix, index, blocks[index], _cached_stats(hessian_cache, index, blocks[index]),
                            layer_fn, seen, layer_workers)
        return seen
    if hessian_cache is not None and not cached:
        hessian_cache.start()
    sources = argument_sources(model, len(blocks))
    batches = _first_block_inputs(model, blocks, sources, calibration, max_batch_tokens, held_out)
    dense = hessian_cache is not None
    for index in progress_bar(range(len(blocks)), quiet=quiet, desc="compressing blocks", unit="block"):
        block = blocks[index]
        inputs = [batch.hidden for batch in batches]
        targets: list[torch.Tensor] = []
        watch = nullcontext(None) if cached else collect_input_stats(block_linears(block), stats_kind)
        with watch as collected:
            for batch in batches:
                output = _block_output(block, batch, sources[index])
                if block_fn is not None:
                    targets.append(output)
                if dense:  # the dense block's output is the next block's input
                    batch.hidden = output
        if cached:
            assert hessian_cache is not None
            stats = _cached_stats(hessian_cache, index, block)
        else:
            stats = collected
            if hessian_cache is not None:
                hessian_cache.save_block(index, stats)
        _compress_block(prefix, index, block, stats, layer_fn, seen, layer_workers)
        del stats, collected
        if block_fn is not None:
            data = [BlockBatch(x, batch.kwargs[sources[index]], y) for x, batch, y in zip(inputs, batches, targets)]
            block_fn(index, block, [d for d, b in zip(data, batches) if not b.held_out],
                     [d for d, b in zip(data, batches) if b.held_out])
            del data, targets
        del inputs
        if not dense and index + 1 < len(blocks):
            for batch in batches:
                batch.hidden = _block_output(block, batch, sources[index])
    if hessian_cache is not None and not cached:
        hessian_cache.finish(calibration.num_tokens)
    return seen
