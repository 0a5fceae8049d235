"""`cola compress` end to end on a tiny Llama: native methods, saved files, and bad input."""

from __future__ import annotations

import json
import re
import shutil
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
from tests.conftest import byte_tokenizer, write_jsonl


def truncate_half(path: Path) -> None:
    """Cut a file to half its size, as an interrupted copy or download leaves it."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


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
    (["--method", "llm-pruner", "--pruning_ratio", "1.2"], "--pruning_ratio must lie in (0, 1), got 1.2"),
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
    # the defaults (E8P, rotation, a fine-tuned float16 component) at rank 4: scales and factors weigh heavily on
    # 32-wide layers
    assert 2.5 < summary["weights"]["total"]["bits_per_parameter"] < 5.5
    assert summary["details"]["finetune"]["steps_per_block"] == 16
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
    cached, _ = load_compressed(out, caldera_forward="cached")  # CalderaLinear with its dense weight built once
    layers = [m for m in cached.modules() if isinstance(m, CalderaLinear)]
    assert len(layers) == 3 * 7 and all(m.dense_weight is not None for m in layers)
    with torch.no_grad():
        torch.testing.assert_close(cached(ids).logits, compact(ids).logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ColaError, match="caldera_forward .dense.. Valid choices: cached, factors"):
        load_compressed(out, caldera_forward="dense")
    assert summary["details"]["mean_activation_error"] < summary["details"]["mean_rtn_error"]


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where, message", [
    ("calibration", "is the calibration directory: the compressed model would land on top of its own input"),
    ("inside calibration", "lies inside the calibration directory"),
    ("above calibration", "contains the calibration directory"),
    ("model", "is the model's directory: the compressed model would land on top of its own input"),
    ("above model", "contains the model's directory"),
    ("empty", "--output_dir is empty: name the directory to write to"),
])
def test_an_output_on_top_of_its_own_input_is_refused(tiny_model_dir: Path, tmp_path, capsys, where, message):
    model = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_model_dir, model)
    calibration = write_calibration(tmp_path / "data" / "calib", byte_tokenizer())
    capsys.readouterr()
    output = {"calibration": calibration, "inside calibration": calibration / "ria",
              "above calibration": tmp_path / "data", "model": model, "above model": tmp_path / "models",
              "empty": ""}[where]
    before = _files(tmp_path)
    assert main(["compress", "--model", str(model), "--calibration", str(calibration), "--method", "ria",
                 "--output_dir", str(output), "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cola: error: ") and message in err and "\n" not in err
    assert _files(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["data", "models"]


@pytest.mark.parametrize("damage, message", [
    (lambda c: (c / "manifest.json").write_text('{"outputs": '), "manifest.json is not valid JSON"),
    (lambda c: truncate_half(next((c / "calibration_dataset").glob("*.arrow"))),
     "does not match its manifest.json: calibration_dataset/data-00000-of-00001.arrow changed"),
], ids=["malformed manifest", "truncated arrow"])
def test_a_damaged_calibration_set_is_refused_before_the_model_loads(calibration_dir: Path, tmp_path, capsys,
                                                                     damage, message):
    damage(calibration_dir)
    # the model does not exist: the calibration error coming first shows it is checked before any loading
    assert main(["compress", "--model", str(tmp_path / "no-model"), "--calibration", str(calibration_dir),
                 "--method", "ria", "--output_dir", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cola: error: calibration directory {calibration_dir}") and message in err
    assert "curate again" in err and "\n" not in err and not (tmp_path / "out").exists()


def test_a_folder_of_other_files_is_refused(tiny_model_dir: Path, calibration_dir: Path, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    assert main(["compress", "--model", str(tiny_model_dir), "--calibration", str(calibration_dir), "--method",
                 "ria", "--output_dir", str(out), "--overwrite", "--quiet"]) == 2
    assert ("holds files that are not a model (thesis.tex); cola replaces its output directory as a whole"
            in capsys.readouterr().err)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_overwrite_swaps_in_the_new_model_whole_and_keeps_user_files(tiny_model_dir: Path, calibration_dir: Path,
                                                                   tmp_path):
    out = tmp_path / "m"
    first = compress(str(tiny_model_dir), calibration_dir, "ria", out, sparsity=0.3, quiet=True)
    assert set(first["outputs"]) == set(_files(out)) - {SUMMARY_FILE}  # the summary lists every other file
    (out / "notes.txt").write_text("my notes")
    (out / "stale.safetensors").write_bytes(b"an earlier model's shard")  # not in the summary: the user's
    second = compress(str(tiny_model_dir), calibration_dir, "ria", out, sparsity=0.6, overwrite=True, quiet=True)
    files = _files(out)
    assert set(files) == set(second["outputs"]) | {SUMMARY_FILE, "notes.txt", "stale.safetensors"}
    assert files["notes.txt"] == b"my notes" and not list(tmp_path.glob(".m.cola-*"))
    assert json.loads(files[SUMMARY_FILE])["options"]["sparsity"] == 0.6


def test_a_compress_killed_before_its_swap_leaves_the_earlier_model_whole(tiny_model_dir: Path,
                                                                         calibration_dir: Path, tmp_path):
    from tests.test_export import kill_mid_write

    out = tmp_path / "m"
    compress(str(tiny_model_dir), calibration_dir, "ria", out, sparsity=0.3, quiet=True)
    before = _files(out)
    kill_mid_write(tmp_path, "import cola.export\ncola.export._fsync_tree = pause",
                   "from cola.compress.api import compress\n"
                   f"compress({str(tiny_model_dir)!r}, {str(calibration_dir)!r}, 'ria', {str(out)!r}, "
                   "sparsity=0.6, overwrite=True, quiet=True)")
    assert _files(out) == before
    load_compressed(out)  # its hashes verify
    assert len(list(tmp_path.glob(".m.cola-staging-*"))) == 1
    compress(str(tiny_model_dir), calibration_dir, "ria", out, sparsity=0.6, overwrite=True, quiet=True)
    assert not list(tmp_path.glob(".m.cola-*"))


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1])),
     "does not match its compression_summary.json: model.safetensors changed after it was written"),
    (lambda f: f.unlink(), "is incomplete: model.safetensors, listed in its compression_summary.json, is missing"),
], ids=["flipped byte in the weights", "missing weights"])
def test_a_compressed_model_that_does_not_match_its_summary_is_refused(tiny_model_dir: Path, calibration_dir: Path,
                                                                       tmp_path, capsys, damage, message):
    out = tmp_path / "m"
    compress(str(tiny_model_dir), calibration_dir, "ria", out, quiet=True)
    damage(out / "model.safetensors")
    with pytest.raises(ColaError, match=f"^compressed model {out} {message}"):
        load_compressed(out)
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "some words to score"}])
    assert main(["evaluate", str(out), "--task", f"ppl:{text}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "compress again" in err and "\n" not in err


def test_readme_adding_a_method_is_one_module_and_one_registration_line(tiny_model_dir: Path, tmp_path,
                                                                        monkeypatch):
    """The README's example method, as written, registered by its one line (`load_method`): its options are checked
    before the model loads, it runs, and the check its kind inherits sees its effect on the saved weights."""
    import re

    from cola.compress.methods import METHODS
    from tests.conftest import REPO

    from cola.compress.methods import load_method

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"<!-- adding-a-method -->\n```python\n(.*?)```", readme, re.S).group(1)
    line = re.search(r"one line in `REGISTERED`: `\"cola\.compress\.(\w+):(\w+)\",`", readme)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / f"{line.group(1)}.py").write_text(snippet)  # the README's module, as written
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    monkeypatch.setitem(METHODS, "magnitude", load_method(f"{line.group(1)}:{line.group(2)}"))  # its line
    with pytest.raises(ColaError, match="option --rank does not apply to method 'magnitude'"):
        compress(str(tiny_model_dir), None, "magnitude", tmp_path / "never", rank=4)
    summary = compress(str(tiny_model_dir), None, "magnitude", tmp_path / "m", pattern="2:4", quiet=True)
    assert (summary["method"], summary["kind"], summary["backend"]) == ("magnitude", "pruning", "native")
    assert summary["options"] == {"sparsity": 0.5, "pattern": "2:4"} and summary["calibration"] is None
    assert (summary["device"], summary["dtype"]) == ("cpu", "float32")  # what it ran on, `auto` resolved
    assert summary["weights"]["total"]["sparsity"] == 0.5


@pytest.mark.parametrize("options, message", [
    ({"sparsity": "half"}, "wanda options: sparsity must be a number, got 'half' (a string)"),
    ({"pattern": "4:8"}, "--pattern '4:8' is not supported. Valid choices: unstructured, 2:4"),
    ({"bitz": 4}, "unknown compression option 'bitz'. Did you mean 'bits', 'w_bits', 'q_bits'? Valid choices: "
                  "a_bits, actorder"),
])
def test_python_options_are_checked_like_flags_before_the_model_loads(tmp_path, options, message):
    with pytest.raises(ColaError, match=re.escape(message)) as info:
        compress("no/such/model", tmp_path / "no-calibration", "wanda", tmp_path / "out", **options)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_a_method_config_object_is_the_typed_way_to_pass_options(tiny_model_dir: Path, calibration_dir: Path,
                                                                 tmp_path):
    from cola.compress.base import PruningConfig
    from cola.compress.ria import RIAConfig

    with pytest.raises(ColaError, match="method 'ria' takes a RIAConfig, not a PruningConfig"):
        compress(str(tiny_model_dir), calibration_dir, "ria", tmp_path / "never", config=PruningConfig())
    with pytest.raises(ColaError, match="either as its config or as keywords, not both"):
        compress(str(tiny_model_dir), calibration_dir, "ria", tmp_path / "never", config=RIAConfig(), alpha=1.0)
    summary = compress(str(tiny_model_dir), calibration_dir, "ria", tmp_path / "ria", quiet=True,
                       config=RIAConfig(sparsity=0.6, alpha=1.0), sparsity=None)  # None: not given, as the CLI
    assert summary["options"] == {"sparsity": 0.6, "pattern": "unstructured", "alpha": 1.0}
    assert abs(summary["weights"]["total"]["sparsity"] - 0.6) < 0.01
