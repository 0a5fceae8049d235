"""`cola export` / `cola.load_calibration`: every toolkit gets every sample once, whole and in curated order.

Each live test runs the printed call as a user would, on a tiny random Llama, and records what reaches the
model's embedding; where a library cannot be installed beside cola (GPTQModel), the export is checked against
its documented input instead and the live part skips with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import cola
from cola.cli import main
from cola.errors import ColaError
from cola.export import tokenizer_fingerprint, write_outputs
from cola.handoff import TARGETS, export_calibration, export_path

from tests.conftest import byte_tokenizer

# unsorted, with a repeat and a 1-token sample: a sort, a shuffle, a length filter or padding all show
RAGGED = (9, 23, 4, 31, 9, 1, 16, 16, 16)


def curated_set(path: Path, lengths: tuple[int, ...] = RAGGED) -> list[torch.Tensor]:
    """A `cola curate` output directory of random samples of `lengths`; returns their ids in curated order."""
    rng = np.random.default_rng(len(lengths))
    ids = [rng.integers(0, 257, n).astype(np.int32) for n in lengths]
    texts = [f"sample {i}: {'é' * i}" for i in range(len(ids))]
    write_outputs(path, samples=[{"text": t} for t in texts], input_ids=ids,
                  pool={"pool_index": list(range(len(ids)))},
                  manifest={"tokenizer": tokenizer_fingerprint(byte_tokenizer())})
    return [torch.as_tensor(x, dtype=torch.long) for x in ids]


def small_llama(hidden: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=257, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def embedding_inputs(model: torch.nn.Module) -> list[torch.Tensor]:
    """The token ids every forward pass hands the model's embedding (meta-device traces left out)."""
    seen: list[torch.Tensor] = []
    model.model.embed_tokens.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].clone()) if args[0].device.type != "meta" else None)
    return seen


def assert_whole_and_in_order(seen: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    rows = [row for batch in seen for row in batch]  # each pass over the set, one row per sample
    assert rows and len(rows) % len(expected) == 0
    for start in range(0, len(rows), len(expected)):
        assert [r.tolist() for r in rows[start:start + len(expected)]] == [e.tolist() for e in expected]


# ---------------------------------------------------------------------------------------------- load_calibration


def test_load_calibration_hands_out_ids_texts_tensors_and_a_loader_in_order(tmp_path):
    expected = curated_set(tmp_path / "calib")
    calibration = cola.load_calibration(tmp_path / "calib")
    assert [x.tolist() for x in calibration.input_ids] == [x.tolist() for x in expected]
    assert calibration.texts() == [f"sample {i}: {'é' * i}" for i in range(len(RAGGED))]
    assert not calibration.equal_lengths and calibration.sequence_length == 31

    batch = calibration.tensors(pad_token_id=256)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (len(RAGGED), 31)
    assert batch["attention_mask"].sum(dim=1).tolist() == list(RAGGED)
    for row, sample in enumerate(expected):
        assert batch["input_ids"][row, :len(sample)].tolist() == sample.tolist()
        assert (batch["input_ids"][row, len(sample):] == 256).all()

    batches = list(calibration.dataloader(max_batch_tokens=40))
    # consecutive equal lengths share a batch within 40 tokens: the 9-token samples are apart, the three 16s
    # make one batch of 2 and one of 1
    assert [tuple(b["input_ids"].shape) for b in batches] == [
        (1, 9), (1, 23), (1, 4), (1, 31), (1, 9), (1, 1), (2, 16), (1, 16)]
    assert all((b["attention_mask"] == 1).all() for b in batches)
    assert_whole_and_in_order([b["input_ids"] for b in batches], expected)


def test_a_set_built_in_memory_has_no_texts():
    from cola.compress.calibration import CalibrationSet

    with pytest.raises(ColaError, match="holds token ids only"):
        CalibrationSet(input_ids=[torch.arange(3)]).texts()


def test_samples_file_out_of_step_with_the_dataset_is_refused(tmp_path):
    curated_set(tmp_path / "calib")
    samples = tmp_path / "calib" / "calibration_samples.json"
    samples.write_text(json.dumps(json.loads(samples.read_text())[:-1]))
    with pytest.raises(ColaError, match="calibration_samples.json"):  # its hash no longer matches the manifest
        cola.load_calibration(tmp_path / "calib")


# ------------------------------------------------------------------------------------------- each export target


def run_call(call: str, namespace: dict) -> dict:
    exec(call, namespace)  # noqa: S102 - the code `cola export` prints, run as a user runs it
    return namespace


def test_llmcompressor_export_reaches_oneshot_whole_and_in_order(tmp_path, monkeypatch):
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    expected = curated_set(tmp_path / "calib")
    result = export_calibration(tmp_path / "calib", "llmcompressor")
    assert result.path == tmp_path / "calib.llmcompressor" and (result.path / "dataset_info.json").is_file()
    model = small_llama()
    model.save_pretrained(tmp_path / "model")  # oneshot re-reads the model's folder for its config and tokenizer
    byte_tokenizer().save_pretrained(tmp_path / "model")
    model.config._name_or_path = str(tmp_path / "model")
    seen = embedding_inputs(model)
    monkeypatch.chdir(tmp_path)
    run_call(result.call, {"model": model,
                           "recipe": WandaPruningModifier(sparsity=0.5, targets=["Linear"], ignore=["lm_head"])})
    assert all(len(batch) == 1 for batch in seen)
    assert_whole_and_in_order(seen, expected)
    assert (model.model.layers[0].mlp.down_proj.weight == 0).float().mean() == pytest.approx(0.5, abs=0.02)


def test_autoround_export_reaches_autoround_whole_and_in_order(tmp_path):
    pytest.importorskip("auto_round", reason="auto-round is not installed (pip install auto-round)")

    for name, lengths in (("ragged", RAGGED[:5] + RAGGED[6:]), ("packed", (24,) * 6)):
        expected = curated_set(tmp_path / name, lengths)
        result = export_calibration(tmp_path / name, "autoround")
        assert f"seqlen={min(lengths)}" in result.call
        assert ("batch_size=1" in result.call) == (name == "ragged")  # it concatenates a batch's block inputs
        model = small_llama()
        seen = embedding_inputs(model)
        # the printed call, with auto-round told to tune 2 steps in groups of 32 and not save (the test's change)
        call = result.call.replace(")\nautoround.quantize_and_save(output_dir)",
                                   ", iters=2, group_size=32)\nautoround.quantize()")
        assert call.endswith("group_size=32)\nautoround.quantize()")
        run_call(call, {"model": model, "tokenizer": byte_tokenizer()})
        assert_whole_and_in_order(seen[:len(expected)], expected)


def test_gptqmodel_export_is_its_documented_input_in_order(tmp_path):
    """GPTQModel 7.6 takes a list of {"input_ids": list[int], "attention_mask": list[int]}; it sorts by length
    unless told `calibration_sort=None`, and drops samples of 10 tokens or fewer whatever its
    calibration_data_min_length says (read in its source: the argument does not reach its data preparation)."""
    expected = curated_set(tmp_path / "calib")
    result = export_calibration(tmp_path / "calib", "gptqmodel")
    rows = [json.loads(line) for line in result.path.read_text().splitlines()]
    assert [r["input_ids"] for r in rows] == [e.tolist() for e in expected]
    assert [r["attention_mask"] for r in rows] == [[1] * len(e) for e in expected]
    assert result.call.endswith("model.quantize(calibration, batch_size=1, calibration_sort=None)")
    namespace = run_call("\n".join(result.call.splitlines()[:-1]), {})  # all but the quantize line
    assert namespace["calibration"] == rows
    assert result.warnings == ("GPTQModel 7.6 drops the 4 samples of 10 tokens or fewer (its calibration_data_min_"
                               "length does not reach its data preparation): curate with a larger --min_length to "
                               "keep the set whole",)
    curated_set(tmp_path / "long", (11, 12))
    assert export_calibration(tmp_path / "long", "gptqmodel").warnings == ()


def test_gptqmodel_live_receives_the_export_whole_and_in_order(tmp_path):
    pytest.importorskip("gptqmodel", reason="GPTQModel 7.6 pins numpy 2.2.6 and cannot be installed beside cola")
    from gptqmodel.utils.calibration import prepare_calibration_dataset

    expected = curated_set(tmp_path / "calib", (24, 12, 31, 12))
    result = export_calibration(tmp_path / "calib", "gptqmodel")
    rows = [json.loads(line) for line in result.path.read_text().splitlines()]
    batches = prepare_calibration_dataset(SimpleNamespace(tokenizer=None, support_batch_quantize=True),
                                          calibration_dataset=rows, calibration_dataset_sort=None, batch_size=1)
    assert_whole_and_in_order([torch.as_tensor(b["input_ids"]) for b in batches], expected)


def test_text_and_tensor_exports_read_back_exactly(tmp_path):
    expected = curated_set(tmp_path / "calib")
    calibration = cola.load_calibration(tmp_path / "calib")
    texts = export_calibration(tmp_path / "calib", "jsonl-text")
    assert [json.loads(line)["text"] for line in texts.path.read_text(encoding="utf-8").splitlines()] == \
        calibration.texts()
    tensors = export_calibration(tmp_path / "calib", "pt")
    loaded = torch.load(tensors.path)
    assert set(loaded) == {"input_ids", "attention_mask"}
    assert all(torch.equal(loaded[k], v) for k, v in calibration.tensors().items())
    assert loaded["attention_mask"].sum(dim=1).tolist() == [len(e) for e in expected]
    assert "(9, 31)" in tensors.call


# --------------------------------------------------------------------------------------------------- bad input


def test_export_refuses_bad_targets_and_outputs_without_writing(tmp_path, capsys):
    curated_set(tmp_path / "calib")
    with pytest.raises(ColaError, match=r"unknown export target 'gptq-model'\. Did you mean 'gptqmodel'\?"):
        export_calibration(tmp_path / "calib", "gptq-model")
    with pytest.raises(ColaError, match="lies inside the calibration directory"):
        export_calibration(tmp_path / "calib", "pt", tmp_path / "calib" / "set.pt")
    export_path(tmp_path / "calib", "pt").write_text("mine")
    with pytest.raises(ColaError, match="already exists"):
        export_calibration(tmp_path / "calib", "pt")
    assert export_path(tmp_path / "calib", "pt").read_text() == "mine"
    assert export_calibration(tmp_path / "calib", "pt", overwrite=True).path.stat().st_size > 4
    with pytest.raises(ColaError, match="does not exist"):
        export_calibration(tmp_path / "none", "pt")

    assert main(["export", str(tmp_path / "calib"), "--to", "gptqmodel", "--output", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {tmp_path / 'x'}: 9 samples, 125 tokens, for gptqmodel\nhand it over with:")
    assert "    model.quantize(calibration, batch_size=1, calibration_sort=None" in out
    assert main(["export", str(tmp_path / "calib"), "--to", "awq"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cola: error: unknown export target 'awq'.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib", "calib.pt", "x"]  # no temporary left


def test_every_target_has_a_default_path_beside_the_set(tmp_path):
    assert {t: export_path(tmp_path / "calib", t).name for t in TARGETS} == {
        "llmcompressor": "calib.llmcompressor", "gptqmodel": "calib.gptqmodel.jsonl",
        "autoround": "calib.autoround.pt", "jsonl-text": "calib.texts.jsonl", "pt": "calib.pt"}
