"""CALDERA's fine-tuning: float16 factors (and rotation signs) trained block by block against the dense block's
outputs, the best held-out step kept, saved in caldera.safetensors and counted in the bits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cola.compress.api import compress, load_compressed
from cola.compress.caldera import CalderaLinear, load_caldera
from cola.compress.caldera.finetune import held_out_samples
from cola.errors import ColaError
from tests.compress.test_api import write_calibration
from tests.conftest import byte_tokenizer

SAMPLES = 32
# (out, in) of each Linear of a tiny_llama block: q, k, v (2 of 4 heads for keys and values), o, gate, up, down
LAYER_SHAPES = [(32, 32), (16, 32), (16, 32), (32, 32), (64, 32), (64, 32), (32, 64)]


@pytest.fixture()
def calibration(tmp_path: Path) -> Path:
    return write_calibration(tmp_path / "calib", byte_tokenizer(), lengths=(64,) * SAMPLES, seed=3)


def test_held_out_samples_are_spread_and_never_all() -> None:
    assert held_out_samples(8, 0.125) == [4]
    assert held_out_samples(128, 0.125) == list(range(4, 128, 8))
    assert held_out_samples(2, 0.5) == [1]
    with pytest.raises(ColaError, match="holds out 1 of 1 calibration samples .* leaves none to train on"):
        held_out_samples(1, 0.125)


def test_finetuning_lowers_the_held_out_error_and_saves_the_trained_factors(tiny_model_dir: Path, calibration: Path,
                                                                           tmp_path: Path):
    # 28 samples to train on in 7 batches of 4, 4 held out in a batch of their own
    options = dict(rank=4, iters=2, finetune_rank=2, max_batch_tokens=256, quiet=True)
    plain = compress(str(tiny_model_dir), calibration, "caldera", tmp_path / "plain", finetune_steps=0, **options)
    tuned = compress(str(tiny_model_dir), calibration, "caldera", tmp_path / "tuned", finetune_steps=30,
                     finetune_lr=3e-3, **options)
    assert "finetune" not in plain["details"]
    log = tuned["details"]["finetune"]
    assert log["held_out_samples"] == [4, 12, 20, 28] and log["steps_per_block"] == 30
    assert log["trained_on"]["path"] == str(calibration) and log["trained_on"]["num_samples"] == SAMPLES
    assert [b["block"] for b in log["blocks"]] == [0, 1, 2]
    for block in log["blocks"]:
        assert block["held_out_best"] <= block["held_out_before"]
        assert block["parameters"] == sum(2 * (m + n) for m, n in LAYER_SHAPES)  # 2 float16 components per layer
        assert block["best_step"] > 0 and block["held_out_best"] < 0.95 * block["held_out_before"]

    before, _ = load_caldera(tmp_path / "plain/caldera.safetensors")
    after, _ = load_caldera(tmp_path / "tuned/caldera.safetensors")
    first = "model.layers.0.self_attn.q_proj"
    assert torch.equal(before[first].q_codes, after[first].q_codes)  # block 0: same decomposition, then trained
    assert not torch.equal(before[first].l_weight, after[first].l_weight)
    assert after[first].l_weight.dtype == torch.float16
    with safe_open(str(tmp_path / "tuned/caldera.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["finetune"])["path"] == str(calibration)
    # the bits are unchanged by training (the float16 components were counted already)
    assert tuned["weights"]["total"]["bits_per_parameter"] == plain["weights"]["total"]["bits_per_parameter"]

    # the saved model computes with the trained factors, and its dense checkpoint agrees
    compact, _ = load_compressed(tmp_path / "tuned")
    dense, _ = load_compressed(tmp_path / "tuned", caldera_layers=False)
    ids = torch.arange(40)[None]
    with torch.no_grad():
        torch.testing.assert_close(compact(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-4)


def test_finetuned_signs_are_stored_and_counted(tiny_model_dir: Path, calibration: Path, tmp_path: Path):
    summary = compress(str(tiny_model_dir), calibration, "caldera", tmp_path / "signs", rank=4, iters=1,
                       hadamard=True, finetune_signs=True, finetune_steps=10, finetune_lr=1e-2, quiet=True)
    modules, _ = load_caldera(tmp_path / "signs/caldera.safetensors")
    layer = modules["model.layers.0.mlp.down_proj"]
    assert layer.u_signs.shape == (32,) and layer.v_signs.shape == (64,) and layer.u_signs.dtype == torch.float16
    assert not torch.equal(layer.v_signs.abs(), torch.ones(64, dtype=torch.float16))  # trained away from ±1
    plain = compress(str(tiny_model_dir), calibration, "caldera", tmp_path / "nosigns", rank=4, iters=1,
                     hadamard=True, quiet=True)
    extra = summary["weights"]["total"]["stored_bits"] - plain["weights"]["total"]["stored_bits"]
    assert extra == 16 * 3 * sum(m + n for m, n in LAYER_SHAPES)  # every layer's u and v signs, 16 bits each
    compact, _ = load_compressed(tmp_path / "signs")
    dense, _ = load_compressed(tmp_path / "signs", caldera_layers=False)
    ids = torch.arange(40)[None]
    with torch.no_grad():
        torch.testing.assert_close(compact(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, CalderaLinear) for m in compact.modules())


def test_a_set_too_small_to_hold_out_is_refused_before_any_work(tiny_model_dir: Path, tmp_path: Path):
    one = write_calibration(tmp_path / "one", byte_tokenizer(), lengths=(32,))
    with pytest.raises(ColaError, match="leaves none to train on"):
        compress(str(tiny_model_dir), one, "caldera", tmp_path / "out", rank=4, finetune_rank=2, finetune_steps=5,
                 hessian_cache=str(tmp_path / "h"), quiet=True)
    assert not (tmp_path / "h").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_whole_method_from_the_command_line_reloads_and_generates(tiny_model_dir: Path, calibration: Path,
                                                                      tmp_path: Path, capsys):
    """A preset (rank 4) and the defaults: E8P backbone, rotation, a quarter of the components in float16 and
    fine-tuned; Hessians cached. One `cola compress` line, whose printed summary names the settings, where the
    Hessians came from and what fine-tuning gained."""
    from cola.cli import main

    out = tmp_path / "e8p"
    assert main(["compress", "--model", str(tiny_model_dir), "--calibration", str(calibration), "--output_dir",
                 str(out), "--method", "caldera", "--preset", "2.1", "--finetune_steps", "4", "--iters", "2",
                 "--hessian_cache", str(tmp_path / "h"), "--quiet"]) == 0
    summary = json.loads((out / "compression_summary.json").read_text())
    assert {k: summary["options"][k] for k in ("preset", "rank", "quantizer", "hadamard", "finetune_rank")} == \
        {"preset": "2.1", "rank": 4, "quantizer": "e8p", "hadamard": True, "finetune_rank": 1}
    assert summary["details"]["hessians"] == "dense, computed and cached"
    assert len(summary["details"]["finetune"]["blocks"]) == 3
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("  settings: preset 2.1, quantizer e8p, q_bits 2, rank 4, lr_bits 4, finetune_rank 1, "
                                 "finetune_steps 4, hadamard True, iters 2, hessian_cache ")
    assert printed[2] == "  Hessians: dense, computed and cached"
    assert printed[3].startswith("  fine-tuning: held-out relative error of a block ")
    assert printed[3].endswith("(mean of 3 blocks)")
    modules, config = load_caldera(out / "caldera.safetensors")
    assert config.quantizer == "e8p" and all(m.q_codes.dtype == torch.int16 for m in modules.values())
    model, tok = load_compressed(out)
    generated = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 8)
