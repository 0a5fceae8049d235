"""CALDERA W ≈ Q + L R: accuracy against round-to-nearest, the module, storage, rotation, quantizers, errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from cola.compress.caldera import (
    CalderaConfig,
    CalderaLinear,
    activation_error,
    caldera_decompose,
    check_layer,
    dequantize_codes,
    load_caldera,
    nf_codebook,
    random_hadamard,
    replace_with_caldera,
    rotate,
    save_caldera,
)
from cola.errors import ColaError

M, N = 48, 64

# QLoRA's NF4 table (bitsandbytes), which nf_codebook(4) must reproduce
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]


def plain(**options) -> CalderaConfig:
    """A config without the defaults' E8P, rotation and float16 components, except where `options` ask for them."""
    return CalderaConfig(**{"quantizer": "uniform", "hadamard": False, "finetune_steps": 0, **options})


def problem(seed: int = 0, m: int = M, n: int = N, tokens: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """W: gaussian plus three large rank-2 outlier columns; H = XᵀX of correlated, anisotropic activations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g) / n**0.5
    X = (torch.randn(tokens, n, generator=g) * torch.logspace(0, -1, n)) @ mix
    W = 0.02 * torch.randn(m, n, generator=g)
    W[:, :3] += 0.2 * torch.randn(m, 2, generator=g) @ torch.randn(2, 3, generator=g)
    return W, X.T @ X


@pytest.fixture(scope="module")
def wh() -> tuple[torch.Tensor, torch.Tensor]:
    return problem()


def _linear(W: torch.Tensor, bias: bool = True) -> torch.nn.Linear:
    linear = torch.nn.Linear(W.shape[1], W.shape[0], bias=bias)
    with torch.no_grad():
        linear.weight.copy_(W)
    return linear


@pytest.mark.parametrize("q_bits", [2, 3])
def test_alternation_lowers_the_error_and_beats_round_to_nearest(wh, q_bits: int) -> None:
    W, H = wh
    result = caldera_decompose(W, H, plain(q_bits=q_bits, rank=4, iters=8))
    assert len(result.errors) == 8
    assert result.errors[-1] < result.errors[0]
    assert result.best_error == min(result.errors)
    assert result.rtn_error is not None and result.best_error < 0.5 * result.rtn_error
    # the reported error is that of the returned factors, measured independently
    assert activation_error(W, result.factors.dequantize(), H) == pytest.approx(result.best_error, rel=1e-3)


def test_activation_error_definition() -> None:
    g = torch.Generator().manual_seed(1)
    W, E, X = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.randn(40, 5, generator=g)
    H = X.T @ X
    expected = torch.trace(E @ H @ E.T) / torch.trace(W @ H @ W.T)
    assert activation_error(W, W - E, H) == pytest.approx(expected.item(), rel=1e-5)
    assert activation_error(W, W, H) == 0.0


@pytest.mark.parametrize("hadamard", [False, True])
def test_forward_equals_the_dense_dequantized_linear(wh, hadamard: bool) -> None:
    W, H = wh
    linear = _linear(W)
    module, result = CalderaLinear.from_linear(linear, H, plain(rank=4, iters=2, hadamard=hadamard))
    assert (module.in_features, module.out_features) == (N, M)
    x = torch.randn(3, 5, N, generator=torch.Generator().manual_seed(2))
    expected = F.linear(x, result.factors.dequantize(), linear.bias)
    assert torch.allclose(module(x), expected, atol=1e-5)
    assert module(x.to(torch.bfloat16)).dtype == torch.bfloat16
    state = module.state_dict()  # codes and scales, never a dense float weight
    assert state["q_codes"].dtype == torch.uint8 and state["q_codes"].shape == (M, N)
    assert all(t.dtype in (torch.uint8, torch.float16, torch.int64) for k, t in state.items() if k != "bias")
    assert ("hadamard_seed" in state) == hadamard
    # the cached forward computes the same function from one dense weight, which the state never holds
    from_factors = module(x)
    assert module.cache_dense() is module and module.dense_weight.shape == (M, N)
    assert torch.allclose(module(x), from_factors, atol=1e-5)
    assert module.state_dict().keys() == state.keys()
    module.cache_dense(False)
    assert module.dense_weight is None and torch.equal(module(x), from_factors)


@pytest.mark.parametrize("config", [
    plain(rank=4, iters=2, finetune_rank=2),
    CalderaConfig(rank=4, iters=2, finetune_rank=2),
    CalderaConfig(rank=4, iters=2, lr_bits=16, hadamard=True),
])
def test_the_training_forward_computes_what_the_factors_do(wh, config: CalderaConfig) -> None:
    """The training forward (frozen components as one dense matrix, signs elementwise) gives the output and the
    gradients of the forward from the factors, also once the float16 factors and the signs have moved off ±1."""
    W, H = wh
    module = CalderaLinear.from_linear(_linear(W), H, config)[0]
    x = torch.randn(2, 7, N, generator=torch.Generator().manual_seed(4))
    params = module.start_training(signs=config.hadamard)
    assert module.fixed_weight is not None
    with torch.no_grad():
        for p in params:
            p.mul_(1 + 0.3 * torch.rand(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    fast = module(x)
    fast.square().sum().backward()
    fast_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    fixed, module.fixed_weight = module.fixed_weight, None  # the forward from the factors, same parameters
    slow = module(x)
    slow.square().sum().backward()
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-4)
    for p, grad in zip(params, fast_grads):
        assert torch.allclose(grad, p.grad, atol=1e-4, rtol=1e-3)
    module.fixed_weight = fixed
    module.stop_training()
    assert module.fixed_weight is None and module.l_weight.dtype == torch.float16


@pytest.mark.parametrize("config", [
    plain(rank=4, iters=2),
    plain(q_bits=3, lr_bits=16, rank=4, iters=2, group_size=32, quantizer="nf", hadamard=True, seed=9),
    plain(rank=4, iters=2, finetune_rank=2, group_size=32),
    plain(rank=0, hadamard=True),
    plain(rank=4, iters=2, quantizer="e8p", hadamard=True, finetune_rank=1),
])
def test_save_load_roundtrip_is_exact(tmp_path, wh, config: CalderaConfig) -> None:
    W, H = wh
    modules = {
        "blocks.0.proj": CalderaLinear.from_linear(_linear(W), H, config)[0],
        "blocks.1.proj": CalderaLinear.from_linear(_linear(W.flip(0), bias=False), H, config)[0],
    }
    path = tmp_path / "caldera.safetensors"
    save_caldera(path, modules, config)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temporary file was renamed away
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["config"])["q_bits"] == config.q_bits
    loaded, loaded_config = load_caldera(path)
    assert loaded_config == config and list(loaded) == list(modules)
    x = torch.randn(7, N, generator=torch.Generator().manual_seed(3))
    for name, module in modules.items():
        # The stored tensors round-trip bit for bit, and both modules hold them contiguous, so the forward
        # runs the same kernels and may be compared bit for bit (a transposed view did not on AMD CPUs).
        fresh, back = module.state_dict(), loaded[name].state_dict()
        assert all(t.is_contiguous() for t in [*fresh.values(), *back.values()] if t is not None)
        assert all(torch.equal(fresh[k], back[k]) for k in fresh if fresh[k] is not None)
        assert torch.equal(loaded[name](x), module(x))
        assert loaded[name].factors.bits_per_parameter() == module.factors.bits_per_parameter()
        assert loaded[name].state_dict().keys() == module.state_dict().keys()
    assert loaded["blocks.1.proj"].bias is None
    with safe_open(str(path), framework="pt") as f:  # the codes on disk take their bit width, no more
        stored_code_bits = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() * 8
                               for k in f.keys() if k.endswith("_codes"))
    module = modules["blocks.0.proj"]
    q_code_bits = 16 if config.quantizer == "e8p" else config.q_bits  # e8p: one 16-bit code per 8 weights
    counted = sum(module.factors.tensors()[k].numel() * (q_code_bits if k == "q_codes" else config.lr_bits)
                  for k in ("q_codes", "l_codes", "r_codes") if k in module.factors.tensors())
    assert counted * len(modules) <= stored_code_bits < (counted + 3 * 8) * len(modules)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_code_packing_roundtrips(bits) -> None:
    from cola.compress.caldera import pack_codes, unpack_codes

    codes = torch.randint(0, 2 ** bits, (13, 7), generator=torch.Generator().manual_seed(bits)).to(torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-13 * 7 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, (13, 7)), codes)


def test_save_rejects_modules_of_another_config(tmp_path, wh) -> None:
    W, H = wh
    module = CalderaLinear.from_linear(_linear(W), H, plain(rank=4, iters=1))[0]
    with pytest.raises(ColaError, match="decomposed with"):
        save_caldera(tmp_path / "c.safetensors", {"proj": module}, plain(rank=8, iters=1))
    with pytest.raises(ColaError, match="not found"):
        load_caldera(tmp_path / "missing.safetensors")


def test_replace_with_caldera_swaps_named_submodules(wh) -> None:
    W, H = wh
    model = torch.nn.Sequential(torch.nn.Sequential(_linear(W)), torch.nn.ReLU(), torch.nn.Linear(M, 8))
    module, result = CalderaLinear.from_linear(model[0][0], H, plain(rank=4, iters=2))
    dense = torch.nn.Sequential(torch.nn.Sequential(_linear(result.factors.dequantize())), torch.nn.ReLU(), model[2])
    dense[0][0].bias.data.copy_(model[0][0].bias.data)
    replace_with_caldera(model, {"0.0": module})
    assert model[0][0] is module
    x = torch.randn(4, N)
    assert torch.allclose(model(x), dense(x), atol=1e-5)
    with pytest.raises(ColaError, match="no module"):
        replace_with_caldera(model, {"0.7": module})
    with pytest.raises(ColaError, match="48x64"):
        replace_with_caldera(model, {"2": module})


def test_bits_per_parameter_matches_a_hand_count(wh) -> None:
    W, H = wh
    f = caldera_decompose(W, H, plain(q_bits=2, lr_bits=4, rank=4, group_size=32, iters=1)).factors
    assert (f.q_codes.dtype, tuple(f.q_codes.shape)) == (torch.uint8, (48, 64))
    assert (f.q_scales.dtype, tuple(f.q_scales.shape)) == (torch.float16, (48, 2))  # 64 / 32 groups per row
    assert tuple(f.l_codes.shape) == (48, 4) and tuple(f.l_scales.shape) == (48, 1)  # L: one scale per row
    assert tuple(f.r_codes.shape) == (4, 64) and tuple(f.r_scales.shape) == (4, 2)   # R: grouped like Q
    bits = (48 * 64 * 2          # Q codes at 2 bits
            + 48 * 2 * 16        # Q scales, float16
            + 48 * 4 * 4         # L codes at 4 bits
            + 48 * 1 * 16        # L scales
            + 4 * 64 * 4         # R codes at 4 bits
            + 4 * 2 * 16)        # R scales
    assert f.bits_per_parameter() == pytest.approx(bits / (48 * 64))  # = 3.375

    f16 = caldera_decompose(W, H, plain(q_bits=2, lr_bits=16, rank=4, iters=1)).factors
    assert f16.l_codes is None and f16.l_weight.dtype == torch.float16 and tuple(f16.r_weight.shape) == (4, 64)
    bits16 = 48 * 64 * 2 + 48 * 16 + (48 * 4 + 4 * 64) * 16  # Q codes, one Q scale per row, float16 L and R
    assert f16.bits_per_parameter() == pytest.approx(bits16 / (48 * 64))


@pytest.mark.parametrize("dim", [64, 48, 576, 192])  # 48 = 16·3, 576 = 64·9, 192 = 64·3 (SmolLM2 k/v)
def test_random_hadamard_is_orthogonal_and_reproducible(dim: int) -> None:
    U = random_hadamard(dim, 7)
    assert torch.allclose(U.T @ U, torch.eye(dim), atol=1e-5)
    assert torch.equal(U, random_hadamard(dim, 7))
    assert not torch.allclose(U, random_hadamard(dim, 8))
    x = torch.randn(5, dim)
    assert torch.allclose(rotate(x, 7), x @ U.T, atol=1e-5)
    assert torch.allclose(rotate(x, 7, transpose=True), x @ U, atol=1e-5)
    if dim == 64:  # a power of two: a signed, normalised Hadamard matrix
        assert torch.allclose(U.abs(), torch.full_like(U, dim**-0.5))


def test_hadamard_factors_dequantize_to_the_original_basis(wh) -> None:
    W, H = wh
    result = caldera_decompose(W, H, plain(rank=4, iters=4, hadamard=True, seed=3))
    f = result.factors
    assert f.hadamard_seed == 3 and math.isfinite(result.best_error)
    U, V = f.hadamard_matrices()
    Q, L, R = f.parts()  # fitted to U W Vᵀ
    assert torch.allclose(f.dequantize(), U.T @ (Q + L @ R) @ V, atol=1e-6)
    assert activation_error(W, f.dequantize(), H) == pytest.approx(result.best_error, rel=1e-3)
    assert result.best_error < 0.5 * result.rtn_error
    assert activation_error(W, Q + L @ R, H) > 10 * result.best_error  # the rotated basis is not W's


def test_the_defaults_are_the_2_4_preset_and_a_preset_sets_the_rank() -> None:
    default = CalderaConfig()
    assert (default.quantizer, default.hadamard, default.rank, default.lr_bits, default.iters, default.finetune_rank,
            default.finetune_steps) == ("e8p", True, 24, 4, 5, 2, 16)
    assert dataclasses.replace(CalderaConfig(preset="2.4"), preset=None) == default
    for preset, rank, float16 in (("2.1", 4, 1), ("2.2", 8, 2), ("2.4", 24, 2)):
        config = CalderaConfig(preset=preset)
        assert (config.rank, config.finetune_rank, config.finetune_steps) == (rank, float16, 16)
        assert dataclasses.replace(config, group_size=None) == config  # a filled config rebuilds to itself
    unturned = CalderaConfig(preset="2.4", finetune_steps=0)
    assert unturned.finetune_rank == 0 and dataclasses.replace(unturned, iters=2).finetune_rank == 0
    # the rules fill only what was left None, each from the settings given
    assert CalderaConfig(q_bits=3).quantizer == CalderaConfig(group_size=64).quantizer == "uniform"
    assert (CalderaConfig(finetune_steps=0).finetune_rank, CalderaConfig(rank=0).finetune_steps) == (0, 0)
    assert CalderaConfig(rank=2).finetune_rank == 1 and CalderaConfig(rank=0, finetune_signs=True).finetune_steps == 16
    assert CalderaConfig(rank=16).finetune_rank == 4  # a rank given: a quarter of it, not the preset's 2
    assert CalderaConfig(preset="2.2", rank=8, finetune_rank=2).rank == 8  # the preset's own values: no contradiction


def test_a_file_made_with_a_preset_that_has_since_changed_loads_with_its_own_settings(wh, tmp_path: Path) -> None:
    W, H = wh
    config = plain(rank=4, iters=1)
    path = tmp_path / "caldera.safetensors"
    save_caldera(path, {"blocks.0.proj": CalderaLinear.from_linear(_linear(W), H, config)[0]}, config)
    # rewrite its settings as a file saved with `--preset 2.4` when the preset was rank 4 would read
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    metadata["config"] = json.dumps({**json.loads(metadata["config"]), "preset": "2.4"})
    save_file(load_file(str(path)), str(path), metadata=metadata)
    modules, loaded = load_caldera(path)
    assert (loaded.rank, loaded.preset) == (4, None) and modules["blocks.0.proj"].config.rank == 4


@pytest.mark.parametrize("kwargs, shape, words", [
    (dict(rank=700), (576, 1536), ["rank 700", "min(out,in)=576"]),
    (dict(q_bits=5), None, ["q_bits 5", "2, 3, 4, 8"]),
    (dict(lr_bits=5), None, ["lr_bits 5", "16"]),
    (dict(quantizer="foo"), None, ["quantizer 'foo'", "uniform, nf, e8p"]),
    (dict(group_size=100), (576, 576), ["group_size 100", "576", "32", "64"]),
    (dict(iters=0), None, ["iters"]),
    (dict(rank=-1), None, ["--rank must be 0 or a positive integer"]),
    (dict(quantizer="e8p"), (64, 36), ["e8p codes groups of 8 input columns", "64x36", "not a multiple of 8"]),
    (dict(quantizer="e8p", q_bits=3), None, ["--q_bits must be 2"]),
    (dict(quantizer="e8p", group_size=64), None, ["one scale per row", "--group_size"]),
    (dict(rank=4, finetune_rank=5), None, ["--finetune_rank 5 is larger than --rank 4"]),
    (dict(finetune_steps=10, finetune_rank=0), None,
     ["nothing to train", "--finetune_rank", "--lr_bits 16", "--finetune_signs"]),
    (dict(finetune_signs=True, hadamard=False), None, ["needs --hadamard"]),
    (dict(preset="2.1", rank=16), None, ["--preset 2.1 is rank 4 with 1 float16", "--rank 16 contradicts it"]),
    (dict(preset="2.4", finetune_rank=4), None, ["--preset 2.4 is rank 24 with 2 float16", "--finetune_rank 4"]),
    (dict(preset="3"), None, ["preset '3'", "2.1, 2.2, 2.4"]),
    (dict(finetune_rank=2, finetune_steps=5, finetune_holdout=1.0), None, ["--finetune_holdout must lie in (0, 1)"]),
    (dict(finetune_rank=2, finetune_lr=0.0), None, ["--finetune_lr must be positive"]),
    (dict(damp=0.0), None, ["damp"]),
    (dict(rank="8"), None, ["rank", "an integer"]),
])
def test_config_names_the_problem_and_the_choices(kwargs: dict, shape, words: list[str]) -> None:
    """Settings are checked when the config is built; layer shapes when a layer meets the config."""
    with pytest.raises(ColaError) as info:
        check_layer(CalderaConfig(**kwargs), *shape) if shape else CalderaConfig(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    check_layer(CalderaConfig(rank=16, group_size=64), 576, 1536)  # a valid choice passes


def test_decompose_rejects_bad_inputs(wh) -> None:
    W, H = wh
    with pytest.raises(ColaError, match="rank 60 is larger"):
        caldera_decompose(W, H, plain(rank=60))
    with pytest.raises(ColaError, match="Hessian is zero"):
        caldera_decompose(W, torch.zeros(N, N), plain(rank=4))
    with pytest.raises(ColaError, match="Hessian has shape"):
        caldera_decompose(W, H[:8, :8], plain(rank=4))


def test_nf_codebook_generalises_nf4() -> None:
    assert torch.allclose(nf_codebook(4), torch.tensor(NF4), atol=1e-6)
    for bits in (2, 3, 4, 8):
        book = nf_codebook(bits)
        assert len(book) == 2**bits and bool((book.diff() > 0).all())
        assert book[0] == -1 and book[-1] == 1 and bool((book == 0).any())


@pytest.mark.parametrize("quantizer", ["nf", "uniform"])
def test_codes_decode_onto_the_scaled_grid(wh, quantizer: str) -> None:
    W, H = wh
    cfg = plain(q_bits=3, lr_bits=2, rank=4, iters=2, group_size=32, quantizer=quantizer)
    f = caldera_decompose(W, H, cfg).factors
    Q, L, R = f.parts()
    for values, codes, scales, bits in ((Q, f.q_codes, f.q_scales, 3), (L, f.l_codes, f.l_scales, 2),
                                        (R, f.r_codes, f.r_scales, 2)):
        assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
        scale = scales.to(torch.float32).repeat_interleave(codes.shape[1] // scales.shape[1], dim=1)
        grid = nf_codebook(bits) if quantizer == "nf" else torch.arange(2**bits) - (2**bits - 1) / 2
        ratio = values / scale
        assert (ratio[..., None] - grid).abs().amin(-1).max() < 1e-5  # every value is a grid point × its scale
        assert torch.equal(values, dequantize_codes(codes, scales, bits, quantizer))
    assert len(torch.unique(f.q_codes)) == 8  # all 3-bit codes in use


def test_same_seed_same_factors(wh) -> None:
    W, H = wh
    cfg = plain(rank=4, iters=3, hadamard=True, seed=5)
    threads = torch.get_num_threads()
    a = caldera_decompose(W, H, cfg).factors.state_dict("")
    assert torch.get_num_threads() == threads  # the single-threaded run restores the caller's setting
    b = caldera_decompose(W, H, cfg).factors.state_dict("")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = caldera_decompose(W, H, plain(rank=4, iters=3, hadamard=True, seed=6)).factors.state_dict("")
    assert not torch.equal(a["q_codes"], c["q_codes"])


def test_float16_components_take_the_rounding_error_of_the_quantized_ones(wh) -> None:
    W, H = wh
    quantized = caldera_decompose(W, H, plain(rank=4, iters=4))
    mixed = caldera_decompose(W, H, plain(rank=4, iters=4, finetune_rank=2))
    f = mixed.factors
    assert f.l_codes.shape == (M, 2) and f.r_codes.shape == (2, N)
    assert f.l_weight.shape == (M, 2) and f.r_weight.shape == (2, N) and f.l_weight.dtype == torch.float16
    # all four components in float16 is the lr_bits 16 decomposition, and beats four quantized ones clearly (the
    # alternation's iterates move by about 10 %, so one or two float16 components are not compared here)
    full = caldera_decompose(W, H, plain(rank=4, iters=4, finetune_rank=4))
    float16 = caldera_decompose(W, H, plain(rank=4, iters=4, lr_bits=16))
    assert full.errors == float16.errors and torch.equal(full.factors.l_weight, float16.factors.l_weight)
    assert full.best_error < 0.8 * quantized.best_error
    left, right = f.low_rank()
    assert left.shape == (M, 4) and right.shape == (4, N)
    assert activation_error(W, f.dequantize(), H) == pytest.approx(mixed.best_error, rel=1e-3)
    # two float16 components cost 2·(M + N)·(16 − 4) bits more than quantized ones, less R's two row scales
    extra = f.bits_per_parameter() - quantized.factors.bits_per_parameter()
    assert extra == pytest.approx((2 * (M + N) * 12 - 2 * 16) / (M * N))


def test_rank_zero_is_q_alone(wh) -> None:
    from cola.compress.quant import damped_cholesky, hinv_upper, ldlq

    W, H = wh
    result = caldera_decompose(W, H, plain(rank=0, iters=5))
    assert len(result.errors) == 1  # one LDLQ pass: nothing to alternate with
    f = result.factors
    assert all(getattr(f, k) is None for k in ("l_codes", "r_codes", "l_weight", "r_weight"))
    Hn = H.double() / H.diagonal().mean().double()
    direct = ldlq(W, hinv_upper(damped_cholesky(Hn, 0.01)), 2, "uniform", None)
    assert torch.equal(f.q_codes, direct.codes) and torch.allclose(f.dequantize(), direct.values)
    assert f.bits_per_parameter() == pytest.approx(2 + 16 / N)


def test_e8p_backbone_beats_uniform_2_bit_and_is_counted_at_16_bits_per_8_weights(wh) -> None:
    W, H = wh
    uniform = caldera_decompose(W, H, plain(rank=4, iters=4, hadamard=True))
    lattice = caldera_decompose(W, H, plain(rank=4, iters=4, hadamard=True, quantizer="e8p"))
    f = lattice.factors
    assert f.q_codes.dtype == torch.int16 and f.q_codes.shape == (M, N // 8) and f.shape == (M, N)
    assert lattice.best_error < uniform.best_error and lattice.rtn_error < uniform.rtn_error
    assert activation_error(W, f.dequantize(), H) == pytest.approx(lattice.best_error, rel=1e-3)
    # Q: 16 bits per 8 weights and a float16 scale per row; L and R as with the uniform backbone
    q_bits = (M * (N // 8) * 16 + M * 16) / (M * N)
    low_rank = uniform.factors.bits_per_parameter() - (M * N * 2 + M * 16) / (M * N)
    assert f.bits_per_parameter() == pytest.approx(q_bits + low_rank)
    rank0 = caldera_decompose(W, H, plain(rank=0, quantizer="e8p"))
    assert rank0.factors.bits_per_parameter() == pytest.approx(2 + 16 / N) and rank0.best_error < rank0.rtn_error
