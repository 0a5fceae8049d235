"""--device_map: a tiny model split between cpu and disk (accelerate's offload, the only split a CPU machine has)
gives the unsplit model's features, perplexity, generations and curated set; maps it cannot be split with are
one-line errors before any weight is read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cola.activations import extract_features
from cola.cli import main
from cola.errors import ColaError
from cola.devices import parse_max_memory
from cola.models import input_device, load_model

from tests.cli.test_curate import curate
from tests.conftest import byte_tokenizer

# blocks 1 and 2 of the tiny model's 3 live on disk (memory-mapped from the offload folder), the rest in RAM
SPLIT = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk",
         "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


def _sequences(count: int = 7, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 257, (int(n),), generator=gen).tolist()
            for n in torch.randint(5, 40, (count,), generator=gen)]


def test_a_model_split_over_cpu_and_disk_gives_the_same_features_and_text(tiny_model_dir: Path, tmp_path: Path):
    whole, _ = load_model(str(tiny_model_dir), device="cpu", dtype="float32", quiet=True)
    split, _ = load_model(str(tiny_model_dir), dtype="float32", quiet=True, device_map=json.dumps(SPLIT),
                          offload_folder=tmp_path / "offload")
    assert split.hf_device_map == SPLIT and input_device(split) == torch.device("cpu")
    assert {p.device.type for n, p in split.named_parameters() if ".layers.1." in n} == {"meta"}  # not in RAM
    options = {"layers": None, "projection_dim": 16, "seed": 3, "batch_tokens": 64, "sketch_dim": 4,
               "channel_maxima": True, "quiet": True}
    a, b = extract_features(whole, _sequences(), **options), extract_features(split, _sequences(), **options)
    np.testing.assert_allclose(b.features, a.features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.sketches.values, a.sketches.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.sketches.maxima, a.sketches.maxima, rtol=1e-5, atol=1e-6)
    from cola.batching import generate_new_tokens
    from cola.evaluate.perplexity import perplexity

    prompts = _sequences(3, seed=1)
    assert torch.equal(generate_new_tokens(whole, prompts, pad_token_id=0, max_new_tokens=6, do_sample=False),
                       generate_new_tokens(split, prompts, pad_token_id=0, max_new_tokens=6, do_sample=False))
    text = "the quick brown fox jumps over the lazy dog. " * 6
    assert perplexity(split, byte_tokenizer(), text, window=32).perplexity == pytest.approx(
        perplexity(whole, byte_tokenizer(), text, window=32).perplexity, rel=1e-5)


def test_curate_with_a_device_map_picks_the_same_set(tiny_model_dir: Path, pool_files: dict, tmp_path: Path):
    """Stage 1 (the reference probes) and Stage 3 (the features) both read the split model."""
    (tmp_path / "map.json").write_text(json.dumps(SPLIT))
    outputs = []
    for name, placement in (("whole", ["--device", "cpu"]), ("split", ["--device_map", str(tmp_path / "map.json")])):
        out = tmp_path / name
        args = ["--stage1", "--selection_method", "activations"]
        # the curate helper pins --device cpu: drop it for the split run
        code = curate(tiny_model_dir, pool_files, out, *args) if name == "whole" else main(
            [a for a in _curate_args(tiny_model_dir, pool_files, out) if a not in ("--device", "cpu")]
            + args + placement)
        assert code == 0
        outputs.append(json.loads((out / "calibration_samples.json").read_text()))
    assert [s["text"] for s in outputs[0]] == [s["text"] for s in outputs[1]]


def _curate_args(tiny_model_dir: Path, pool_files: dict, out: Path) -> list[str]:
    return ["curate", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--quiet",
            "--dtype", "float32", "--device", "cpu", "--num_samples", "6", "--sequence_length", "64",
            "--datasets", *map(str, pool_files.values()), "--candidates_per_source", "12"]


@pytest.mark.parametrize(("options", "message"), [
    ({"device_map": "fastest"}, r"--device_map 'fastest' is neither a placement \(auto, balanced, balanced_low_0, "
                                r"sequential\) nor a JSON file"),
    ({"device_map": '{"model.layers.0": "meta"}'}, "puts model.layers.0 on meta, where its weights would never load"),
    ({"device_map": '{"": 1}'}, "device 'cuda:1' is not available"),
    ({"device_map": '{"model.embed_tokens": "cpu", "model.layers.0": "disk"}'},
     r"--device_map gives no device to model.layers.1, model.layers.2, model.norm, lm_head; name them"),
    ({"device_map": '{"model.decoder": "cpu"}'}, r"--device_map names model.decoder, not modules of this model "
                                                 r"\(its modules: lm_head, model, .*a block is e.g. model.layers.0\)"),
    ({"device_map": '["cpu"]'}, "must be a JSON object of module names to devices"),
    ({"device_map": "{not json"}, r"--device_map: not JSON"),
    ({"device_map": "auto", "device": "cpu"}, "give --device or --device_map, not both"),
    ({"device_map": '{"": "cpu"}', "max_memory": "cpu=1GiB"}, "--max_memory caps what a placement"),
    ({"max_memory": "cpu=1GiB"}, "give --device_map too"),
])
def test_a_map_the_model_cannot_be_split_with_is_one_line(options: dict, message: str, tiny_model_dir: Path):
    with pytest.raises(ColaError, match=message) as info:
        load_model(str(tiny_model_dir), dtype="float32", quiet=True, **options)
    assert "\n" not in str(info.value)


def test_max_memory_is_parsed_as_accelerate_takes_it():
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB") == {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}
    for bad in ("70GiB", "gpu=1GiB", "0=lots"):
        with pytest.raises(ColaError, match="is not DEVICE=SIZE"):
            parse_max_memory(bad)


def test_the_command_line_refuses_bad_maps_before_reading_anything(tiny_model_dir: Path, pool_files: dict,
                                                                   tmp_path: Path, capsys):
    out = tmp_path / "out"
    args = [a for a in _curate_args(tiny_model_dir, pool_files, out) if a not in ("--device", "cpu")]
    assert main([*args, "--device_map", '{"model.layers.0": "meta"}']) != 0
    assert "puts model.layers.0 on meta" in capsys.readouterr().err and not out.exists()
    calibration = tmp_path / "calib"
    assert main(["compress", "--model", str(tiny_model_dir), "--calibration", str(calibration), "--output_dir",
                 str(tmp_path / "c"), "--method", "wanda", "--device_map", "auto"]) != 0
    assert "compress runs its methods layer by layer on one device" in capsys.readouterr().err


def test_evaluate_reads_a_split_model(tiny_model_dir: Path, tmp_path: Path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 8)
    scores = []
    for placement in (["--device", "cpu"], ["--device_map", json.dumps(SPLIT)]):
        output = tmp_path / f"report{len(scores)}.json"
        assert main(["evaluate", str(tiny_model_dir), "--task", f"ppl:{text}", "--window", "32", "--dtype",
                     "float32", "--output", str(output), "--quiet", *placement]) == 0
        scores.append(json.loads(output.read_text())["results"][0]["value"])
    assert scores[1] == pytest.approx(scores[0], rel=1e-5)
