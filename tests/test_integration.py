"""Integration on the embedded SmolLM2-135M (converted once into the cache) and real data from ../shared/data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cola.export import MANIFEST_FILE, SAMPLES_FILE
from cola.models import find_decoder_layers, load_model

from tests.conftest import REPO, SHARED_DATA, needs_shared_data

pytestmark = pytest.mark.integration



@pytest.fixture(scope="session")
def smollm2():
    return load_model("embedded", dtype="bfloat16", quiet=True)


def test_embedded_model_is_a_plain_llama(smollm2) -> None:
    model, tokenizer = smollm2
    name, blocks = find_decoder_layers(model)
    assert (type(model).__name__, name, len(blocks)) == ("LlamaForCausalLM", "model.layers", 30)
    assert model.config.hidden_size == 576 and len(tokenizer) == 49152
    assert getattr(model.config, "quantization_config", None) is None  # saveable, unlike the GGUF load


def test_embedded_conversion_is_cached_as_plain_safetensors(smollm2) -> None:
    from cola.models import resolve_model_path

    first = Path(resolve_model_path("embedded", quiet=True))
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_model_path("embedded", quiet=True)) == first  # no second conversion
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    config = json.loads((first / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config


def test_embedded_tokenizer_has_the_gguf_special_tokens(smollm2) -> None:
    """The GGUF says BOS <|im_start|> (1), EOS and PAD <|im_end|> (2); transformers' loader alone gives EOS 1."""
    _, tokenizer = smollm2
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert tokenizer.pad_token_id == 2


@needs_shared_data
def test_run_cola_script_curates_from_three_real_sources(tmp_path: Path) -> None:
    """The seed's command line, end to end on SmolLM2 with gsm8k + c4 + mbpp."""
    out = tmp_path / "out"
    data = SHARED_DATA
    cmd = [sys.executable, str(REPO / "run_cola.py"), "--model_name_or_path", "embedded", "--output_dir", str(out),
           "--num_samples", "16", "--sequence_length", "128", "--candidates_per_source", "24", "--quiet",
           "--datasets", str(data / "gsm8k/train.jsonl"), str(data / "c4/c4_en_train_first1000.jsonl"),
           str(data / "mbpp/mbpp_train_valid_prompt.jsonl"), "--target_capabilities", "math", "general", "code"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    samples = json.loads((out / SAMPLES_FILE).read_text())
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert len(samples) == 16 and len({s["text"] for s in samples}) == 16
    assert [(s["name"], s["capability"], s["candidates"]) for s in manifest["sources"]] == [
        ("gsm8k/train", "math", 24), ("c4_en_train_first1000", "general", 24), ("mbpp_train_valid_prompt", "code", 24)]
    assert sum(manifest["diagnostics"]["selected_per_source"].values()) == 16
    assert manifest["model_class"] == "LlamaForCausalLM"


@needs_shared_data
def test_stage2_on_real_pools_formats_and_packs_exactly(smollm2) -> None:
    """gsm8k + c4 + mbpp through Stage 2 with SmolLM2's tokenizer: Q&A form, exact length, no padding."""
    from cola.config import ProcessConfig
    from cola.data.sources import load_source, parse_source
    from cola.stages.process import process_sources

    _, tokenizer = smollm2
    specs = ["gsm8k/train.jsonl", "c4/c4_en_train_first1000.jsonl", "mbpp/mbpp_train_valid_prompt.jsonl"]
    sources = [load_source(parse_source(str(SHARED_DATA / s)), max_candidates=40, seed=0) for s in specs]
    samples, report = process_sources(sources, tokenizer, 256, ProcessConfig(chat_template="off"))
    assert samples and all(len(s.input_ids) == 256 for s in samples)
    pad = tokenizer.pad_token_id  # SmolLM2 pads with EOS, the document separator: padding would be a run of it
    assert all([pad, pad] != s.input_ids[i:i + 2].tolist() for s in samples for i in range(len(s.input_ids) - 1))
    assert [e["formatter"] for e in report["sources"]] == ["gsm8k", "text", "mbpp"]
    gsm8k_text = next(s.text for s in samples if s.source == 0)
    assert "Question: " in gsm8k_text and "\n\nReasoning:\n" in gsm8k_text and "\n\nAnswer: " in gsm8k_text
    assert "####" not in gsm8k_text and "<<" not in gsm8k_text  # answer split out, calculator notes removed
    assert {s.source for s in samples} == {0, 1, 2}
    assert sum(e["samples"] for e in report["sources"]) == len(samples)


@needs_shared_data
def test_stage2_separates_documents_once(smollm2) -> None:
    """Plain documents are joined with EOS (<|im_end|>); chat-templated ones end their own turn and get none."""
    from cola.config import ProcessConfig
    from cola.data.sources import load_source, parse_source
    from cola.stages.process import process_sources

    _, tokenizer = smollm2
    specs = ["gsm8k/train.jsonl", "c4/c4_en_train_first1000.jsonl"]
    sources = [load_source(parse_source(str(SHARED_DATA / s)), max_candidates=20, seed=0) for s in specs]
    samples, report = process_sources(sources, tokenizer, 512, ProcessConfig(chat_template="auto"))
    assert [e["chat_templated"] for e in report["sources"]] == [20, 0]
    chat = "".join(s.text for s in samples if s.source == 0)
    plain = "".join(s.text for s in samples if s.source == 1)
    assert chat.count("<|im_end|>\n<|im_start|>system\n") >= 2
    assert "<|im_start|><|im_start|>" not in chat and "<|im_end|><|im_end|>" not in chat
    assert "<|im_end|>" in plain and "<|im_start|>" not in plain
    assert chat.count("You are a helpful AI assistant named SmolLM") == chat.count("<|im_start|>system\n")

    samples, _ = process_sources(sources, tokenizer, 512, ProcessConfig(system_prompt="none"))
    chat = "".join(s.text for s in samples if s.source == 0)
    assert "<|im_start|>system" not in chat and "You are a helpful" not in chat
    assert chat.count("<|im_end|>\n<|im_start|>user\n") >= 2  # records still end their own turn


def _curate_four_pools(out: Path, *extra: str) -> dict:
    """curate 20 samples from c4, gsm8k, mbpp and ARC-C with SmolLM2; return the manifest."""
    from cola.cli import main

    data = SHARED_DATA
    code = main(["curate", "--model_name_or_path", "embedded", "--output_dir", str(out), "--quiet",
                 "--num_samples", "20", "--sequence_length", "128", "--candidates_per_source", "40",
                 "--reference_size", "32", "--reference", f"commonsense={data / 'commonsenseqa/validation.jsonl'}",
                 "--datasets", str(data / "c4/c4_en_train_first1000.jsonl"), str(data / "gsm8k/train.jsonl"),
                 str(data / "mbpp/mbpp_train_valid_prompt.jsonl"),
                 str(data / "commonsense_llm_adapters/arc_challenge_train.parsed.jsonl"), *extra])
    assert code == 0
    return json.loads((out / MANIFEST_FILE).read_text())


@needs_shared_data
def test_targeted_math_deployment_prefers_math_sources(tmp_path: Path) -> None:
    """Stage 1 on SmolLM2: targeted math over c4, gsm8k, mbpp, arc ranks gsm8k first for math and draws >= 60 %."""
    manifest = _curate_four_pools(tmp_path / "out", "--deployment_type", "targeted", "--targeted_capability", "math")
    coverage = manifest["stage1"]["coverage"]
    assert max(coverage, key=lambda name: coverage[name]["math"]["score"]) == "gsm8k/train"
    selected = manifest["diagnostics"]["selected_per_source"]
    assert selected.get("gsm8k/train", 0) >= 0.6 * 20
    assert sum(selected.values()) == 20


@needs_shared_data
def test_general_deployment_draws_from_every_capability(tmp_path: Path) -> None:
    manifest = _curate_four_pools(tmp_path / "out")
    coverage, selected = manifest["stage1"]["coverage"], manifest["diagnostics"]["selected_per_source"]
    assert set(manifest["stage1"]["capability_weights"]) == {"general", "math", "code", "commonsense"}
    for capability in ("general", "math", "code", "commonsense"):
        best = max(coverage, key=lambda name: coverage[name][capability]["score"])
        assert selected.get(best, 0) >= 1
    assert len(selected) == 4 and sum(selected.values()) == 20  # every source, hence every capability


@pytest.fixture(scope="module")
def smollm2_calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short curated set (8 x 128 tokens, embedded pool) made by the CLI, as a user would."""
    from cola.cli import main

    out = tmp_path_factory.mktemp("smollm2-calib")
    assert main(["curate", "--output_dir", str(out), "--num_samples", "8", "--sequence_length", "128",
                 "--candidates_per_source", "16", "--quiet"]) == 0
    return out


@pytest.mark.parametrize("method, extra, expect", [
    ("wanda", ["--sparsity", "0.5"], {"sparsity": 0.5}),
    ("ria", ["--pattern", "2:4"], {"sparsity": 0.5}),
    ("caldera", ["--preset", "2.2", "--iters", "1", "--finetune_steps", "2"], {"bits": (2.0, 2.5)}),
])
def test_compress_smollm2_from_the_cli_reloads_and_generates(smollm2_calibration: Path, tmp_path: Path, capsys,
                                                            method, extra, expect) -> None:
    from cola.cli import main
    from cola.compress.api import SUMMARY_FILE, load_compressed

    out = tmp_path / method
    assert main(["compress", "--calibration", str(smollm2_calibration), "--method", method,
                 "--output_dir", str(out), "--quiet", *extra]) == 0
    assert "layers 210" in capsys.readouterr().out  # 30 blocks x 7 linears, measured on the saved weights
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["calibration"]["num_samples"] == 8 and summary["calibration"]["num_tokens"] == 8 * 128
    for layer_type, entry in summary["weights"]["by_type"].items():
        if "sparsity" in expect:
            assert entry["sparsity"] == pytest.approx(expect["sparsity"], abs=0.005), layer_type
        else:
            assert expect["bits"][0] < entry["bits_per_parameter"] < expect["bits"][1], layer_type
    model, tokenizer = load_compressed(out)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 8
