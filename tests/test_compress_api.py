"""`cola compress` end to end on a tiny Llama: native methods, saved files, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cola.cli import main
from cola.compress.api import SUMMARY_FILE, compress, load_compressed
from cola.compress.calibration import load_calibration
from cola.errors import ColaError
from cola.export import tokenizer_fingerprint, write_outputs
from tests.conftest import byte_tokenizer


def write_calibration(path: Path, tokenizer, lengths=(32, 32, 20, 32), seed: int = 0) -> Path:
    """A curate-style output directory holding random token sequences."""
    rng = np.random.default_rng(seed)
    ids = [rng.integers(0, 256, n) for n in lengths]
    write_outputs(path, samples=[{"text": ""} for _ in ids], input_ids=ids, pool={"pool_index": list(range(len(ids)))},
                  manifest={"tokenizer": tokenizer_fingerprint(tokenizer)})
    return path


@pytest.fixture()
def calibration_dir(tmp_path: Path) -> Path:
    return write_calibration(tmp_path / "calib", byte_tokenizer())


def test_calibration_set_is_read_whole_and_in_order(tmp_path: Path):
    path = write_calibration(tmp_path / "c", byte_tokenizer(), lengths=(5, 9, 3), seed=4)
    calib = load_calibration(path, byte_tokenizer())
    rng = np.random.default_rng(4)
    assert [x.tolist() for x in calib.input_ids] == [rng.integers(0, 256, n).tolist() for n in (5, 9, 3)]
    assert calib.sequence_length == 9 and calib.num_tokens == 17


def test_calibration_made_with_another_vocabulary_is_refused(calibration_dir: Path):
    other = byte_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(ColaError, match="different vocabulary"):
        load_calibration(calibration_dir, other)


def test_ria_through_compress_reaches_sparsity_and_reloads(tiny_model_dir: Path, calibration_dir: Path, tmp_path):
    out = tmp_path / "ria"
    summary = compress(str(tiny_model_dir), calibration_dir, "ria", out, sparsity=0.6, quiet=True)
    weights = load_file(str(out / "model.safetensors"))
    linears = {k: v for k, v in weights.items() if ".layers." in k and k.endswith("proj.weight")}
    assert len(linears) == 3 * 7
    for name, w in linears.items():  # a whole number of weights per row: round(in_features x 0.6)
        assert ((w == 0).sum(dim=1) == round(w.shape[1] * 0.6)).all(), name
    params = sum(w.numel() for w in linears.values())
    zeros = sum((w == 0).sum().item() for w in linears.values())
    assert summary["weights"]["total"]["sparsity"] == pytest.approx(zeros / params)
    assert json.loads((out / SUMMARY_FILE).read_text())["method"] == "ria"
    assert summary["torch_threads"] == torch.get_num_threads() and "torch" in summary["libraries"]
    model, tok = load_compressed(out)
    assert model.generate(**tok("ab", return_tensors="pt"), max_new_tokens=3, do_sample=False).shape[1] == 5


def test_ria_two_four_through_cli(tiny_model_dir: Path, calibration_dir: Path, tmp_path, capsys):
    out = tmp_path / "ria24"
    assert main(["compress", "--model", str(tiny_model_dir), "--calibration", str(calibration_dir),
                 "--method", "ria", "--pattern", "2:4", "--output_dir", str(out), "--quiet"]) == 0
    assert "sparsity 50.00 %" in capsys.readouterr().out
    w = load_file(str(out / "model.safetensors"))["model.layers.1.mlp.down_proj.weight"]
    assert ((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) == 2).all()


def test_existing_model_is_kept_unless_overwrite(tiny_model_dir: Path, calibration_dir: Path, tmp_path, capsys):
    out = tmp_path / "m"
    args = ["compress", "--model", str(tiny_model_dir), "--calibration", str(calibration_dir), "--method", "ria",
            "--output_dir", str(out), "--quiet"]
    assert main(args) == 0
    before = (out / "model.safetensors").read_bytes()
    assert main(args + ["--sparsity", "0.3"]) == 2
    assert "already holds a model; pass --overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert main(args + ["--sparsity", "0.3", "--overwrite"]) == 0
    w = load_file(str(out / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    assert ((w == 0).sum(dim=1) == round(32 * 0.3)).all()


@pytest.mark.parametrize("extra, message", [
    (["--method", "gptq", "--rank", "4"], "--rank does not apply to method 'gptq'"),
    (["--method", "wanda", "--sparsity", "1.5"], "--sparsity must lie in (0, 1)"),
    (["--method", "gptq", "--bits", "6"], "Valid choices: 2, 3, 4, 8"),
    (["--method", "ria", "--calibration", "no/such/dir"], "calibration directory no/such/dir does not exist"),
    (["--method", "wanda"], "needs a calibration set"),
    (["--method", "llm-pruner"], "not supported yet"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_model_dir: Path, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    assert main(["compress", "--model", str(tiny_model_dir), "--output_dir", str(out), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cola: error:") and message in err and "\n" not in err
    assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith("."))


def test_a_rank_larger_than_a_layer_allows_is_refused(tiny_model_dir: Path, calibration_dir: Path, tmp_path):
    with pytest.raises(ColaError, match="rank 40 is larger"):
        compress(str(tiny_model_dir), calibration_dir, "caldera", tmp_path / "c", rank=40, quiet=True)
    assert not any((tmp_path / "c").glob("*.safetensors"))


def test_caldera_through_compress_saves_codes_and_reloads_identically(tiny_model_dir: Path, calibration_dir: Path,
                                                                      tmp_path):
    out = tmp_path / "caldera"
    summary = compress(str(tiny_model_dir), calibration_dir, "caldera", out, rank=4, iters=3, quiet=True)
    assert (out / "caldera.safetensors").is_file()
    assert 2.0 < summary["weights"]["total"]["bits_per_parameter"] < 4.0
    compact, tok = load_compressed(out)
    from cola.compress.caldera import CalderaLinear
    from transformers import AutoModelForCausalLM

    assert sum(isinstance(m, CalderaLinear) for m in compact.modules()) == 3 * 7
    dense = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers: the dequantized weights
    ids = torch.arange(40)[None]
    with torch.no_grad():
        torch.testing.assert_close(compact(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-4)
    plain, _ = load_compressed(out, caldera_layers=False)  # the dense Q + LR checkpoint, as evaluation uses it
    assert not any(isinstance(m, CalderaLinear) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, compact(ids).logits, rtol=1e-4, atol=1e-4)
    assert summary["details"]["mean_activation_error"] < summary["details"]["mean_rtn_error"]
