"""Block-wise training of FlatQuant's transforms and clipping thresholds (Sun et al., 2024, Sec. 3, "training
objective"): after the sequential driver hands over a decoder block with its calibration inputs x and the dense
block's outputs on them, every Linear of the block is replaced by a FlatQuantLinear, the layers reading the same input
sharing one InputTransform (q/k/v; gate/up; o_proj and down_proj alone), and the transforms (P1, P2, c), the weight and
activation clipping logits and, with KV quantization, the per-head transforms and clipping of keys and values are
trained with AdamW to minimise

    MSE(quantized_block(x), dense_block(x))

in steps of STEP_SAMPLES calibration samples (the paper's batch of 4; `epochs` passes over the set, a fraction taking
steps spread evenly over it), the learning rate cosine-annealed to lr/1000 over all steps, the clipping logits at 10x
the rate (the paper's schedule and rates; the loss is divided by its own detached value before the backward pass, as
the reference does). The layers are then frozen (weights quantized for good).

The per-channel scales start SmoothQuant-style from the input maxima of INIT_SAMPLES samples. The reported error of a
block, on EVAL_SAMPLES samples spread over the set, is relative to what the dense block adds to its input,
‖block(x) − dense_block(x)‖² / ‖dense_block(x) − x‖² (summed per batch, averaged over batches), before training (the
initial transforms, before any clipping) and after (the frozen block).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from cola.compress.driver import BlockBatch, block_linears
from cola.compress.flatquant.config import FlatQuantConfig
from cola.compress.flatquant.linear import KV_ATTRIBUTE, FlatQuantLinear
from cola.compress.flatquant.transforms import (InputTransform, KVQuantizer, kron_dims, random_orthogonal,
                                                smooth_scales)
from cola.errors import ColaError

logger = logging.getLogger(__name__)

STEP_SAMPLES = 4  # calibration samples per optimizer step (the reference's --cali_bsz 4)
EVAL_SAMPLES = 16  # samples (spread over the set) on which a block's error is reported before and after training
INIT_SAMPLES = 32  # samples (spread over the set) whose per-channel input maxima initialise the scales c


@dataclass
class BlockLog:
    """How one block's quantization went: relative output errors (see the module doc), steps and seconds."""

    block: int
    loss_before: float
    loss_after: float
    steps: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _output(block: torch.nn.Module, batch: BlockBatch) -> torch.Tensor:
    out = block(batch.hidden, **batch.kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def relative_error(block: torch.nn.Module, batches: list[BlockBatch]) -> float:
    """Mean over `batches` of ‖block(x) − target‖² / ‖target − x‖² (hidden states (B, T, d), float32 sums)."""
    total = 0.0
    for batch in batches:
        target = batch.target.to(torch.float32)
        err = (_output(block, batch).to(torch.float32) - target).square().sum()
        total += (err / (target - batch.hidden.to(torch.float32)).square().sum().clamp_min(1e-30)).item()
    return total / max(1, len(batches))


def split_batch(batch: BlockBatch, samples: int) -> list[BlockBatch]:
    """`batch` cut into batches of at most `samples` samples along dim 0; call arguments whose first dimension is the
    batch's (masks, per-sample positions; also inside tuples) are cut alike, the rest shared."""
    size = batch.hidden.shape[0]
    if size <= samples:
        return [batch]

    def cut(value: Any, start: int, stop: int) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
            return value[start:stop]
        if isinstance(value, tuple):
            return tuple(cut(v, start, stop) for v in value)
        return value

    return [BlockBatch(batch.hidden[s:s + samples], {k: cut(v, s, s + samples) for k, v in batch.kwargs.items()},
                       batch.target[s:s + samples]) for s in range(0, size, samples)]


def spread(items: list[Any], count: int) -> list[Any]:
    """`count` of `items` spread evenly over them, in order (all of them when there are not more): the calibration
    set's order is curated and may group samples by source."""
    if count >= len(items):
        return list(items)
    return [items[int((i + 0.5) * len(items) / count)] for i in range(count)]


def training_steps(steps: list[Any], epochs: float) -> list[Any]:
    """The micro-batches of `epochs` passes over `steps`, in order: whole passes, then a fraction spread evenly over
    the set (at least one step for any positive `epochs`)."""
    if epochs <= 0 or not steps:
        return []
    whole = int(epochs)
    total = max(1, round(epochs * len(steps)))
    rest = total - whole * len(steps)
    return (steps * whole + (spread(steps, rest) if rest > 0 else []))[:total]


@torch.no_grad()
def observe_inputs(block: torch.nn.Module,
                   batches: list[BlockBatch]) -> tuple[list[list[str]], dict[str, torch.Tensor]]:
    """(groups of the block's Linears reading the same input tensor, in module order; {layer: per-channel max |x|
    (n,) over the batches' tokens}) from forwards of the dense block on `batches`."""
    linears = block_linears(block)
    seen: dict[str, torch.Tensor] = {}  # the first input of each layer, held so that no address is reused
    absmax: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module: torch.nn.Module, args: tuple) -> None:
            x = args[0]
            seen.setdefault(name, x)
            peak = x.detach().reshape(-1, x.shape[-1]).abs().amax(dim=0).to(torch.float32)
            absmax[name] = peak if name not in absmax else torch.maximum(absmax[name], peak)
        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in linears.items()]
    try:
        for batch in batches:
            _output(block, batch)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in linears if name not in seen]
    if missing:
        raise ColaError(f"the block's layer {missing[0]} saw no input in a forward pass; FlatQuant cannot place it")
    groups: dict[int, list[str]] = {}
    for name in linears:
        groups.setdefault(id(seen[name]), []).append(name)
    return list(groups.values()), absmax


def _new_transform(linears: dict[str, torch.nn.Linear], group: list[str], absmax: dict[str, torch.Tensor],
                   config: FlatQuantConfig, generator: torch.Generator) -> InputTransform:
    n = linears[group[0]].in_features
    device = linears[group[0]].weight.device
    if not config.trained or config.transform_init == "identity":
        return InputTransform(n, config.a_bits).to(device)
    n1, n2 = kron_dims(n)
    weight_max = torch.stack([linears[name].weight.detach().abs().amax(dim=0).to(torch.float32)
                              for name in group]).amax(dim=0)
    scale = smooth_scales(weight_max, absmax[group[0]].to(weight_max.device), config.diag_alpha)
    return InputTransform(n, config.a_bits, left=random_orthogonal(n1, generator),
                          right=random_orthogonal(n2, generator), scale=scale).to(device)


def attention_of(block: torch.nn.Module) -> torch.nn.Module:
    """The block's attention module (`self_attn`) with its `head_dim`; ColaError when the block has none."""
    attention = getattr(block, "self_attn", None)
    if attention is None or not isinstance(getattr(attention, "head_dim", None), int):
        raise ColaError(f"{type(block).__name__} has no self_attn module with a head_dim; FlatQuant cannot quantize "
                        "its KV cache (use --kv_bits 16)")
    return attention


def quantize_block(index: int, block: torch.nn.Module, batches: list[BlockBatch], config: FlatQuantConfig,
                   generator: torch.Generator) -> tuple[dict[str, FlatQuantLinear], KVQuantizer | None, BlockLog]:
    """Replace every Linear of `block` by a FlatQuantLinear (shared transforms per input), attach a KVQuantizer to its
    attention with `config.kv_bits` < 16, train for `config.epochs` on `batches` (inputs (B, T, d) and the dense
    block's outputs) as the module doc says, and freeze. Returns ({local layer name: module}, the KV quantizer or
    None, the log). `epochs` 0: identity transforms, no clipping, no training (plain RTN). Raises ColaError without
    batches or, with KV quantization, without an attention module."""
    if not batches:
        raise ColaError("FlatQuant needs calibration batches to quantize a block")
    start = time.perf_counter()
    linears = block_linears(block)
    micro = [b for batch in batches for b in split_batch(batch, STEP_SAMPLES)]
    scored = spread(micro, max(1, EVAL_SAMPLES // STEP_SAMPLES))
    groups, absmax = observe_inputs(block, spread(micro, max(1, INIT_SAMPLES // STEP_SAMPLES)) if config.trained
                                    else micro[:1])
    modules: dict[str, FlatQuantLinear] = {}
    for group in groups:
        transform = _new_transform(linears, group, absmax, config, generator)
        for name in group:
            modules[name] = FlatQuantLinear.from_linear(linears[name], transform, config.w_bits)
            block.set_submodule(name, modules[name])
    kv = None
    if config.kv_bits < 16:
        attention = attention_of(block)
        device = next(iter(linears.values())).weight.device
        rotate = config.trained and config.transform_init == "orthogonal"
        d = attention.head_dim
        kv = KVQuantizer(d, config.kv_bits, k_transform=random_orthogonal(d, generator) if rotate else None,
                         v_transform=random_orthogonal(d, generator) if rotate else None).to(device)
        setattr(attention, KV_ATTRIBUTE, kv)
    steps = 0
    if config.trained:
        before = relative_error(block, scored)
        steps = _train(block, modules, kv, training_steps(micro, config.epochs), config)
    for module in modules.values():
        module.freeze()
    after = relative_error(block, scored)
    log = BlockLog(index, before if config.trained else after, after, steps, time.perf_counter() - start)
    logger.info("block %d: relative output error %.5f -> %.5f (%d steps, %.1f s)", index, log.loss_before,
                log.loss_after, steps, log.seconds)
    return modules, kv, log


def _train(block: torch.nn.Module, modules: dict[str, FlatQuantLinear], kv: KVQuantizer | None,
           steps: list[BlockBatch], config: FlatQuantConfig) -> int:
    """AdamW over the block's transforms and clipping, one step per batch of `steps`; returns the steps taken."""
    frozen = [p for p in block.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    main: list[torch.nn.Parameter] = []
    clips: list[torch.nn.Parameter] = []
    transforms = list({id(m.transform): m.transform for m in modules.values()}.values())
    for owner in transforms + ([kv] if kv is not None else []):
        m, c = owner.trainable(clipping=True)
        main += m
        clips += c
    for transform in transforms:
        transform.reuse(True)
    for module in modules.values():
        clips += module.trainable(clipping=True)
    total = len(steps)
    optimizer = torch.optim.AdamW([{"params": main, "lr": config.lr}, {"params": clips, "lr": config.lr * 10}])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=config.lr * 1e-3)
    try:
        with torch.enable_grad():
            for step, batch in enumerate(steps):
                loss = torch.nn.functional.mse_loss(_output(block, batch).to(torch.float32),
                                                    batch.target.to(torch.float32))
                optimizer.zero_grad(set_to_none=True)
                (loss / loss.detach().clamp_min(1e-30)).backward()
                optimizer.step()
                schedule.step()
                logger.debug("step %d: MSE %.6g", step, loss.item())
    finally:
        for transform in transforms:
            transform.reuse(False)
        for p in main + clips:
            p.requires_grad_(False)
        for p in frozen:
            p.requires_grad_(True)
    return total
