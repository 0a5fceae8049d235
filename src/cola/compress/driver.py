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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from cola.compress.calibration import CalibrationSet
from cola.compress.hessian_cache import HessianCache
from cola.compress.stats import InputStats, collect_input_stats
from cola.errors import ColaError
from cola.models import find_decoder_layers
from cola.progress import progress_bar

# (qualified name, the Linear, what it saw) -> a module to put in its place, or None when changed in place
LayerFn = Callable[[str, torch.nn.Linear, InputStats], "torch.nn.Module | None"]


class _Captured(Exception):
    """Raised by the hook on the first block: the rest of the model need not run."""


@dataclass
class _Batch:
    hidden: torch.Tensor
    kwargs: dict[int, dict[str, Any]] = field(default_factory=dict)  # block index -> its call's arguments


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
                        calibration: CalibrationSet, max_batch_tokens: int) -> list[_Batch]:
    """Run the model up to the last block in `sources` for every batch; keep block 0's input and the call
    arguments of every block in `sources`."""
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
    try:
        for batch in calibration.batches(max_batch_tokens):  # equal lengths: nothing padded
            ids = torch.stack([calibration.input_ids[i] for i in batch]).to(device)
            try:
                model(input_ids=ids, use_cache=False)
            except _Captured:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _block_output(block: torch.nn.Module, batch: _Batch, source: int) -> torch.Tensor:
    out = block(batch.hidden, **batch.kwargs[source])
    return out[0] if isinstance(out, tuple) else out


def _compress_block(prefix: str, index: int, block: torch.nn.Module, stats: dict[str, InputStats],
                    layer_fn: LayerFn, seen: dict[str, int]) -> None:
    """Hand every Linear of block `index` with its statistics to `layer_fn`, and put in what it returns."""
    for name, linear in block_linears(block).items():
        full_name = f"{prefix}.{index}.{name}"
        replacement = layer_fn(full_name, linear, stats[name])
        if replacement is not None:
            block.set_submodule(name, replacement)
        seen[full_name] = stats[name].tokens


@torch.no_grad()
def compress_sequentially(model: torch.nn.Module, calibration: CalibrationSet, layer_fn: LayerFn, *,
                          stats_kind: str, quiet: bool = False, max_batch_tokens: int = 4096,
                          hessian_cache: HessianCache | None = None) -> dict[str, int]:
    """Compress every Linear of every decoder block with `layer_fn`; returns {layer name: calibration tokens}.

    With a `hessian_cache` (stats_kind "hessian" only) every block is calibrated on the *dense* model's inputs
    instead, as CALDERA's and QuIP#'s reference code do: a complete cache is read and the model never runs; an
    empty or incomplete one is filled in the same pass that compresses (one forward per block, not two).
    """
    prefix, blocks = find_decoder_layers(model)
    seen: dict[str, int] = {}
    if hessian_cache is not None:
        if stats_kind != "hessian":
            raise ValueError(f"a Hessian cache holds full Hessians; stats_kind {stats_kind!r} cannot use one")
        if hessian_cache.complete:
            for index in progress_bar(range(len(blocks)), quiet=quiet, desc="compressing blocks (cached "
                                      "Hessians)", unit="block"):
                stats = hessian_cache.load_block(index)
                missing = sorted(set(block_linears(blocks[index])) - set(stats))
                if missing:
                    raise ColaError(f"the Hessian cache {hessian_cache.path} has no Hessian for block {index}'s "
                                    f"{', '.join(missing)}; delete it to compute it again")
                _compress_block(prefix, index, blocks[index], stats, layer_fn, seen)
            return seen
        hessian_cache.start()
    sources = argument_sources(model, len(blocks))
    batches = _first_block_inputs(model, blocks, sources, calibration, max_batch_tokens)
    dense = hessian_cache is not None
    for index in progress_bar(range(len(blocks)), quiet=quiet, desc="compressing blocks", unit="block"):
        block = blocks[index]
        with collect_input_stats(block_linears(block), stats_kind) as stats:
            for batch in batches:
                output = _block_output(block, batch, sources[index])
                if dense:  # the dense block's output is the next block's input
                    batch.hidden = output
        if hessian_cache is not None:
            hessian_cache.save_block(index, stats)
        _compress_block(prefix, index, block, stats, layer_fn, seen)
        del stats
        if not dense and index + 1 < len(blocks):
            for batch in batches:
                batch.hidden = _block_output(block, batch, sources[index])
    if hessian_cache is not None:
        hessian_cache.finish(calibration.num_tokens)
    return seen
