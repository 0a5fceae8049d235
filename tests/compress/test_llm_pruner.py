"""LLM-Pruner: coupled structures found from the modules (GQA kept), Taylor importance against a hand computation,
exact counts removed, LoRA recovery, the smaller checkpoint rebuilt with identical logits, one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cola.compress.api import compress, load_compressed
from cola.compress.calibration import CalibrationSet
from cola.compress.llm_pruner.importance import calibration_gradients, group_importance, scored_weights
from cola.compress.llm_pruner.prune import plan
from cola.compress.llm_pruner.structures import find_structures
from cola.errors import ColaError
from cola.export import tokenizer_fingerprint
from tests.compress.test_api import write_calibration
from tests.conftest import byte_tokenizer, tiny_llama

HEAD_DIM = 8  # hidden 32 over 4 query heads; 2 key/value heads, each shared by 2 query heads


def tiny_qwen2(seed: int = 0, layers: int = 3):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return Qwen2ForCausalLM(config).eval()


MODELS = {"llama": lambda: tiny_llama(seed=1, layers=3), "qwen2": tiny_qwen2}


def _calibration(samples: int = 6, length: int = 24, seed: int = 0) -> CalibrationSet:
    gen = torch.Generator().manual_seed(seed)
    return CalibrationSet(input_ids=[torch.randint(0, 257, (length,), generator=gen) for _ in range(samples)],
                          manifest={"tokenizer": tokenizer_fingerprint(byte_tokenizer())})


@pytest.fixture()
def calibration_dir(tmp_path: Path) -> Path:
    return write_calibration(tmp_path / "calib", byte_tokenizer(), lengths=(24,) * 8, seed=2)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_structures_are_found_from_the_modules_with_gqa(family: str):
    model = MODELS[family]()
    structures = find_structures(model, [0, 2])
    assert [s.index for s in structures] == [0, 2]
    att, mlp = structures[1].attention, structures[1].mlp
    assert (att.q, att.kv, att.o) == ("model.layers.2.self_attn.q_proj",
                                      ("model.layers.2.self_attn.k_proj", "model.layers.2.self_attn.v_proj"),
                                      "model.layers.2.self_attn.o_proj")
    assert (att.head_dim, att.num_kv, att.q_per_kv) == (HEAD_DIM, 2, 2)
    assert att.rows(att.q, 1) == slice(16, 32) and att.rows(att.kv[0], 1) == slice(8, 16)
    assert mlp.inputs == ("model.layers.2.mlp.gate_proj", "model.layers.2.mlp.up_proj")
    assert (mlp.output, mlp.channels) == ("model.layers.2.mlp.down_proj", 64)


def test_a_block_with_fused_projections_is_refused_naming_what_was_found():
    from transformers import Phi3Config, Phi3ForCausalLM

    model = Phi3ForCausalLM(Phi3Config(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)).eval()
    with pytest.raises(ColaError) as info:
        find_structures(model, [0])
    message = str(info.value)
    assert "\n" not in message and "cannot group the structures of block 0 (Phi3DecoderLayer)" in message
    assert "self_attn.qkv_proj (32->64)" in message and "mlp.gate_up_proj (32->128)" in message


def test_taylor_importance_equals_a_hand_computation():
    """|w · dL/dw| per weight (element) and |Σ w · dL/dw| per row or column (vector), summed per KV group over the
    rows of q, k, v and the columns of o; the gradient accumulated over 3 batches equals one whole-set gradient."""
    model, calibration = tiny_llama(seed=3, layers=2), _calibration()
    structures = find_structures(model, [1])
    grads = calibration_gradients(model, calibration, scored_weights(structures), max_batch_tokens=48)  # 3 batches

    ids = torch.stack(calibration.input_ids)
    params = dict(model.named_parameters())
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    prefix = {n: f"model.layers.1.{'self_attn' if n[0] in 'qkvo' else 'mlp'}.{n}" for n in names}
    weights = [params[f"{prefix[n]}.weight"] for n in names]
    whole = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, weights)
    hand = dict(zip(names, whole))
    for n in names:
        torch.testing.assert_close(grads[f"{prefix[n]}.weight"], hand[n], rtol=1e-4, atol=1e-7)
    w = {n: params[f"{prefix[n]}.weight"].detach() for n in names}

    for kind in ("element", "vector"):
        heads, channels = group_importance(model, structures, grads, kind)[0]
        expected_heads, expected_channels = torch.zeros(2), torch.zeros(64)
        for group in range(2):
            for n in names[:4]:
                width = HEAD_DIM * (2 if n in ("q_proj", "o_proj") else 1)
                part = slice(group * width, (group + 1) * width)
                product = (w[n] * hand[n])[:, part].T if n == "o_proj" else (w[n] * hand[n])[part]
                expected_heads[group] += product.abs().sum() if kind == "element" else product.sum(1).abs().sum()
        for c in range(64):
            for product in ((w["gate_proj"] * hand["gate_proj"])[c], (w["up_proj"] * hand["up_proj"])[c],
                            (w["down_proj"] * hand["down_proj"])[:, c]):
                expected_channels[c] += product.abs().sum() if kind == "element" else product.sum().abs()
        torch.testing.assert_close(heads, expected_heads, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(channels, expected_channels, rtol=1e-4, atol=1e-9)
    assert all(p.requires_grad for p in model.parameters())  # put back as it was


def test_bfloat16_gradients_are_near_float32_and_leave_the_weights_as_they_were():
    """The default --compute_dtype: the pass runs on bf16 copies; the gradients come back float32, near the float32
    pass's, and the model's own float32 weights are untouched."""
    model, calibration = tiny_llama(seed=3, layers=2), _calibration()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    names = scored_weights(find_structures(model, [1]))
    exact = calibration_gradients(model, calibration, names, max_batch_tokens=48)
    cast = calibration_gradients(model, calibration, names, max_batch_tokens=48, dtype=torch.bfloat16)
    assert set(cast) == set(exact)
    for key, grad in cast.items():
        assert grad.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(grad.flatten(), exact[key].flatten(), dim=0) > 0.98
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[name])


def test_bfloat16_recovery_adds_a_low_rank_float32_update_and_nothing_else():
    from cola.compress.llm_pruner.recovery import recover

    model = tiny_llama(seed=6, layers=2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    target = "model.layers.0.mlp.down_proj"
    merged, log = recover(model, _calibration(samples=8, length=32, seed=6).input_ids, [target], steps=6, lr=1e-2,
                          rank=2, max_batch_tokens=64, seed=0, dtype=torch.bfloat16)
    assert len(log.losses) == 6
    params = dict(merged.named_parameters())
    assert set(params) == set(before)  # no adapter left
    for name, p in params.items():
        assert p.dtype == torch.float32 and not p.requires_grad
        if name != f"{target}.weight":
            assert torch.equal(p, before[name])
    delta = params[f"{target}.weight"] - before[f"{target}.weight"]
    singular = torch.linalg.svdvals(delta.double())
    assert singular[0] > 1e-4 and singular[2] < 1e-3 * singular[0]  # B A of rank 2, added in float32, not rounded


@pytest.mark.parametrize("family", sorted(MODELS))
def test_pruning_removes_exactly_the_planned_heads_and_channels_and_keeps_kv_grouping(family: str, tmp_path: Path):
    model, calibration = MODELS[family](), _calibration(seed=4)
    reference = MODELS[family]()
    structures = find_structures(model, [1, 2])
    plans = plan(model, structures, 0.4)
    # round(0.4 x 2 KV groups) = 1 group: 1,536 of the attention's 3,072 parameters (qwen2: 1,568 of 3,136 with
    # the q/k/v biases); the MLP takes the rest of 0.4 x 9,216 (9,280) in channels of 96: round(22.4) (22.3)
    assert [(p.kv_groups, p.channels) for p in plans] == [(1, 22)] * 2
    scores = group_importance(model, structures, calibration_gradients(
        model, calibration, scored_weights(structures), max_batch_tokens=10_000), "element")
    summary = compress(model, calibration, "llm-pruner", tmp_path / "out", tokenizer=byte_tokenizer(),
                       block_range="1:", pruning_ratio=0.4, compute_dtype="float32", quiet=True)
    details = summary["details"]
    assert details["blocks"] == [1, 2]
    for index in (1, 2):
        block = model.model.layers[index]
        att = block.self_attn
        assert (att.q_proj.out_features, att.k_proj.out_features, att.v_proj.out_features) == (16, 8, 8)
        assert att.o_proj.in_features == 16 and att.num_key_value_groups == 2  # q heads per KV head unchanged
        assert block.mlp.gate_proj.out_features == block.mlp.up_proj.out_features == 42
        assert block.mlp.down_proj.in_features == 42
        heads, channels = scores[index - 1]
        assert details["kept"][str(index)]["kv_groups"] == [int(heads.argmax())]
        assert details["kept"][str(index)]["channels"] == sorted(channels.topk(42).indices.tolist())
    # block 0 is untouched, weights and all
    for name, param in model.model.layers[0].named_parameters():
        assert torch.equal(param, dict(reference.model.layers[0].named_parameters())[name])
    before, after = details["parameters_before"]["pruned_blocks"], details["parameters_after"]["pruned_blocks"]
    assert before - after == sum(p.numel() for p in reference.model.layers[1].parameters()) - \
        sum(p.numel() for p in model.model.layers[1].parameters()) + \
        sum(p.numel() for p in reference.model.layers[2].parameters()) - \
        sum(p.numel() for p in model.model.layers[2].parameters())
    assert 0.35 < details["removed_share"]["pruned_blocks"] < 0.45
    assert details["flops_per_token_after"]["total"] < details["flops_per_token_before"]["total"]
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.arange(10)[None]).logits).all()


@pytest.mark.parametrize("family", sorted(MODELS))
def test_the_smaller_checkpoint_reloads_with_identical_logits(family: str, tmp_path: Path):
    model = MODELS[family]()
    out = tmp_path / "pruned"
    compress(model, _calibration(seed=5), "llm-pruner", out, tokenizer=byte_tokenizer(), block_range="0:-1",
             pruning_ratio=0.3, quiet=True)
    record = json.loads((out / "llm_pruner.json").read_text())
    assert record["blocks"] == [0, 1] and record["shapes"]["model.layers.0.self_attn.k_proj"] == \
        [8, 32, int(family == "qwen2")]
    reloaded, _tokenizer = load_compressed(out)
    ids = torch.randint(0, 257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    assert reloaded.model.layers[2].self_attn.k_proj.out_features == 16  # the last block kept whole
    generated = reloaded.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 16)


def test_recovery_lowers_the_training_loss_and_merges_the_adapters(tmp_path: Path):
    model = tiny_llama(seed=6, layers=3)
    summary = compress(model, _calibration(samples=8, length=32, seed=6), "llm-pruner", tmp_path / "out",
                       tokenizer=byte_tokenizer(), block_range="0:", pruning_ratio=0.3, recovery_steps=40,
                       recovery_lr=3e-3, recovery_rank=4, max_batch_tokens=64, quiet=True)
    recovery = summary["details"]["recovery"]
    assert recovery["steps"] == 40 and recovery["source"] == "calibration set"
    assert recovery["loss_last_tenth"] < recovery["loss_first_tenth"] - 0.05
    assert not any("lora" in name for name, _ in model.named_parameters())
    reloaded, _ = load_compressed(tmp_path / "out")
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    ids = torch.arange(12)[None]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_recovery_reads_an_alpaca_file(tmp_path: Path):
    from cola.compress.llm_pruner.recovery import recovery_windows

    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
                                {"instruction": "Name it.", "input": "a cat", "output": "Tom"}] * 3))
    windows = recovery_windows(path, byte_tokenizer(), 40)
    text = byte_tokenizer().decode(torch.cat(windows).tolist())
    assert all(len(w) == 40 for w in windows) and "### Instruction:\nAdd 2 and 3." in text
    assert "### Input:\na cat\n\n### Response:\nTom" in text
    (tmp_path / "bad.jsonl").write_text('{"question": "?"}\n')
    with pytest.raises(ColaError, match="has neither a text field nor instruction and output fields .* question"):
        recovery_windows(tmp_path / "bad.jsonl", byte_tokenizer(), 40)


@pytest.mark.parametrize(("options", "message"), [
    ({"pruning_ratio": 1.0}, r"--pruning_ratio must lie in \(0, 1\), got 1.0"),
    ({"pruning_ratio": 0.0}, r"--pruning_ratio must lie in \(0, 1\), got 0.0"),
    ({"pruning_ratio": 0.8, "block_range": "0:"}, "would remove all 2 key/value heads of block 0; use a ratio "
                                                  "below 0.750"),
    ({"block_range": "5:"}, "--block_range 5: selects no block of this model's 3"),
    ({"block_range": "1-2"}, "--block_range '1-2' is not START:END"),
    ({"importance": "hessian"}, "importance"),
    ({"recovery_steps": 2, "recovery_data": "no/such.jsonl"}, "--recovery_data no/such.jsonl: no such file"),
])
def test_bad_input_is_one_line_and_writes_nothing(options: dict, message: str, tiny_model_dir: Path,
                                                  calibration_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    with pytest.raises(ColaError, match=message) as info:
        compress(str(tiny_model_dir), calibration_dir, "llm-pruner", out, quiet=True, **options)
    assert "\n" not in str(info.value) and not out.exists()


def test_recovery_without_peft_names_the_install(monkeypatch, tiny_model_dir: Path, calibration_dir: Path,
                                                 tmp_path: Path):
    import builtins

    real_import = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("No module named 'peft'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(ColaError, match=r"--recovery_steps needs peft, which is not installed: pip install "
                                        r"'cola\[recovery\]'"):
        compress(str(tiny_model_dir), calibration_dir, "llm-pruner", tmp_path / "out", block_range="0:",
                 recovery_steps=2, quiet=True)
    assert not (tmp_path / "out").exists()


def test_the_command_line_prints_parameters_and_flops_and_the_model_generates(tiny_model_dir: Path,
                                                                             calibration_dir: Path, tmp_path: Path,
                                                                             capsys):
    from cola.cli import main

    out = tmp_path / "pruned"
    assert main(["compress", "--model", str(tiny_model_dir), "--calibration", str(calibration_dir), "--output_dir",
                 str(out), "--method", "llm-pruner", "--block_range", "1:-1", "--importance", "vector",
                 "--recovery_steps", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert ("settings: pruning_ratio 0.2, block_range 1:-1, importance vector, compute_dtype bfloat16, "
            "recovery_steps 3") in printed
    assert "in the 1 pruned blocks" in printed and "FLOPs per token (at 24 tokens of context)" in printed
    assert "recovery: 3 LoRA steps on the calibration set, training loss" in printed
    summary = json.loads((out / "compression_summary.json").read_text())
    assert summary["kind"] == "pruning" and summary["details"]["removed"]["1"]["query_heads"] == 0
    model, _ = load_compressed(out)
    assert model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, do_sample=False).shape == (1, 8)


def test_gemma3_is_grouped_and_its_chunked_loss_is_the_models_own(tmp_path: Path):
    """Gemma 3: q/k norms over head_dim, sliding and global layers, final logit soft-capping; the chunked loss the
    gradients come from equals the model's own causal-LM loss."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from cola.compress.llm_pruner.importance import next_token_loss_sum

    torch.manual_seed(7)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=256, final_logit_softcapping=5.0,
        sliding_window=8, layer_types=["sliding_attention", "full_attention"])).eval()
    structures = find_structures(model, [0, 1])
    assert structures[0].attention.q == "model.layers.0.self_attn.q_proj" and structures[0].attention.q_per_kv == 2
    ids = torch.randint(0, 257, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss * 2 * 19
        torch.testing.assert_close(next_token_loss_sum(model, ids, chunk=7), expected, rtol=1e-5, atol=1e-5)
    plans = plan(model, structures, 0.3)
    summary = compress(model, _calibration(seed=8), "llm-pruner", tmp_path / "g",
                       tokenizer=byte_tokenizer(), block_range="0:", pruning_ratio=0.3, quiet=True)
    assert summary["details"]["removed"]["1"] == {"kv_groups": plans[1].kv_groups,
                                                  "query_heads": 2 * plans[1].kv_groups, "channels": plans[1].channels}
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
