"""The shared statistics module, the sequential driver, RIA, the method registry and the group size."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cola.compress.base import GROUP_SIZES, KINDS, resolve_group_size
from cola.compress.calibration import CalibrationSet
from cola.compress.driver import compress_sequentially
from cola.compress.methods import METHODS, configure
from cola.compress.pruning import prune_mask, ria_scores
from cola.compress.stats import collect_input_stats
from cola.errors import ColaError
from tests.conftest import tiny_llama


def _calibration(lengths=(24, 24, 17, 24, 9), seed=0) -> CalibrationSet:
    gen = torch.Generator().manual_seed(seed)
    return CalibrationSet(input_ids=[torch.randint(0, 257, (n,), generator=gen) for n in lengths])


def _hessians_by_full_forward(model, calibration) -> dict[str, torch.Tensor]:
    """XᵀX of every decoder Linear, from plain forwards of each sample: the reference for the driver."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    with torch.no_grad(), collect_input_stats(linears, "hessian") as stats:
        for ids in calibration.input_ids:
            model(input_ids=ids[None])
    return {n: s.hessian for n, s in stats.items()}


def test_stats_hessian_and_norms_match_direct_computation():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 3), torch.nn.Linear(6, 4)
    x1, x2 = torch.randn(2, 5, 6), torch.randn(7, 6)
    with collect_input_stats({"a": a, "b": b}, "hessian") as full:
        for x in (x1, x2):
            a(x), b(x)  # b reads the same tensor as a: the work is shared, the result must not be
    rows = torch.cat([x1.reshape(-1, 6), x2])
    for name in "ab":
        assert full[name].tokens == 17
        torch.testing.assert_close(full[name].hessian, rows.T @ rows, rtol=1e-5, atol=1e-5)
    with collect_input_stats({"a": a}, "norms") as norms:
        a(x1), a(x2)
    torch.testing.assert_close(norms["a"].input_norms, rows.norm(dim=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="only input norms"):
        norms["a"].hessian


def test_driver_without_changes_sees_what_a_full_forward_sees():
    model, calibration = tiny_llama(layers=3), _calibration()
    expected = _hessians_by_full_forward(model, calibration)
    seen: dict[str, torch.Tensor] = {}

    def record(name, _linear, stats):
        seen[name] = stats.hessian

    tokens = compress_sequentially(model, calibration, record, stats_kind="hessian", quiet=True,
                                   max_batch_tokens=48)  # batches [0, 1], [2], [3], [4]
    assert set(seen) == set(expected) and len(seen) == 3 * 7
    assert set(tokens.values()) == {calibration.num_tokens}
    for name in expected:
        torch.testing.assert_close(seen[name], expected[name], rtol=1e-4, atol=1e-3)


def test_driver_feeds_each_block_the_outputs_of_the_compressed_blocks_before_it():
    model, calibration = tiny_llama(layers=2), _calibration(seed=1)
    seen: dict[str, torch.Tensor] = {}

    def halve_first_block(name, linear, stats):
        seen[name] = stats.hessian
        if ".0." in name:
            linear.weight.data.mul_(0.5)

    compress_sequentially(model, calibration, halve_first_block, stats_kind="hessian", quiet=True)
    after = _hessians_by_full_forward(model, calibration)  # the model as compressed
    second = "model.layers.1.mlp.down_proj"
    torch.testing.assert_close(seen[second], after[second], rtol=1e-4, atol=1e-3)


def test_driver_replacement_module_is_installed():
    model, calibration = tiny_llama(layers=2), _calibration(lengths=(8, 8))

    def replace(name, linear, _stats):
        return torch.nn.Identity() if name.endswith("layers.1.mlp.down_proj") else None

    compress_sequentially(model, calibration, replace, stats_kind="norms", quiet=True)
    assert isinstance(model.model.layers[1].mlp.down_proj, torch.nn.Identity)
    assert isinstance(model.model.layers[0].mlp.down_proj, torch.nn.Linear)


def test_ria_scores_by_hand():
    w = torch.tensor([[1.0, -3.0], [2.0, 4.0]])
    norms = torch.tensor([4.0, 9.0])
    # |w|/row sum + |w|/column sum, times sqrt(norm)
    expected = torch.tensor([[(1 / 4 + 1 / 3) * 2, (3 / 4 + 3 / 7) * 3], [(2 / 6 + 2 / 3) * 2, (4 / 6 + 4 / 7) * 3]])
    torch.testing.assert_close(ria_scores(w, norms, 0.5), expected)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_ria_unstructured_mask_prunes_exact_fraction_per_row_lowest_first(sparsity):
    scores = torch.rand(16, 40, generator=torch.Generator().manual_seed(3))
    mask = prune_mask(scores, sparsity, "unstructured")
    assert (mask.sum(dim=1) == round(40 * sparsity)).all()
    assert (scores[mask].reshape(16, -1).max(dim=1).values
            <= scores[~mask].reshape(16, -1).min(dim=1).values).all()


def test_ria_two_four_mask_is_exactly_two_of_four():
    scores = torch.rand(8, 32, generator=torch.Generator().manual_seed(4))
    mask = prune_mask(scores, 0.5, "2:4").reshape(8, 8, 4)
    assert (mask.sum(dim=-1) == 2).all()
    groups = scores.reshape(8, 8, 4)
    assert (groups[mask].reshape(8, 8, 2).max(-1).values <= groups[~mask].reshape(8, 8, 2).min(-1).values).all()


@pytest.mark.parametrize("method, given, message", [
    ("gptq", {"rank": 8}, "--rank does not apply to method 'gptq'"),
    ("wanda", {"sparsity": 1.0}, "must lie in (0, 1)"),
    ("wanda", {"sparsity": 0.0}, "must lie in (0, 1)"),
    ("gptq", {"bits": 5}, "Valid choices: 2, 3, 4, 8"),
    ("caldera", {"lr_bits": 1}, "Valid choices: 2, 3, 4, 8, 16"),
    ("ria", {"pattern": "4:8"}, "Valid choices: unstructured, 2:4"),
    ("sparsegpt", {"pattern": "2:4", "sparsity": 0.6}, "contradicts"),
    ("flatquant", {"kv_bits": 2}, "--kv_bits 2 is not supported. Valid choices: 4, 8, 16"),
    ("gtpq", {}, "Did you mean 'gptq'"),
    ("caldera", {"rank": -2}, "--rank must be 0 or a positive integer"),
])
def test_bad_options_are_one_line_errors(method, given, message):
    with pytest.raises(ColaError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        configure(method, given)
    assert "\n" not in str(info.value)


def test_options_fill_defaults_and_two_four_implies_half():
    assert dataclasses.asdict(configure("wanda", {"pattern": "2:4"})) == {"sparsity": 0.5, "pattern": "2:4"}
    assert dataclasses.asdict(configure("gptq", {"bits": 3, "actorder": None})) == {"bits": 3, "group_size": None,
                                                                                   "actorder": False}


def test_group_size_is_picked_for_the_model_or_refused():
    assert resolve_group_size([576, 1536], None) == 64
    assert resolve_group_size([4096, 11008], None) == 128
    assert resolve_group_size([96, 160], None) == 32
    assert resolve_group_size([48, 80], None) == 16  # the one candidate list goes down to 16
    with pytest.raises(ColaError, match="valid group sizes for this model: 64, 32, 16"):
        resolve_group_size([576, 1536], 128)
    with pytest.raises(ColaError, match="no group size of 128, 64, 32, 16 divides"):
        resolve_group_size([36, 80], None)
    assert GROUP_SIZES == (128, 64, 32, 16)


def test_every_method_with_a_group_size_resolves_it_once_the_same_way():
    """rtn, gptq and awq pick the group size for the model; CALDERA keeps None (one scale per row) and checks a
    given one with the same rule."""
    model = tiny_llama()  # input sizes 32 and 64
    for name in ("rtn", "gptq", "awq"):
        assert METHODS[name].prepare(configure(name, {}), model).group_size == 32
        with pytest.raises(ColaError, match="--group_size 48 does not divide the input size 32"):
            METHODS[name].prepare(configure(name, {"group_size": 48}), model)
    assert METHODS["caldera"].prepare(configure("caldera", {"rank": 4}), model).group_size is None
    assert METHODS["caldera"].prepare(configure("caldera", {"rank": 4, "group_size": 16}), model).group_size == 16
    with pytest.raises(ColaError, match="--group_size 48 does not divide the input size 32"):
        METHODS["caldera"].prepare(configure("caldera", {"rank": 4, "group_size": 48}), model)


def test_method_configs_are_typed_and_shared_flags_mean_one_thing():
    """One config class per method, validated at construction; a field several methods share has one type, help
    and default, so one command-line flag serves them all."""
    import typing

    with pytest.raises(ColaError, match="sparsity"):
        METHODS["wanda"].config(sparsity="half")
    seen: dict[str, tuple] = {}
    for method in METHODS.values():
        hints = typing.get_type_hints(method.config)
        for field in dataclasses.fields(method.config):
            meta = (hints[field.name], field.metadata["help"], field.metadata.get("choices"), field.default)
            assert seen.setdefault(field.name, meta) == meta, (method.name, field.name)
        assert method.kind in KINDS
        assert method.backend in ("llm-compressor", "native")
    assert [m for m in METHODS.values() if not m.needs_calibration] == [METHODS["rtn"]]


def test_the_method_registry_loads_no_torch():
    import subprocess
    import sys

    code = "import sys, cola.compress.methods; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
