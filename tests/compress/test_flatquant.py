"""FlatQuant (Sun et al., 2024): exact transforms before quantization, training that lowers a block's quantized error,
the same logits after saving and loading (Llama; Qwen2 with a quantized KV cache), refused bits, epochs 0 = plain RTN,
and the whole method through `compress` and the command line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from cola.compress.api import compress, load_compressed
from cola.compress.calibration import CalibrationSet
from cola.compress.driver import BlockBatch
from cola.compress.flatquant.config import FlatQuantConfig
from cola.compress.flatquant.linear import FlatQuantLinear, load_flatquant
from cola.compress.flatquant.train import quantize_block, training_steps
from cola.compress.flatquant.transforms import (InputTransform, kron_apply, kron_dims, random_orthogonal,
                                                weight_scales)
from cola.errors import ColaError
from cola.export import tokenizer_fingerprint
from tests.conftest import byte_tokenizer, tiny_llama


def tiny_qwen2(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return Qwen2ForCausalLM(config).eval()


def calibration(samples: int = 8, length: int = 32, seed: int = 0) -> CalibrationSet:
    gen = torch.Generator().manual_seed(seed)
    return CalibrationSet(input_ids=[torch.randint(0, 256, (length,), generator=gen) for _ in range(samples)],
                          manifest={"tokenizer": tokenizer_fingerprint(byte_tokenizer())})


def test_kronecker_transform_and_its_inverse_reproduce_a_linear_exactly():
    assert kron_dims(576) == (24, 24) and kron_dims(1536) == (32, 48) and kron_dims(7) == (1, 7)
    gen = torch.Generator().manual_seed(0)
    left, right = random_orthogonal(6, gen) + 0.3 * torch.randn(6, 6, generator=gen), random_orthogonal(8, gen)
    x = torch.randn(3, 5, 48, generator=gen)
    torch.testing.assert_close(kron_apply(x, left, right), x @ torch.kron(left, right), rtol=1e-5, atol=1e-5)

    linear = torch.nn.Linear(48, 16)
    transform = InputTransform(48, 16, left=left, right=right, scale=torch.rand(48, generator=gen) + 0.5)
    merged = transform.weight_to_transformed(linear.weight.detach())
    with torch.no_grad():
        y = linear(x)
        y_transformed = torch.nn.functional.linear(transform.transform(x), merged, linear.bias)
    assert (y_transformed - y).abs().max() <= 1e-5 * y.abs().max()
    back = transform.weight_to_original(merged.to(torch.float64))
    torch.testing.assert_close(back.to(torch.float32), linear.weight.detach(), rtol=1e-5, atol=1e-6)


def test_fractional_epochs_take_steps_spread_over_the_set():
    steps = list(range(32))
    assert training_steps(steps, 0) == [] and training_steps(steps, 1) == steps
    assert training_steps(steps, 0.25) == [2, 6, 10, 14, 18, 22, 26, 30]
    assert training_steps(steps, 1.5) == steps + list(range(1, 32, 2))
    assert training_steps(steps, 0.001) == [16]  # at least one step
    assert FlatQuantConfig().epochs == 0.25 and FlatQuantConfig(epochs=2).trained


def _block_batches(model, outliers: bool) -> list[BlockBatch]:
    """Inputs of block 0 (2 batches of 4 samples x 16 tokens), a few channels 25x larger, with the dense outputs."""
    gen = torch.Generator().manual_seed(1)
    block = model.model.layers[0]
    batches = []
    for _ in range(2):
        hidden = torch.randn(4, 16, 32, generator=gen)
        if outliers:
            hidden[..., [3, 17, 29]] *= 25
        positions = torch.arange(16)[None]
        kwargs = {"position_embeddings": model.model.rotary_emb(hidden, positions), "position_ids": positions,
                  "attention_mask": None}
        with torch.no_grad():
            batches.append(BlockBatch(hidden, kwargs, block(hidden, **kwargs)))
    return batches


def test_training_lowers_the_quantized_block_error_below_the_identity_transform():
    model = tiny_llama()
    batches = _block_batches(model, outliers=True)
    gen = torch.Generator().manual_seed(0)
    _, _, rtn = quantize_block(0, copy.deepcopy(model.model.layers[0]), batches, FlatQuantConfig(epochs=0), gen)
    _, _, learned = quantize_block(0, copy.deepcopy(model.model.layers[0]), batches, FlatQuantConfig(epochs=4), gen)
    assert rtn.loss_before == rtn.loss_after and rtn.steps == 0 and learned.steps == 4 * 2
    # the paper's initialisation (random orthogonal factors, SmoothQuant-style scales) already flattens the outliers,
    # and training lowers the error further: well below the identity transform's (plain RTN)
    assert learned.loss_before < rtn.loss_after
    assert learned.loss_after < 0.9 * learned.loss_before
    assert learned.loss_after < 0.75 * rtn.loss_after


@pytest.mark.parametrize("family,kv_bits", [("llama", 16), ("qwen2", 4)])
def test_saved_model_reloads_with_identical_logits(family: str, kv_bits: int, tmp_path: Path):
    model = tiny_llama() if family == "llama" else tiny_qwen2()
    out = tmp_path / family
    summary = compress(model, calibration(), "flatquant", out, tokenizer=byte_tokenizer(), epochs=1,
                       kv_bits=kv_bits, quiet=True)
    assert summary["details"]["kv_bits"] == kv_bits
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(ids).logits
    loaded, _ = load_compressed(out)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
    assert sum(isinstance(m, FlatQuantLinear) for m in loaded.modules()) == 14
    q, k = (loaded.model.layers[0].self_attn.get_submodule(n) for n in ("q_proj", "k_proj"))
    assert q.transform is k.transform  # q/k/v share one transform, also after loading
    if family == "qwen2":
        assert q.bias is not None and loaded.config._attn_implementation == "flatquant"
        assert hasattr(loaded.model.layers[1].self_attn, "flatquant_kv")
        generated = loaded.generate(ids[:1, :4], max_new_tokens=4, do_sample=False)  # through the cache
        assert generated.shape == (1, 8)
    # the plain checkpoint: fake-quantized weights in the original space, no activation or KV quantization
    plain, _ = load_compressed(out, caldera_layers=False)
    layer = loaded.model.layers[1].mlp.down_proj
    torch.testing.assert_close(plain.model.layers[1].mlp.down_proj.weight,
                               layer.dense_weight().to(torch.float32), rtol=0, atol=1e-6)


@pytest.mark.parametrize("option,value,valid", [("w_bits", 5, "2, 3, 4, 8"), ("a_bits", 3, "4, 8, 16"),
                                                ("kv_bits", 2, "4, 8, 16")])
def test_unsupported_bits_are_one_line_errors_and_write_nothing(option: str, value: int, valid: str, tmp_path: Path):
    out = tmp_path / "out"
    with pytest.raises(ColaError) as error:
        compress(tiny_llama(), calibration(), "flatquant", out, tokenizer=byte_tokenizer(), quiet=True,
                 **{option: value})
    assert str(error.value) == f"--{option} {value} is not supported. Valid choices: {valid}"
    assert not out.exists()
    with pytest.raises(ColaError, match="--epochs must be 0"):
        FlatQuantConfig(epochs=-1)


def test_zero_epochs_is_plain_round_to_nearest(tmp_path: Path):
    model = tiny_llama()
    dense = copy.deepcopy(model.model.layers[0].mlp.down_proj)
    compress(model, calibration(), "flatquant", tmp_path / "rtn", tokenizer=byte_tokenizer(), epochs=0, quiet=True)
    layer = model.model.layers[0].mlp.down_proj
    assert isinstance(layer, FlatQuantLinear) and layer.transform.act_clip is None and layer.weight_clip is None
    x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(2))
    # by hand: activations symmetric per token, weights symmetric per output channel (float16 scales), 4 bits
    x_scale = x.abs().amax(-1, keepdim=True) / 7
    x_q = torch.clamp(torch.round(x / x_scale), -8, 7) * x_scale
    w = dense.weight.detach()
    w_scale = (w.abs().amax(1, keepdim=True) / 7).half().float()
    w_q = torch.clamp(torch.round(w / w_scale), -8, 7) * w_scale
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x_q @ w_q.T, rtol=0, atol=1e-6)
    torch.testing.assert_close(weight_scales(w, 4)[1], w_scale)
    modules, kv, config = load_flatquant(tmp_path / "rtn/flatquant.safetensors")
    assert not kv and config.epochs == 0
    assert torch.equal(modules["model.layers.0.mlp.down_proj"].codes.float() * w_scale, w_q)


def test_compress_end_to_end_and_the_command_line(tmp_path: Path, capsys):
    from cola.cli import main
    from cola.compress.methods import METHODS

    summary = compress(tiny_llama(), calibration(), "flatquant", tmp_path / "e2e", tokenizer=byte_tokenizer(),
                       epochs=1, quiet=True)
    details, weights = summary["details"], summary["weights"]
    assert (details["weight_bits"], details["activation_bits"], details["kv_bits"]) == (4, 4, 16)
    assert len(details["blocks"]) == 2 and details["mean_block_loss_after"] > 0
    assert weights["format"] == "flatquant" and weights["total"]["num_bits"] == 4
    assert weights["quantization"] == {"weight_bits": 4, "activation_bits": 4, "kv_bits": 16}
    down = weights["layers"]["model.layers.0.mlp.down_proj"]
    transform = 32 * (8 * 8 + 8 * 8 + 64 + 2)  # P1, P2 (8x8 each: 64 = 8 x 8), c and the activation clipping
    assert down["stored_bits"] == 4 * 32 * 64 + 16 * 32 + transform and down["group_size"] is None
    shared = weights["layers"]["model.layers.0.self_attn.q_proj"]["transform_bits"]
    assert shared == pytest.approx(32 * (4 * 4 + 8 * 8 + 32 + 2) / 3)  # one transform, three readers
    assert 4 < weights["total"]["bits_per_parameter"] < 8
    saved = json.loads((tmp_path / "e2e/compression_summary.json").read_text())
    assert saved["options"]["epochs"] == 1 and "flatquant.safetensors" in saved["outputs"]
    line = METHODS["flatquant"].summary_lines(details)[0]
    assert line.startswith("W4A4 KV16: block output error ") and "(mean of 2 blocks" in line

    with pytest.raises(SystemExit):
        main(["compress", "--method", "flatquant", "--help"])
    printed = capsys.readouterr().out
    for flag in ("--w_bits", "--a_bits", "--kv_bits", "--epochs", "--lr", "--transform_init"):
        assert flag in printed
    assert "15" in printed and "plain RTN" in printed
