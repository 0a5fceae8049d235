"""Shared fixtures: a tiny random Llama with a byte-level tokenizer (built here, nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data folder {SHARED_DATA} not found")


def byte_tokenizer():
    """A real fast tokenizer (byte-level, 256 symbols + EOS) with character offsets."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["</s>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>")


def tiny_llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(autouse=True)
def probe_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stage 1's reference probes are cached in cola's cache by default: each test gets a fresh folder of its own,
    so no test reads what another (or a user's run) left there."""
    folder = tmp_path_factory.mktemp("probe-features")
    monkeypatch.setattr("cola.feature_cache.probe_cache_dir", lambda: folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama + tokenizer, loadable by path like any model directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(layers=3).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture()
def tiny_model():
    return tiny_llama()


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture()
def pool_files(tmp_path: Path) -> dict[str, Path]:
    """Three small local sources with different capabilities and lengths."""
    math = write_jsonl(tmp_path / "mathqa.jsonl", [
        {"question": f"What is {i} plus {i * 3}?", "answer": f"{i} + {i * 3} = {i * 4}. #### {i * 4}"}
        for i in range(40)])
    prose = write_jsonl(tmp_path / "prose.jsonl", [
        {"text": f"Paragraph {i}. " + "The river ran past the old mill and the town. " * (1 + i % 7)}
        for i in range(40)])
    code = write_jsonl(tmp_path / "code.jsonl", [
        {"text": f"Write a function number {i}.", "code": f"def f{i}(x):\n    return x * {i} + {i % 5}\n"}
        for i in range(40)])
    return {"math": math, "prose": prose, "code": code}
