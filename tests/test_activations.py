"""The extraction engine on tiny random models: pooling, padding, early stop, projection, batching."""

from __future__ import annotations

import pytest
import torch
from transformers import (AutoModelForCausalLM, GemmaConfig, GPT2Config, LlamaConfig, MistralConfig, OPTConfig,
                          Qwen2Config)

from cola.activations import extract_features, masked_mean, pool, resolve_layers
from cola.batching import length_batches
from cola.cluster import gaussian_projection
from cola.config import SelectionConfig
from cola.errors import ColaError
from cola.models import find_decoder_layers

SEQS = [[5, 9, 13, 2, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [40, 41, 42], [8] * 20]


def _features(model, seqs, **kw):
    defaults = dict(layers=None, projection_dim=16, seed=0, quiet=True)
    found = extract_features(model, seqs, **{**defaults, **kw})
    return found.features, found.stats


def test_masked_mean_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2), last slot is padding
    assert masked_mean(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]


def test_last_pooling_takes_each_rows_last_real_token() -> None:
    hidden = torch.arange(24, dtype=torch.float32).view(2, 4, 3)  # (2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])           # row 0: 2 real tokens, right-padded
    assert pool(hidden, mask, "last").tolist() == [hidden[0, 1].tolist(), hidden[1, 3].tolist()]
    assert pool(hidden, mask, "mean").tolist() == masked_mean(hidden, mask).tolist()
    with pytest.raises(ColaError, match="unknown pooling 'max'.*Valid choices: last, mean"):
        pool(hidden, mask, "max")


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_features_equal_with_and_without_padding_for_each_pooling(tiny_model, pooling: str) -> None:
    alone = torch.tensor(_features(tiny_model, SEQS, batch_size=1, pooling=pooling)[0])
    padded = torch.tensor(_features(tiny_model, SEQS, batch_size=8, batch_tokens=10_000, pooling=pooling)[0])
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-4)


def test_last_pooling_matches_a_reference_computation_and_differs_from_mean(tiny_model) -> None:
    seq = SEQS[1]
    feats, _ = _features(tiny_model, [seq], layers=[0], pooling="last")
    with torch.no_grad():
        hidden = tiny_model(torch.tensor([seq]), output_hidden_states=True).hidden_states[1][0]  # layer 0 out
    expected = torch.nn.functional.normalize(hidden[-1], dim=0) @ gaussian_projection(32, 16, seed=0)
    torch.testing.assert_close(torch.tensor(feats[0]), expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(torch.tensor(feats[0]), torch.tensor(_features(tiny_model, [seq], layers=[0])[0][0]))


def test_unknown_pooling_is_rejected_before_any_forward(tiny_model) -> None:
    with pytest.raises(ColaError, match="unknown pooling 'cls'"):
        _features(tiny_model, SEQS, pooling="cls")
    with pytest.raises(ColaError, match="unknown pooling 'cls'"):
        SelectionConfig(pooling="cls")


def test_features_equal_with_and_without_padding(tiny_model) -> None:
    alone = torch.tensor(_features(tiny_model, SEQS, batch_size=1)[0])  # every sequence in its own batch
    padded = torch.tensor(_features(tiny_model, SEQS, batch_size=8, batch_tokens=10_000)[0])  # one padded batch
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-4)


def test_padding_is_really_computed_in_one_batch(tiny_model) -> None:
    _, stats = _features(tiny_model, SEQS, batch_size=8, batch_tokens=10_000)
    assert stats.batches == 1
    assert stats.real_tokens == sum(map(len, SEQS))
    assert stats.computed_tokens == 4 * 20


def test_features_match_a_reference_computation(tiny_model) -> None:
    seq = SEQS[1]
    feats, _ = _features(tiny_model, [seq], layers=[0])
    with torch.no_grad():
        hidden = tiny_model(torch.tensor([seq]), output_hidden_states=True).hidden_states[1][0]  # layer 0 out
    expected = torch.nn.functional.normalize(hidden.mean(0), dim=0) @ gaussian_projection(32, 16, seed=0)
    torch.testing.assert_close(torch.tensor(feats[0]), expected, atol=1e-5, rtol=1e-4)


def test_forward_stops_at_the_deepest_chosen_layer(tiny_model) -> None:
    calls: list[str] = []
    _, blocks = find_decoder_layers(tiny_model)
    blocks[1].register_forward_hook(lambda *a: calls.append("layer1"))
    tiny_model.lm_head.register_forward_hook(lambda *a: calls.append("lm_head"))
    _features(tiny_model, SEQS, layers=[0])
    assert calls == []
    _features(tiny_model, SEQS, layers=[-1])
    assert "layer1" in calls and "lm_head" not in calls


def test_projection_seed_changes_features_and_is_deterministic(tiny_model) -> None:
    a, _ = _features(tiny_model, SEQS, seed=1)
    b, _ = _features(tiny_model, SEQS, seed=1)
    c, _ = _features(tiny_model, SEQS, seed=2)
    assert (a == b).all()
    assert not (a == c).all()
    assert a.shape == (4, 16)


def test_empty_sequence_is_rejected(tiny_model) -> None:
    with pytest.raises(ColaError, match="no tokens"):
        _features(tiny_model, [[1, 2], []])


def test_resolve_layers() -> None:
    assert resolve_layers(None, 4) == (0, 1, 2, 3)
    assert resolve_layers([3, -1, 0], 4) == (0, 3)
    with pytest.raises(ColaError, match=r"unknown layer index 4: the model has 4 decoder layers \(valid: 0\.\.3"):
        resolve_layers([4], 4)
    with pytest.raises(ColaError, match="unknown layer index -5"):
        resolve_layers([-5], 4)


def test_length_buckets_cover_everything_within_budget() -> None:
    lengths = [5, 300, 7, 120, 6, 128, 90, 1000, 3, 64] * 3
    batches = length_batches(lengths, max_batch_size=4, max_batch_tokens=512)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 4
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 512
    assert [lengths[i] for i in flat] == sorted(lengths)  # similar lengths share a batch


TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=64)


@pytest.mark.parametrize("config, path", [
    (LlamaConfig(num_hidden_layers=3, **TINY), "model.layers"),
    (Qwen2Config(num_hidden_layers=3, **TINY), "model.layers"),
    (MistralConfig(num_hidden_layers=3, **TINY), "model.layers"),
    (GemmaConfig(num_hidden_layers=3, head_dim=8, **TINY), "model.layers"),
    (GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=64, n_positions=64), "transformer.h"),
    (OPTConfig(num_hidden_layers=3, hidden_size=32, ffn_dim=64, num_attention_heads=4, vocab_size=64,
               max_position_embeddings=64, word_embed_proj_dim=32), "model.decoder.layers"),
])
def test_decoder_layers_found_generically_and_features_extracted(config, path: str) -> None:
    model = AutoModelForCausalLM.from_config(config).eval()
    name, blocks = find_decoder_layers(model)
    assert (name, len(blocks)) == (path, 3)
    feats, stats = _features(model, [[1, 2, 3, 4], [5, 6]], layers=[1])
    assert feats.shape == (2, 16) and stats.real_tokens == 6


@pytest.mark.parametrize("config", [
    LlamaConfig(num_hidden_layers=2, **TINY), Qwen2Config(num_hidden_layers=2, **TINY),
    MistralConfig(num_hidden_layers=2, **TINY), GemmaConfig(num_hidden_layers=2, head_dim=8, **TINY),
    GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=64),
    OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=4, vocab_size=64,
              max_position_embeddings=64, word_embed_proj_dim=32),
], ids=lambda config: config.model_type)
def test_right_padded_batch_without_attention_mask_matches_each_sequence_alone(config) -> None:
    """The forward gets no attention mask: each architecture's causal attention must keep pads out of the real
    tokens' states (OPT's positions come from the mask: all ones gives the same positions to right-padded rows)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    alone = torch.tensor(_features(model, SEQS, batch_size=1)[0])
    padded, stats = _features(model, SEQS, batch_size=8, batch_tokens=10_000)
    assert stats.batches == 1 and stats.computed_tokens > stats.real_tokens
    torch.testing.assert_close(alone, torch.tensor(padded), atol=1e-5, rtol=1e-4)


def test_masked_mean_in_bfloat16_equals_the_float32_mean_of_the_same_values() -> None:
    hidden = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6])
    expected = torch.stack([hidden[row, :int(n)].float().mean(dim=0) for row, n in enumerate(mask.sum(dim=1))])
    result = masked_mean(hidden, mask)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=1e-6)


def _tiny_llama(layers: int = 3):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(num_hidden_layers=layers, **TINY)).eval()


def test_use_compile_modes() -> None:
    from cola.activations import COMPILE_MIN_TOKENS, use_compile

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_compile("auto", real_tokens=COMPILE_MIN_TOKENS, device=cpu, sketches=False)
    assert not use_compile("auto", real_tokens=COMPILE_MIN_TOKENS - 1, device=cpu, sketches=False)
    assert not use_compile("auto", real_tokens=10 * COMPILE_MIN_TOKENS, device=cuda, sketches=False)
    assert use_compile("on", real_tokens=1, device=cuda, sketches=False)
    assert not use_compile("on", real_tokens=10 * COMPILE_MIN_TOKENS, device=cpu, sketches=True)  # hooks inside
    assert not use_compile("off", real_tokens=10 * COMPILE_MIN_TOKENS, device=cpu, sketches=False)
    with pytest.raises(ColaError, match="unknown compile 'yes'"):
        use_compile("yes", real_tokens=1, device=cpu, sketches=False)
    assert SelectionConfig().compile == "auto"
    with pytest.raises(ColaError):
        SelectionConfig(compile="always")


def test_compile_wraps_the_blocks_up_to_the_deepest_chosen_layer_for_the_call_only(monkeypatch) -> None:
    model = _tiny_llama(3)
    _, blocks = find_decoder_layers(model)
    wrapped = []

    def fake_compile(fn, **kwargs):
        assert kwargs == {"dynamic": True}
        wrapped.append(fn.__self__)
        def run(*args, **kw):
            run.calls += 1
            return fn(*args, **kw)
        run.calls = 0
        fake_compile.runs.append(run)
        return run
    fake_compile.runs = []
    monkeypatch.setattr(torch, "compile", fake_compile)
    eager, _ = _features(model, SEQS, layers=[0, 1], compile="off", batch_tokens=24)
    assert wrapped == []
    got, _ = _features(model, SEQS, layers=[0, 1], compile="on", batch_tokens=24)
    assert wrapped == [blocks[0], blocks[1]]  # the layer above the deepest chosen one never runs
    assert all(run.calls > 1 for run in fake_compile.runs)  # every batch went through the compiled forwards
    assert all("forward" not in vars(block) for block in blocks)  # the model is left as it was
    assert torch.equal(torch.from_numpy(got), torch.from_numpy(eager))
    _features(model, SEQS, compile="auto")  # a tiny pool: not worth compiling
    assert len(wrapped) == 2


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog) -> None:
    model = _tiny_llama(2)
    eager, _ = _features(model, SEQS, compile="off", batch_tokens=24)

    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("inductor: no C++ compiler")  # as torch._dynamo's BackendCompilerFailed is
        return run
    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level("WARNING", logger="cola.activations"):
        got, stats = _features(model, SEQS, compile="on", batch_tokens=24)
    assert "torch.compile of the decoder blocks failed (RuntimeError: inductor: no C++ compiler)" in caplog.text
    assert torch.equal(torch.from_numpy(got), torch.from_numpy(eager))
    assert stats.batches > 1
    _, blocks = find_decoder_layers(model)
    assert all("forward" not in vars(block) for block in blocks)


def test_compiled_features_match_eager() -> None:
    """The real torch.compile (inductor) on a tiny model: the same features to float32's tolerance."""
    model = _tiny_llama(2)
    seqs = SEQS + [[3, 1, 4, 1, 5, 9, 2, 6]]
    eager, _ = _features(model, seqs, compile="off", batch_tokens=24)
    got, _ = _features(model, seqs, compile="on", batch_tokens=24)
    assert torch.allclose(torch.from_numpy(got), torch.from_numpy(eager), atol=1e-4, rtol=1e-4)
