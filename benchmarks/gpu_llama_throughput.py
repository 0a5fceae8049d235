"""Extraction throughput of a 1B-class Llama on an accelerator, against the card's own bf16 limits.

Nothing is downloaded: the model is a Llama-3.2-1B-shaped `LlamaForCausalLM` (hidden 2048, intermediate 8192,
16 layers, 32 query / 8 kv heads of 64, vocabulary 128,256; 1.24 B parameters) built from its config with random
weights directly on the device in bf16, and the pool is seeded random token ids of mixed lengths. Features do
not depend on what the weights mean, only the cost does, so this measures what Stage 3 (`extract_features`, the
one extraction engine: hooks, masked pooling, projection, early stop) costs on real hardware.

Printed, in one run:
  1. the device and its measured bf16 (and fp32) matmul peak: best of 5 square products of --peak_size;
  2. the roofline at this model's own GEMM shapes for the batches the run makes (`roofline.py`: per-shape
     GFLOP/s of q/k/v/o, gate/up/down and the attention products, FLOP-weighted into useful tokens/s);
  3. extraction: useful tokens/s, padding, achieved GFLOP/s, its fraction of the square peak, of the roofline,
     and, given --peak_tflops (the datasheet's dense bf16 figure), of that.

    .venv/bin/python benchmarks/gpu_llama_throughput.py                      # on a CUDA machine, ~1-3 min
    .venv/bin/python benchmarks/gpu_llama_throughput.py --peak_tflops 989    # H100/H200 SXM dense bf16
    .venv/bin/python benchmarks/gpu_llama_throughput.py --tiny --device cpu  # smoke test: a 2-layer model, seconds

It stays within 10 minutes on one GPU: building the model takes seconds, the default pool is 2,048 sequences of
64-1,024 tokens (about 1.1 M tokens).
"""

from __future__ import annotations

import argparse
import time

import torch
from roofline import ATTENTION_NAMES, LINEAR_NAMES, ModelShape, batch_gemms, measure_roofline, useful_flops

from cola.activations import extract_features
from cola.batching import length_batches
from cola.export import cpu_model

# Llama-3.2-1B's shape (its config.json), without its weights
ONE_B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
             num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=4096,
             rope_theta=500000.0, tie_word_embeddings=True)
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model and a small pool (smoke test)")
    parser.add_argument("--sequences", type=int, default=None, help="pool size (default 2048; --tiny 24)")
    parser.add_argument("--min_length", type=int, default=None, help="shortest sequence (default 64; --tiny 8)")
    parser.add_argument("--max_length", type=int, default=None, help="longest sequence (default 1024; --tiny 64)")
    parser.add_argument("--batch_size", type=int, default=64, help="sequences per forward pass at most")
    parser.add_argument("--batch_tokens", type=int, default=None,
                        help="padded token slots per forward pass at most (default 65536; --tiny 512)")
    parser.add_argument("--peak_size", type=int, default=None, help="square matmul side (default 8192; --tiny 256)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the card's datasheet dense bf16 TFLOP/s")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    small = args.tiny
    for name, full, tiny in (("sequences", 2048, 24), ("min_length", 64, 8), ("max_length", 1024, 64),
                             ("batch_tokens", 65536, 512), ("peak_size", 8192, 256)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if small else full)
    return args


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_tflops(dtype: torch.dtype, size: int, device: str, repeats: int = 5) -> float:
    """Best-of-`repeats` TFLOP/s of a (size x size) @ (size x size) matmul in `dtype` on `device`."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.matmul(a, b)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e12


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {cpu_model()}, {torch.get_num_threads()} threads"


def build_model(config_values: dict, device: str) -> torch.nn.Module:
    """A random-weight bf16 LlamaForCausalLM built on `device` (no checkpoint read); seeded."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(**config_values)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval()


def random_pool(sequences: int, low: int, high: int, vocab: int, seed: int) -> list[list[int]]:
    """`sequences` seeded random token-id lists, lengths uniform in [low, high]."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (sequences,), generator=generator).tolist()
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


def main() -> None:
    args = parse_args()
    if args.min_length < 1 or args.max_length < args.min_length:
        raise SystemExit(f"need 1 <= --min_length <= --max_length, got {args.min_length}, {args.max_length}")
    peaks = {"bf16": matmul_tflops(torch.bfloat16, args.peak_size, args.device),
             "fp32": matmul_tflops(torch.float32, args.peak_size, args.device)}
    print(f"device: {device_name(args.device)}; torch {torch.__version__}; matmul peak {args.peak_size}² "
          f"(best of 5): bf16 {peaks['bf16']:.3g} TFLOP/s, fp32 {peaks['fp32']:.3g} TFLOP/s")

    start = time.perf_counter()
    model = build_model(TINY if args.tiny else ONE_B, args.device)
    params = sum(p.numel() for p in model.parameters())
    shape = ModelShape.from_config(model.config)
    print(f"model: random-weight Llama, {params / 1e9:.3g} B parameters (embeddings tied), hidden {shape.hidden}, "
          f"intermediate {shape.intermediate}, {shape.heads} / {shape.kv_heads} heads of {shape.head_dim}, "
          f"{shape.layers} layers, bf16, built on {args.device} in {time.perf_counter() - start:.1f} s")

    pool = random_pool(args.sequences, args.min_length, args.max_length, model.config.vocab_size, args.seed)
    lengths = [len(ids) for ids in pool]
    batches = length_batches(lengths, max_batch_size=args.batch_size, max_batch_tokens=args.batch_tokens)
    plan = [[lengths[i] for i in batch] for batch in batches]
    print(f"pool: {len(pool)} random sequences, {sum(lengths):,} tokens, lengths {min(lengths)}-{max(lengths)}; "
          f"{len(plan)} batches of <= {args.batch_size} sequences / {args.batch_tokens} token slots")

    roofline = measure_roofline(shape, plan, torch.bfloat16, args.device)
    print(f"{'GEMM (all layers)':20s}{'M range':>14s}{'FLOP %':>8s}{'TFLOP/s':>10s}")
    total = sum(roofline.flops.values())
    for name in LINEAR_NAMES + ATTENTION_NAMES:
        low, high = roofline.rows[name]
        print(f"{name:20s}{f'{low}-{high}':>14s}{100 * roofline.flops[name] / total:>8.1f}"
              f"{roofline.rate(name) / 1e3:>10.3g}")
    print(f"{'roofline':20s}{'':>14s}{100.0:>8.1f}{roofline.gflops / 1e3:>10.3g}  -> "
          f"{roofline.tokens_per_second:,.0f} useful tokens/s")

    settings = dict(layers=None, projection_dim=64, seed=args.seed, batch_size=args.batch_size,
                    batch_tokens=args.batch_tokens, quiet=True)
    extract_features(model, pool[: min(len(pool), args.batch_size)], **settings)  # warm-up: kernels, allocator
    synchronize(args.device)
    found = extract_features(model, pool, **settings)
    synchronize(args.device)
    stats = found.stats
    flops = sum(useful_flops(gemm, batch) for batch in plan for gemm in batch_gemms(shape, len(batch), max(batch)))
    achieved = flops / stats.seconds / 1e12
    padding = 1 - stats.real_tokens / stats.computed_tokens
    print(f"extraction: {stats.real_tokens:,} useful tokens in {stats.seconds:.2f} s = "
          f"{stats.tokens_per_second:,.0f} useful tokens/s; padding {100 * padding:.1f} %; "
          f"{achieved:.3g} TFLOP/s of GEMM work ({flops / stats.real_tokens / 1e9:.3g} GFLOP/token, LM head excluded)")
    line = (f"fraction: {achieved / peaks['bf16']:.2f} of the {args.peak_size}² bf16 peak, "
            f"{stats.tokens_per_second / roofline.tokens_per_second:.2f} of the roofline at the model's shapes")
    if args.peak_tflops:
        line += f", {achieved / args.peak_tflops:.2f} of the datasheet's {args.peak_tflops:.0f} TFLOP/s"
    print(line)


if __name__ == "__main__":
    main()
