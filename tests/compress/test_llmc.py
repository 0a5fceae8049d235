"""llm-compressor methods on tiny random Llamas: the calibration set arrives whole and in order, the saved
weights show each method's effect (measured on disk), and they reload through transformers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from cola.compress.base import WeightQuantConfig
from cola.compress.calibration import CalibrationSet
from cola.compress.llmc.run import run_llmcompressor, save_llmcompressor
from cola.compress.methods import METHODS, configure
from cola.compress.verify import grid_violation, layer_type, load_saved, saved_weight_summary
from cola.errors import ColaError

from tests.conftest import REPO, byte_tokenizer, tiny_llama

# lengths deliberately unsorted, with a repeat (two different samples of length 9) and a 1-token sample
LENGTHS = (9, 23, 4, 31, 9, 1, 16, 16, 16)  # the last three share a batch
DECODER_LINEARS = 7  # q k v o gate up down


def calibration_set(seed: int = 0) -> CalibrationSet:
    generator = torch.Generator().manual_seed(seed)
    return CalibrationSet(input_ids=[torch.randint(0, 257, (n,), generator=generator) for n in LENGTHS])


def small_llama(seed: int = 0, layers: int = 2, dtype: torch.dtype = torch.float32):
    """hidden 64 / intermediate 128: with group size 32 every row holds 2 or 4 groups."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).to(dtype).eval()


def compress(model: torch.nn.Module, method: str, given: dict[str, Any], out: Path,
             calibration: CalibrationSet | None = None) -> tuple[dict, dict, dict]:
    """What `cola compress` does for an llm-compressor method: configure, prepare, run, save, measure, check."""
    spec = METHODS[method]
    config = spec.prepare(configure(method, given), model)
    info = run_llmcompressor(model, byte_tokenizer(), calibration or calibration_set(), spec, config, quiet=True)
    save_llmcompressor(model, byte_tokenizer(), out)
    summary = spec.check(out, config)
    assert summary == saved_weight_summary(out)
    json.dumps(summary)  # plain JSON
    return info, summary, dataclasses.asdict(config)


def saved_tensor(out: Path, key: str) -> torch.Tensor:
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        return f.get_tensor(key)


# ---------------------------------------------------------------------------------------- calibration data


@pytest.mark.parametrize("method", ["gptq", "wanda"])
def test_calibration_set_reaches_llmcompressor_whole_and_in_order(method, tmp_path, monkeypatch):
    model, calibration = tiny_llama(), calibration_set()
    ids, n = calibration.input_ids, len(calibration)
    at_embedding: list[torch.Tensor] = []
    at_first_linear: list[tuple[int, ...]] = []
    model.model.embed_tokens.register_forward_pre_hook(lambda _m, args: at_embedding.append(args[0].clone()))
    model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(
        lambda _m, args: at_first_linear.append(tuple(args[0].shape)))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)

    compress(model, method, {}, tmp_path / "out", calibration)

    # llm-compressor's sequential pipeline traces the model once with a data-less (meta) copy of the first
    # batch, then runs every batch through each subgraph twice: a calibration pass (hooks on) and an
    # error-propagation pass. Consecutive samples of one length share a batch, unpadded.
    batches = [[0], [1], [2], [3], [4], [5], [6, 7, 8]]
    b = len(batches)
    assert len(at_embedding) == 1 + 2 * b
    assert at_embedding[0].device.type == "meta" and at_embedding[0].shape == (1, len(ids[0]))
    for one_pass in (at_embedding[1:1 + b], at_embedding[1 + b:]):
        assert [tuple(x.shape) for x in one_pass] == [(len(g), len(ids[g[0]])) for g in batches]
        seen = [row for batch in one_pass for row in batch]
        assert len(seen) == n and all(torch.equal(a, sample) for a, sample in zip(seen, ids))
    # the first decoder Linear (where GPTQ's Hessian / Wanda's norms are collected) sees every sample too
    assert at_first_linear == [(len(g), len(ids[g[0]]), 32) for g in batches] * 2
    assert not any(workdir.iterdir()), "llm-compressor wrote into the working directory"


def test_llmcompressor_own_dataset_path_would_reorder_the_set():
    """Why cola hands oneshot a DataLoader: given the Dataset, llm-compressor sorts it by length."""
    from llmcompressor.args import DatasetArguments
    from llmcompressor.datasets.utils import format_calibration_data

    calibration = calibration_set()
    args = DatasetArguments(dataset="x", num_calibration_samples=len(calibration), shuffle_calibration_samples=False,
                            max_seq_length=calibration.sequence_length, batch_size=1)
    loader = format_calibration_data(args, calibration.dataset(), byte_tokenizer())
    lengths = [batch["input_ids"].shape[1] for batch in loader]
    assert sorted(lengths) == sorted(LENGTHS) and lengths == sorted(LENGTHS, reverse=True) != list(LENGTHS)


# ---------------------------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("sparsity", [0.5, 0.25])
def test_pruning_reaches_the_asked_sparsity_in_every_layer(method, sparsity, tmp_path):
    _info, summary, _options = compress(tiny_llama(), method, {"sparsity": sparsity}, tmp_path)
    layers = summary["layers"]
    assert len(layers) == 2 * DECODER_LINEARS and all(e["format"] == "dense" for e in layers.values())
    for name, entry in layers.items():
        assert abs(entry["sparsity"] - sparsity) <= 0.005, name
    assert abs(summary["total"]["sparsity"] - sparsity) <= 0.005
    assert summary["by_type"]["q_proj"]["layers"] == 2
    # lm_head and the embeddings are never pruned
    assert (saved_tensor(tmp_path, "lm_head.weight") == 0).sum() == 0
    # the zeros are in place after reloading through transformers
    reloaded = load_saved(tmp_path)
    weight = reloaded.model.layers[1].mlp.down_proj.weight
    assert torch.equal(weight == 0, saved_tensor(tmp_path, "model.layers.1.mlp.down_proj.weight") == 0)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_two_four_masks_are_exact(method, tmp_path):
    _info, summary, options = compress(tiny_llama(), method, {"pattern": "2:4"}, tmp_path)
    assert options["sparsity"] == 0.5
    for name in summary["layers"]:
        weight = saved_tensor(tmp_path, f"{name}.weight")
        zeros_per_group = (weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1)
        assert (zeros_per_group == 2).all(), name


# ----------------------------------------------------------------------------------------- quantization


def assert_on_grid(out: Path, summary: dict, bits: int) -> None:
    model = load_saved(out)
    modules = dict(model.named_modules())
    for name, entry in summary["layers"].items():
        module = modules[name]
        zero_point = None if entry["symmetric"] else module.weight_zero_point
        assert grid_violation(module.weight.detach(), module.weight_scale.detach(), zero_point, bits) is None, name
    with torch.no_grad():
        assert torch.isfinite(model(torch.arange(10).unsqueeze(0)).logits).all()


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_weights_lie_on_the_grid_with_exact_bits(method, tmp_path):
    info, summary, options = compress(small_llama(), method, {"bits": 4, "group_size": 32}, tmp_path)
    assert info["group_size"] == 32 and options["group_size"] == 32
    for entry in summary["layers"].values():
        assert entry["format"] == "pack-quantized" and entry["num_bits"] == 4 and entry["group_size"] == 32
        assert entry["groups_per_row"] == entry["shape"][1] // 32 and entry["symmetric"]
    # 4-bit codes + one float32 scale per 32 weights; symmetric, so no zero points are stored
    assert summary["total"]["bits_per_parameter"] == 4 + 32 / 32
    assert summary["by_type"]["down_proj"]["bits_per_parameter"] == 4 + 32 / 32
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert not any(key.endswith("weight_zero_point") for key in f.keys())
    assert_on_grid(tmp_path, summary, 4)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["ignore"] == ["lm_head"]
    assert (tmp_path / "recipe.yaml").is_file() and info["recipe"].count("group_size: 32") == 1


def test_bits_per_parameter_count_scales_in_their_stored_dtype(tmp_path):
    """A bfloat16 model stores bfloat16 scales: 3 + 16/64 bits per weight."""
    _info, summary, _options = compress(small_llama(dtype=torch.bfloat16), "rtn", {"bits": 3, "group_size": 64},
                                        tmp_path)
    assert summary["total"]["bits_per_parameter"] == 3 + 16 / 64
    assert summary["total"]["num_bits"] == 3 and summary["total"]["group_size"] == 64
    assert_on_grid(tmp_path, summary, 3)


@pytest.mark.parametrize("bits, layers", [(4, 2), (3, 1)])
def test_awq_runs_and_reloads(bits, layers, tmp_path):
    _info, summary, _options = compress(small_llama(layers=layers), "awq", {"bits": bits, "group_size": 32},
                                        tmp_path)
    # asymmetric: b-bit codes + float32 scale + b-bit zero point (packed) per group of 32
    assert all(not e["symmetric"] for e in summary["layers"].values())
    assert summary["total"]["bits_per_parameter"] == bits + 32 / 32 + bits / 32
    assert_on_grid(tmp_path, summary, bits)


def test_smoothquant_runs_and_reloads(tmp_path):
    _info, summary, _options = compress(small_llama(), "smoothquant", {"smoothing_strength": 0.5}, tmp_path)
    for name, entry in summary["layers"].items():
        # int8 codes + one float32 scale per output channel
        assert entry["format"] == "int-quantized" and entry["groups_per_row"] == 1, name
        assert entry["bits_per_parameter"] == 8 + 32 / entry["shape"][1]
    group = json.loads((tmp_path / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    assert group["input_activations"]["dynamic"] is True and group["input_activations"]["strategy"] == "token"
    assert_on_grid(tmp_path, summary, 8)


# ------------------------------------------------------------------------------------- loud failures


@pytest.mark.parametrize("method, message", [("wanda", "pruned nothing"), ("gptq", "quantized nothing")])
def test_check_compressed_refuses_an_unchanged_model(method, message, tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    summary = saved_weight_summary(tmp_path)
    assert summary["total"]["sparsity"] == 0 and summary["total"]["quantized_layers"] == 0
    config = configure(method, {"group_size": 32} if method == "gptq" else {})
    with pytest.raises(ColaError, match=message):
        METHODS[method].check(tmp_path, config)


def test_check_compressed_catches_the_old_all_prunable_target(tmp_path):
    """The target spelling older recipes used matches no module in llm-compressor 0.14: the run 'succeeds'."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    from cola.compress.llmc.output import library_output
    from cola.compress.llmc.run import _local_name_or_path

    model = tiny_llama()
    before = model.model.layers[0].mlp.down_proj.weight.clone()
    with library_output(True), _local_name_or_path(model):
        oneshot(model=model, tokenizer=byte_tokenizer(), dataset=calibration_set().dataloader(),
                recipe=[WandaPruningModifier(sparsity=0.5, targets="__ALL_PRUNABLE__")], log_dir=None)
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, before)
    save_llmcompressor(model, byte_tokenizer(), tmp_path, quiet=True)
    with pytest.raises(ColaError, match="pruned nothing"):
        METHODS["wanda"].check(tmp_path, configure("wanda", {}))


def save_half_zero(out: Path, odd_layer: str, odd: str) -> None:
    """Every decoder Linear 2:4-pruned (every other column zero) except `odd_layer`."""
    model = tiny_llama()
    with torch.no_grad():
        for name, linear in model.named_modules():
            if isinstance(linear, torch.nn.Linear) and ".layers." in name:
                weight = linear.weight
                if name != odd_layer:
                    weight[:, ::2] = 0
                elif odd == "quarter":
                    weight[:, : weight.shape[1] // 4] = 0
                else:  # half the weights, but the first half of the columns: groups of 4 zeros and of none
                    weight[:, : weight.shape[1] // 2] = 0
    model.save_pretrained(out)


def test_check_compressed_catches_missed_sparsity_and_broken_two_four(tmp_path):
    save_half_zero(tmp_path / "quarter", "model.layers.0.mlp.up_proj", "quarter")
    with pytest.raises(ColaError, match=r"1 of 14 decoder layers miss the asked sparsity 50.00 %.*up_proj at 25.00 %"):
        METHODS["wanda"].check(tmp_path / "quarter", configure("wanda", {}))
    save_half_zero(tmp_path / "blocks", "model.layers.1.mlp.down_proj", "blocks")
    METHODS["sparsegpt"].check(tmp_path / "blocks", configure("sparsegpt", {}))  # unstructured: fine
    with pytest.raises(ColaError, match=r"2:4: 256 groups of 4 input weights in model.layers.1.mlp.down_proj"):
        METHODS["sparsegpt"].check(tmp_path / "blocks", configure("sparsegpt", {"pattern": "2:4"}))


def test_check_compressed_refuses_wrong_bits_or_group(tmp_path):
    compress(small_llama(), "rtn", {"bits": 4, "group_size": 32}, tmp_path)
    with pytest.raises(ColaError, match="not the asked 8 bits"):
        METHODS["rtn"].check(tmp_path, WeightQuantConfig(bits=8, group_size=32), reload=False)
    with pytest.raises(ColaError, match="groups of 64"):
        METHODS["rtn"].check(tmp_path, WeightQuantConfig(bits=4, group_size=64), reload=False)


def test_grid_violation_sees_off_grid_weights():
    scale = torch.full((4, 2), 0.1)
    on_grid = torch.randint(-8, 8, (4, 64)).float() * 0.1
    assert grid_violation(on_grid, scale, None, 4) is None
    assert "away from an integer" in grid_violation(on_grid + 0.02, scale, None, 4)
    assert "outside [-8, 7]" in grid_violation(on_grid * 2, scale, None, 4)


# ------------------------------------------------------------------------------------------------ recipe


def build_recipe(method: str, given: dict[str, Any], model: torch.nn.Module) -> list:
    spec = METHODS[method]
    return spec.recipe(spec.prepare(configure(method, given), model), model)


def test_prepare_refuses_a_group_size_that_does_not_divide():
    with pytest.raises(ColaError, match="--group_size 48 does not divide the input size 32"):
        METHODS["gptq"].prepare(configure("gptq", {"group_size": 48}), tiny_llama())


def test_build_recipe_arguments():
    model = tiny_llama()
    (gptq,) = build_recipe("gptq", {"actorder": True}, model)
    weights = gptq.config_groups["group_0"].weights
    assert (weights.num_bits, weights.group_size, weights.symmetric) == (4, 32, True)  # 32: picked for 32/64
    assert gptq.actorder == "static" and gptq.ignore == ["lm_head"]
    (plain,) = build_recipe("gptq", {}, model)
    assert plain.actorder is None
    (wanda,) = build_recipe("wanda", {"pattern": "2:4"}, model)
    assert wanda.targets == ["LlamaDecoderLayer"] and wanda.mask_structure == "2:4" and wanda.sparsity == 0.5
    smooth, w8a8 = build_recipe("smoothquant", {}, model)
    assert smooth.smoothing_strength == 0.8 and w8a8.config_groups["group_0"].weights.strategy == "channel"
    with pytest.raises(ColaError, match="not an llm-compressor method"):
        run_llmcompressor(model, byte_tokenizer(), None, METHODS["ria"], configure("ria", {}), quiet=True)


def test_layer_type():
    assert layer_type("model.layers.3.self_attn.q_proj.weight") == "q_proj"
    assert layer_type("model.layers.3.mlp.down_proj.weight_packed") == "down_proj"
    assert layer_type("model.layers.3.mlp.down_proj") == "down_proj"


# ------------------------------------------------------------------------------------------------ output


def test_quiet_prints_nothing_and_loud_prints_to_stderr_only(tmp_path, capfd, monkeypatch):
    model = small_llama()
    options = configure("rtn", {"group_size": 32})
    run_llmcompressor(model, byte_tokenizer(), None, METHODS["rtn"], options, quiet=True)
    save_llmcompressor(model, byte_tokenizer(), tmp_path / "quiet")
    assert capfd.readouterr() == ("", "")
    model = small_llama()
    run_llmcompressor(model, byte_tokenizer(), None, METHODS["rtn"], options, quiet=False)
    save_llmcompressor(model, byte_tokenizer(), tmp_path / "piped")
    out, err = capfd.readouterr()
    assert out == "" and "it/s]" not in err  # stderr is no terminal here: the library's bars stay off too
    monkeypatch.setattr("cola.progress.bars_disabled", lambda quiet, stream=None: quiet)  # as on a terminal
    model = small_llama()
    run_llmcompressor(model, byte_tokenizer(), None, METHODS["rtn"], options, quiet=False)
    save_llmcompressor(model, byte_tokenizer(), tmp_path / "loud")
    out, err = capfd.readouterr()
    assert out == "" and "it/s]" in err  # progress bars on stderr, stdout left to cola


def test_library_bars_follow_tqdm_disable_even_where_the_library_enables_them(monkeypatch):
    """compressed-tensors' dispatch bar passes disable= itself, so tqdm alone would ignore TQDM_DISABLE."""
    import compressed_tensors.offload.dispatch as dispatch

    from cola.compress.llmc.output import library_output

    monkeypatch.setattr("cola.progress.bars_disabled", lambda quiet, stream=None: quiet)  # as on a terminal
    with library_output(False):
        assert dispatch.tqdm(range(2), disable=False).disable is False
    monkeypatch.undo()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    with library_output(False):
        assert dispatch.tqdm(range(2), disable=False).disable is True
    assert dispatch.tqdm(range(2), disable=False).disable is False  # put back after the run


QUIET_RUN = """
import sys, torch
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.compress.test_llmc import calibration_set, small_llama
from tests.conftest import byte_tokenizer
from cola.compress.llmc.run import run_llmcompressor, save_llmcompressor
from cola.compress.methods import METHODS, configure
model, options, out = small_llama(layers=1), configure("awq", {{"bits": 4, "group_size": 32}}), Path({out!r})
run_llmcompressor(model, byte_tokenizer(), calibration_set(), METHODS["awq"], options, quiet=True)
save_llmcompressor(model, byte_tokenizer(), out)
METHODS["awq"].check(out, options)
"""


def test_a_quiet_run_in_a_fresh_process_prints_nothing(tmp_path):
    """From the first import of llm-compressor on (its import-time warnings, AWQ's bars) to the reload check."""
    import subprocess
    import sys

    script = QUIET_RUN.format(repo=str(REPO), out=str(tmp_path / "out"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (done.stdout, done.stderr) == ("", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_ordered_batches_keep_order_and_never_mix_lengths():
    from cola.compress.calibration import ordered_batches

    assert ordered_batches([4, 4, 4, 2, 4, 4], max_batch_tokens=8) == [[0, 1], [2], [3], [4, 5]]
    assert ordered_batches([10, 10], max_batch_tokens=4) == [[0], [1]]  # a long sample still gets a batch


def test_quiet_load_of_a_quantized_model_draws_no_bars(tmp_path, capfd):
    """compressed-tensors decompresses on the first forward, with a bar of its own: load_compressed does that
    forward inside its quiet block, so later forwards (evaluation) print nothing."""
    from cola.compress.api import load_compressed

    compress(small_llama(), "rtn", {"bits": 4, "group_size": 32}, tmp_path)
    capfd.readouterr()
    model, _ = load_compressed(tmp_path, quiet=True)
    with torch.no_grad():
        logits = model(torch.arange(10).unsqueeze(0)).logits
    captured = capfd.readouterr()
    assert torch.isfinite(logits).all()
    assert "Decompressing" not in captured.err + captured.out and "Dispatching" not in captured.err


def test_readme_handoff_snippet_feeds_oneshot_the_whole_set_in_order(tmp_path, monkeypatch):
    """The README's llm-compressor snippet, run exactly as written on a 128-sample set of one length (the case
    where handing over the Dataset itself moved every position): every sample reaches the model, in order."""
    import re

    import numpy as np

    from cola.export import tokenizer_fingerprint, write_outputs

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"<!-- handoff-snippet -->\n```python\n(.*?)```", readme, re.S).group(1)
    rng = np.random.default_rng(0)
    ids = [rng.integers(0, 257, 24).astype(np.int32) for _ in range(128)]
    write_outputs(tmp_path / "out", samples=[{"text": ""} for _ in ids], input_ids=ids,
                  pool={"pool_index": list(range(len(ids)))}, manifest={"tokenizer": tokenizer_fingerprint(
                      byte_tokenizer())})
    tiny_llama().save_pretrained(tmp_path / "model")  # as users load theirs: from a directory
    byte_tokenizer().save_pretrained(tmp_path / "model")
    from transformers import AutoModelForCausalLM

    from llmcompressor.modifiers.pruning import WandaPruningModifier

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    recipe = WandaPruningModifier(sparsity=0.5, targets=["Linear"], ignore=["lm_head"])
    seen: list[torch.Tensor] = []
    model.model.embed_tokens.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    monkeypatch.chdir(tmp_path)
    exec(snippet, {"model": model, "recipe": recipe})  # noqa: S102 - the README's own code, as a user runs it

    real = [x for x in seen if x.device.type != "meta"]  # the pipeline traces once with a data-less copy
    assert all(x.shape == (1, 24) for x in real) and len(real) % 128 == 0 and real
    expected = [torch.as_tensor(x, dtype=torch.long) for x in ids]
    for start in range(0, len(real), 128):  # each pass over the set (calibration, error propagation)
        assert all(torch.equal(a[0], b) for a, b in zip(real[start:start + 128], expected))
    assert (model.model.layers[0].mlp.down_proj.weight == 0).float().mean() == pytest.approx(0.5, abs=0.01)


def test_llm_compressor_metric_lines_stay_off_unless_a_log_level_is_chosen(capsys):
    """Its METRIC level (7 timing lines a layer) ranks above WARNING in loguru; cola shows it only on request."""
    from loguru import logger

    from cola.compress.llmc.output import import_llmcompressor

    import_llmcompressor()
    library = logger.patch(lambda record: record.update(name="llmcompressor.utils.metric_logging"))
    library.log("METRIC", "time 0.17s")
    library.warning("a real warning")
    err = capsys.readouterr().err
    assert "a real warning" in err and "METRIC" not in err
