"""The benchmarks' own arithmetic and a smoke run: the roofline's FLOP count and the GPU script on CPU (--tiny)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from roofline import LINEAR_NAMES, ModelShape, batch_gemms, measure_roofline, useful_flops  # noqa: E402

TINY = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=8, num_hidden_layers=3, max_position_embeddings=64)


def test_linear_gemms_count_two_flops_per_weight_and_real_token() -> None:
    model = AutoModelForCausalLM.from_config(TINY)
    weights = sum(module.weight.numel() for block in model.model.layers for module in block.modules()
                  if isinstance(module, torch.nn.Linear))
    lengths = [7, 5, 2]  # padded to 7: 21 slots, 14 real tokens
    gemms = batch_gemms(ModelShape.from_config(TINY), len(lengths), max(lengths))
    linear = sum(useful_flops(g, lengths) for g in gemms if g.name in LINEAR_NAMES)
    assert linear == 2 * weights * sum(lengths)
    assert sum(g.flops for g in gemms if g.name in LINEAR_NAMES) == 2 * weights * 21  # padding is computed


def test_attention_counts_each_tokens_causal_prefix_only() -> None:
    shape = ModelShape.from_config(TINY)
    scores = next(g for g in batch_gemms(shape, 2, 4) if g.name == "attn_scores")
    # per layer and head: sum of prefix lengths (1+2+3+4 and 1+2) x head_dim x 2 FLOPs
    assert useful_flops(scores, [4, 2]) == 2 * 8 * (10 + 3) * 4 * 3
    assert scores.flops == 2 * (2 * 4) * 4 * 8 * 4 * 3  # the full square the product runs


def test_roofline_sums_every_batch_of_the_plan() -> None:
    roofline = measure_roofline(ModelShape.from_config(TINY), [[4, 3], [8]], torch.float32, repeats=1)
    assert roofline.real_tokens == 15
    assert set(roofline.flops) == set(roofline.seconds) and all(s > 0 for s in roofline.seconds.values())
    assert roofline.rows["q_proj"] == (8, 8) and roofline.rows["attn_scores"] == (4, 8)


def test_gpu_script_runs_on_cpu_with_a_tiny_model() -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_llama_throughput.py"), "--tiny", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "useful tokens/s" in done.stdout and "of the roofline at the model's shapes" in done.stdout
