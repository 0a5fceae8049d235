"""The Hessian cache: the dense model's Hessians computed once per model + calibration set, then reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cola.compress.api import compress
from cola.compress.calibration import load_calibration
from cola.compress.hessian_cache import MANIFEST
from cola.errors import ColaError
from cola.models import find_decoder_layers, load_model
from tests.compress.test_api import write_calibration
from tests.conftest import byte_tokenizer

LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
          "mlp.up_proj", "mlp.down_proj")


@pytest.fixture()
def calibration_dir(tmp_path: Path) -> Path:
    return write_calibration(tmp_path / "calib", byte_tokenizer())


def _dense_hessians(model_dir: Path, calibration_dir: Path) -> dict[str, torch.Tensor]:
    """Σ x xᵀ of every Linear's inputs over the calibration set, from plain forward hooks on the dense model."""
    model, tok = load_model(str(model_dir), device="cpu", dtype="float32", quiet=True)
    calibration = load_calibration(calibration_dir, tok)
    prefix, blocks = find_decoder_layers(model)
    sums: dict[str, torch.Tensor] = {}
    handles = []
    for index, block in enumerate(blocks):
        for name in LAYERS:
            def hook(_module, args, key=f"{index}.{name}"):
                x = args[0].reshape(-1, args[0].shape[-1]).to(torch.float64)
                sums[key] = sums.get(key, 0) + x.T @ x
            handles.append(block.get_submodule(name).register_forward_pre_hook(hook))
    with torch.no_grad():
        for ids in calibration.input_ids:
            model(ids[None])
    for handle in handles:
        handle.remove()
    return sums


def test_the_cache_holds_the_dense_hessians_and_a_second_run_never_runs_the_model(
        tiny_model_dir: Path, calibration_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cache = tmp_path / "hessians"
    first = compress(str(tiny_model_dir), calibration_dir, "caldera", tmp_path / "r4", rank=4, iters=2,
                     finetune_steps=0, hessian_cache=str(cache), quiet=True)
    assert first["details"]["hessians"] == "dense, computed and cached"
    manifest = json.loads((cache / MANIFEST).read_text())
    assert manifest["complete"] is True and manifest["blocks"] == 3 and manifest["tokens"] == 32 + 32 + 20 + 32
    assert sorted(p.name for p in cache.iterdir()) == [*(f"block_{i:04d}.safetensors" for i in range(3)), MANIFEST]

    from safetensors import safe_open
    expected = _dense_hessians(tiny_model_dir, calibration_dir)
    for index in range(3):
        with safe_open(str(cache / f"block_{index:04d}.safetensors"), framework="pt") as f:
            layers = json.loads(f.metadata()["layers"])
            # q/k/v read one input and gate/up another: 4 matrices per block, each layer mapped to its group's
            assert sorted(f.keys()) == ["mlp.down_proj", "mlp.gate_proj", "self_attn.o_proj", "self_attn.q_proj"]
            assert layers["self_attn.v_proj"] == "self_attn.q_proj" and layers["mlp.up_proj"] == "mlp.gate_proj"
            for name in LAYERS:
                stored = f.get_tensor(layers[name])
                assert stored.dtype == torch.float32
                torch.testing.assert_close(stored.double(), expected[f"{index}.{name}"], rtol=1e-4, atol=1e-3)

    # the second run, at another rank, reads every Hessian and (without fine-tuning) runs no forward at all
    import cola.compress.driver as driver

    def no_forward(*_args, **_kwargs):
        raise AssertionError("the model ran although every Hessian was cached")

    monkeypatch.setattr(driver, "_first_block_inputs", no_forward)
    second = compress(str(tiny_model_dir), calibration_dir, "caldera", tmp_path / "r8", rank=8, iters=2,
                      finetune_steps=0, hessian_cache=str(cache), quiet=True)
    assert second["details"]["hessians"] == "dense, read from the cache"
    # the same settings again from the cache give the first run's factors bit for bit
    again = compress(str(tiny_model_dir), calibration_dir, "caldera", tmp_path / "r4again", rank=4, iters=2,
                     finetune_steps=0, hessian_cache=str(cache), quiet=True)
    assert again["details"]["layer_errors"] == first["details"]["layer_errors"]
    from safetensors.torch import load_file

    stored = load_file(tmp_path / "r4/caldera.safetensors")
    restored = load_file(tmp_path / "r4again/caldera.safetensors")
    assert stored.keys() == restored.keys() and all(torch.equal(stored[k], restored[k]) for k in stored)


def test_a_cache_of_another_calibration_set_or_model_is_refused_and_nothing_is_written(
        tiny_model_dir: Path, calibration_dir: Path, tmp_path: Path):
    cache = tmp_path / "hessians"
    compress(str(tiny_model_dir), calibration_dir, "caldera", tmp_path / "ok", rank=4, iters=1,
             hessian_cache=str(cache), quiet=True)
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    other_set = write_calibration(tmp_path / "other", byte_tokenizer(), seed=7)
    with pytest.raises(ColaError, match=r"holds the Hessians of another calibration set .*give another directory"):
        compress(str(tiny_model_dir), other_set, "caldera", tmp_path / "no1", rank=4, iters=1,
                 hessian_cache=str(cache), quiet=True)
    from tests.conftest import tiny_llama

    other_model = tmp_path / "other-model"
    tiny_llama(layers=3, seed=5).save_pretrained(other_model)
    byte_tokenizer().save_pretrained(other_model)
    with pytest.raises(ColaError, match="holds the Hessians of another model"):
        compress(str(other_model), calibration_dir, "caldera", tmp_path / "no2", rank=4, iters=1,
                 hessian_cache=str(cache), quiet=True)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ColaError, match="is a file; give a directory"):
        compress(str(tiny_model_dir), calibration_dir, "caldera", tmp_path / "no3", rank=4, iters=1,
                 hessian_cache=str(tmp_path / "a-file"), quiet=True)
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
    assert not any((tmp_path / name).exists() and any((tmp_path / name).iterdir()) for name in ("no1", "no2", "no3"))


def test_an_incomplete_cache_is_computed_again(tiny_model_dir: Path, calibration_dir: Path, tmp_path: Path):
    cache = tmp_path / "hessians"
    compress(str(tiny_model_dir), calibration_dir, "caldera", tmp_path / "a", rank=4, iters=1,
             hessian_cache=str(cache), quiet=True)
    manifest = json.loads((cache / MANIFEST).read_text())
    (cache / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))  # as a killed run leaves it
    (cache / "block_0002.safetensors").unlink()
    summary = compress(str(tiny_model_dir), calibration_dir, "caldera", tmp_path / "b", rank=4, iters=1,
                       hessian_cache=str(cache), quiet=True)
    assert summary["details"]["hessians"] == "dense, computed and cached"
    assert (cache / "block_0002.safetensors").is_file() and json.loads((cache / MANIFEST).read_text())["complete"]
