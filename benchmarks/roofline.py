"""The roofline of a decoder-only transformer at its own GEMM shapes: what its matrix products alone would allow.

A square 2048² matmul says little about a 135M model: its products are (tokens x 576) @ (576 x 192) and the
like, with a small inner dimension, and its attention products are per-head (T x 64) @ (64 x T). This module
lists the GEMMs one forward pass runs for one padded batch (B sequences of T slots), times each shape as torch
runs it (best of a few, after warm-up), and turns the rates into a roofline: the useful tokens/s the model's
GEMMs would allow if nothing but them took time.

Per decoder layer, for a batch of B x T token slots (M = B * T), a Llama-type block runs
    q_proj  (M, H) @ (H, heads * d)       k_proj, v_proj  (M, H) @ (H, kv_heads * d)    o_proj (M, heads * d) @ (., H)
    gate_proj, up_proj  (M, H) @ (H, I)   down_proj  (M, I) @ (I, H)
    attention scores  (B * heads) x (T, d) @ (d, T)     attention values  (B * heads) x (T, T) @ (T, d)
A useful FLOP is one a token of the sample needs: padding slots are not useful, and in causal attention a token
needs only its prefix, so the score and value products count (T + 1) / 2T of the square (the other half is what
an ideal causal kernel skips). The roofline is FLOP-weighted: seconds = sum over GEMMs of useful FLOPs / the
rate measured at that GEMM's shape, and roofline tokens/s = real tokens / those seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Gemm:
    """One matrix product of the forward pass: `batch` x (m, k) @ (k, n), run `count` times (once per layer)."""

    name: str
    batch: int
    m: int
    k: int
    n: int
    count: int

    @property
    def flops(self) -> float:
        """FLOPs of all `count` products, padding and the masked half of attention included."""
        return 2.0 * self.batch * self.m * self.k * self.n * self.count


@dataclass(frozen=True)
class ModelShape:
    """What fixes a Llama-type decoder's GEMM shapes (read from a transformers config by `from_config`)."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int

    @classmethod
    def from_config(cls, config, layers: int | None = None) -> ModelShape:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(hidden=config.hidden_size, intermediate=config.intermediate_size, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
                   layers=layers or config.num_hidden_layers)


LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION_NAMES = ("attn_scores", "attn_values")


def batch_gemms(shape: ModelShape, batch: int, length: int) -> list[Gemm]:
    """The GEMMs one forward pass runs through `shape.layers` blocks for `batch` sequences of `length` slots."""
    m, h, d, L = batch * length, shape.hidden, shape.head_dim, shape.layers
    q, kv = shape.heads * d, shape.kv_heads * d
    return [Gemm("q_proj", 1, m, h, q, L), Gemm("k_proj", 1, m, h, kv, L), Gemm("v_proj", 1, m, h, kv, L),
            Gemm("o_proj", 1, m, q, h, L), Gemm("gate_proj", 1, m, h, shape.intermediate, L),
            Gemm("up_proj", 1, m, h, shape.intermediate, L), Gemm("down_proj", 1, m, shape.intermediate, h, L),
            Gemm("attn_scores", batch * shape.heads, length, d, length, L),
            Gemm("attn_values", batch * shape.heads, length, length, d, L)]


def useful_flops(gemm: Gemm, lengths: Sequence[int]) -> float:
    """FLOPs of `gemm` the real tokens of a batch with these `lengths` need: no padding rows; in attention,
    each token's causal prefix only (sum of n(n+1)/2 over the sequences, per head)."""
    if gemm.name in ATTENTION_NAMES:
        heads = gemm.batch // len(lengths)
        inner = gemm.k if gemm.name == "attn_scores" else gemm.n  # the head dimension
        return 2.0 * heads * inner * sum(n * (n + 1) / 2 for n in lengths) * gemm.count
    return 2.0 * sum(lengths) * gemm.k * gemm.n * gemm.count


def gemm_seconds(gemm: Gemm, dtype: torch.dtype, device: str = "cpu", *, repeats: int = 3, warmup: int = 1) -> float:
    """Best-of-`repeats` seconds of ONE product of `gemm`'s shape (torch.matmul, or bmm for batch > 1), in
    `dtype` on `device`, the weight-like operand pre-transposed as nn.Linear stores it."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    if gemm.batch == 1:  # x (m, k) @ W.T, W (n, k): how F.linear runs
        a = torch.randn(gemm.m, gemm.k, generator=generator).to(device=device, dtype=dtype)
        w = torch.randn(gemm.n, gemm.k, generator=generator).to(device=device, dtype=dtype)
        run = lambda: torch.nn.functional.linear(a, w)  # noqa: E731
    else:
        a = torch.randn(gemm.batch, gemm.m, gemm.k, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(gemm.batch, gemm.k, gemm.n, generator=generator).to(device=device, dtype=dtype)
        run = lambda: torch.bmm(a, b)  # noqa: E731
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        run()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


@dataclass(frozen=True)
class Roofline:
    """Per-GEMM-name totals over a batch plan: useful FLOPs, seconds at the measured rates, the slot counts."""

    flops: dict[str, float]          # useful FLOPs per GEMM name
    seconds: dict[str, float]        # those FLOPs' seconds at the rate measured at each batch's shape
    rows: dict[str, tuple[int, int]]  # (smallest, largest) M of each name's products (M = B*T, or T per head)
    real_tokens: int

    def rate(self, name: str) -> float:
        """GFLOP/s of one GEMM name over the plan (FLOP-weighted over its batches)."""
        return self.flops[name] / self.seconds[name] / 1e9

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def gflops(self) -> float:
        """FLOP-weighted GFLOP/s of all the model's GEMMs over the plan."""
        return sum(self.flops.values()) / self.total_seconds / 1e9

    @property
    def tokens_per_second(self) -> float:
        """Useful tokens/s the GEMMs alone would allow."""
        return self.real_tokens / self.total_seconds


def measure_roofline(shape: ModelShape, batches: Iterable[Sequence[int]], dtype: torch.dtype, device: str = "cpu",
                     *, repeats: int = 3) -> Roofline:
    """The roofline over a batch plan: `batches` lists each batch's real sequence lengths (the batch is padded
    to its longest). Each distinct (B, T) shape is timed once and reused."""
    flops: dict[str, float] = {}
    seconds: dict[str, float] = {}
    rows: dict[str, tuple[int, int]] = {}
    timed: dict[tuple, float] = {}
    real = 0
    for lengths in batches:
        real += sum(lengths)
        for gemm in batch_gemms(shape, len(lengths), max(lengths)):
            key = (gemm.batch, gemm.m, gemm.k, gemm.n)
            if key not in timed:
                timed[key] = gemm_seconds(gemm, dtype, device, repeats=repeats)
            useful = useful_flops(gemm, lengths)
            rate = gemm.flops / gemm.count / timed[key]  # FLOP/s of this shape
            flops[gemm.name] = flops.get(gemm.name, 0.0) + useful
            seconds[gemm.name] = seconds.get(gemm.name, 0.0) + useful / rate
            low, high = rows.get(gemm.name, (gemm.m, gemm.m))
            rows[gemm.name] = (min(low, gemm.m), max(high, gemm.m))
    return Roofline(flops=flops, seconds=seconds, rows=rows, real_tokens=real)
