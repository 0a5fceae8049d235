"""The LLM-Pruner method: Taylor-scored KV head groups and MLP channels removed, optional LoRA recovery, a real
smaller checkpoint.

The pruned blocks have fewer heads and channels than the config says, and than the blocks kept whole, which no
transformers config can express per layer. The checkpoint is therefore the model's own config.json, the smaller
weights (model.safetensors) and `llm_pruner.json`, which records the shape of every pruned Linear. `build` (and
so `cola.compress.api.load_compressed`) makes the model from its config, swaps in Linears of the recorded shapes,
and loads the weights; another loader does the same in a few lines (README, "LLM-Pruner checkpoints").
Attention runs unchanged on the smaller layers: transformers reshapes by head_dim and repeats each KV head for
`num_key_value_groups` query heads, both of which pruning whole KV groups keeps.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cola.compress.base import Method, save_dense
from cola.compress.llm_pruner.config import LLMPrunerConfig, parse_block_range
from cola.errors import ColaError

if TYPE_CHECKING:
    import torch

    from cola.compress.calibration import CalibrationSet

logger = logging.getLogger(__name__)

PRUNER_FILE = "llm_pruner.json"


def parameter_count(modules: Any) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


def flops_per_token(model: torch.nn.Module, context: int) -> dict[str, int]:
    """Forward FLOPs of one token: 2 per weight of every Linear (lm_head included) and, per attention layer,
    2·2·(query heads)·head_dim per earlier position for the scores and the weighted values, averaged over the
    positions of a `context`-token sequence (a causal token at position t reads t + 1 positions)."""
    from cola.models import find_decoder_layers

    import torch

    linear = sum(2 * m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    _, blocks = find_decoder_layers(model)
    attention = 0
    for block in blocks:
        for module in block.modules():
            head_dim = getattr(module, "head_dim", None)
            q = getattr(module, "q_proj", None)
            if isinstance(head_dim, int) and isinstance(q, torch.nn.Linear):
                attention += 4 * q.out_features * (context + 1) // 2
    return {"linear": linear, "attention": attention, "total": linear + attention, "context": context}


class LLMPruner(Method):
    name = "llm-pruner"
    kind = "pruning"
    backend = "native"
    config = LLMPrunerConfig
    description = ("LLM-Pruner structured pruning of KV head groups and MLP channels by Taylor importance, LoRA "
                   "recovery (Ma et al., NeurIPS 2023)")

    def prepare(self, config: LLMPrunerConfig, model: torch.nn.Module) -> LLMPrunerConfig:
        """The blocks, their structures and the counts removed are checked here, before any gradient: a range
        selecting no block, an ungroupable block, a ratio taking every head or channel, recovery without peft."""
        self._plan(config, model)
        if config.recovery_steps:
            from cola.compress.llm_pruner.recovery import require_peft

            require_peft()
        return config

    @staticmethod
    def _plan(config: LLMPrunerConfig, model: torch.nn.Module) -> tuple[list, list]:
        from cola.compress.llm_pruner.prune import plan
        from cola.compress.llm_pruner.structures import find_structures
        from cola.models import find_decoder_layers

        _, blocks = find_decoder_layers(model)
        structures = find_structures(model, parse_block_range(config.block_range, len(blocks)))
        return structures, plan(model, structures, config.pruning_ratio)

    def run(self, model: torch.nn.Module, calibration: CalibrationSet | None, config: LLMPrunerConfig, *,
            tokenizer: Any, output_dir: Path, quiet: bool, max_batch_tokens: int) -> dict[str, Any]:
        import torch

        from cola.compress.llm_pruner.importance import calibration_gradients, group_importance, scored_weights
        from cola.compress.llm_pruner.prune import prune_block, pruned_shapes
        from cola.models import find_decoder_layers

        assert calibration is not None  # checked before the model loads
        structures, plans = self._plan(config, model)
        _, blocks = find_decoder_layers(model)
        pruned = [blocks[s.index] for s in structures]
        before = {"model": parameter_count([model]), "pruned_blocks": parameter_count(pruned)}
        flops_before = flops_per_token(model, calibration.sequence_length)
        compute_dtype = getattr(torch, config.compute_dtype)
        grads = calibration_gradients(model, calibration, scored_weights(structures),
                                      max_batch_tokens=max_batch_tokens, dtype=compute_dtype, quiet=quiet)
        scores = group_importance(model, structures, grads, config.importance)
        del grads
        kept: dict[int, dict[str, list[int]]] = {}
        for block, block_plan, block_scores in zip(structures, plans, scores):
            groups, channels = prune_block(model, block, block_plan, block_scores)
            kept[block.index] = {"kv_groups": groups, "channels": channels}
        after = {"model": parameter_count([model]), "pruned_blocks": parameter_count(pruned)}
        details: dict[str, Any] = {
            "blocks": [s.index for s in structures], "importance": config.importance,
            "parameters_before": before, "parameters_after": after,
            "removed_share": {key: 1 - after[key] / before[key] for key in before},
            "flops_per_token_before": flops_before,
            "flops_per_token_after": flops_per_token(model, calibration.sequence_length),
            "removed": {str(p.index): {"kv_groups": p.kv_groups, "query_heads": p.kv_groups * s.attention.q_per_kv,
                                       "channels": p.channels} for p, s in zip(plans, structures)},
            "kept": {str(index): value for index, value in kept.items()}}
        if config.recovery_steps:
            from cola.compress.base import compressible_linears
            from cola.compress.llm_pruner.recovery import recover, recovery_samples

            samples, source = recovery_samples(calibration, config.recovery_data, tokenizer)
            model, log = recover(model, samples, list(compressible_linears(model)), steps=config.recovery_steps,
                                 lr=config.recovery_lr, rank=config.recovery_rank, max_batch_tokens=max_batch_tokens,
                                 dtype=compute_dtype, seed=config.seed, quiet=quiet)
            log.source = source
            details["recovery"] = log.as_dict()
        record = {"format": 1, "method": self.name, "pruning_ratio": config.pruning_ratio,
                  "blocks": [s.index for s in structures], "shapes": pruned_shapes(model, structures)}
        save_dense(model, tokenizer, output_dir)
        (output_dir / PRUNER_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        return details

    def summary_lines(self, details: dict[str, Any]) -> list[str]:
        """Parameters and FLOPs per token before and after, and the recovery's loss."""
        if "parameters_before" not in details:
            return []
        before, after = details["parameters_before"], details["parameters_after"]
        flops0, flops1 = details["flops_per_token_before"], details["flops_per_token_after"]
        share = details["removed_share"]
        lines = [f"parameters: {before['model']:,} -> {after['model']:,} ({100 * share['model']:.1f} % fewer); in the "
                 f"{len(details['blocks'])} pruned blocks {before['pruned_blocks']:,} -> {after['pruned_blocks']:,} "
                 f"({100 * share['pruned_blocks']:.1f} % fewer)",
                 f"FLOPs per token (at {flops0['context']} tokens of context): {flops0['total'] / 1e6:.1f} M -> "
                 f"{flops1['total'] / 1e6:.1f} M"]
        recovery = details.get("recovery")
        if recovery:
            lines.append(f"recovery: {recovery['steps']} LoRA steps on the {recovery['source']}, training loss "
                         f"{recovery['loss_first_tenth']:.4f} -> {recovery['loss_last_tenth']:.4f} (first and last "
                         "tenth of the steps)")
        return lines

    def check(self, output_dir: Path, config: LLMPrunerConfig, *, reload: bool = True) -> dict[str, Any]:
        """The saved weights measured from the files; every pruned Linear must have the recorded shape and, with
        `reload`, the model must rebuild from them and give finite logits."""
        import torch

        from cola.compress.verify import load_and_run, saved_weight_summary

        summary = saved_weight_summary(output_dir)
        record = read_record(output_dir)
        for name, (out_features, in_features, _bias) in record["shapes"].items():
            entry = summary["layers"].get(name)
            if entry is None or entry["shape"] != [out_features, in_features]:
                raise ColaError(f"llm-pruner: the saved {name} is {entry and entry['shape']}, recorded "
                                f"[{out_features}, {in_features}]")
        if reload:
            load_and_run(output_dir, lambda path: load_pruned(path, dtype=torch.float32))
        return summary

    def build(self, output_dir: Path, *, dtype: torch.dtype) -> torch.nn.Module | None:
        """The pruned model of `output_dir` (eval mode, on the CPU): its config's model with the recorded Linear
        shapes and the saved weights; None when the directory holds no `llm_pruner.json`."""
        if not (Path(output_dir) / PRUNER_FILE).is_file():
            return None
        return load_pruned(output_dir, dtype=dtype)


def read_record(output_dir: Path) -> dict[str, Any]:
    """The `llm_pruner.json` of a pruned checkpoint; ColaError (one line) when it cannot be read."""
    from cola.io import read_mapping

    record = read_mapping(Path(output_dir) / PRUNER_FILE, what="LLM-Pruner record",
                          remedy="compress again (`cola compress --overwrite`) to rebuild it")
    if not isinstance(record.get("shapes"), dict):
        raise ColaError(f"{Path(output_dir) / PRUNER_FILE} has no shapes; compress again to rebuild it")
    return record


def load_pruned(output_dir: Path, *, dtype: Any = None) -> torch.nn.Module:
    """A pruned checkpoint as a model: built from its config.json, the Linears named in `llm_pruner.json` resized,
    then every weight file loaded strictly (tied weights tied again). Raises ColaError (one line) when a weight
    is missing or unexpected."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from cola.compress.llm_pruner.prune import resize_linears

    output_dir = Path(output_dir)
    record = read_record(output_dir)
    config = AutoConfig.from_pretrained(output_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    resize_linears(model, record["shapes"])
    state: dict[str, torch.Tensor] = {}
    for file in sorted(output_dir.glob("model*.safetensors")):
        state.update(load_file(str(file)))
    result = model.load_state_dict(state, strict=False)
    model.tie_weights()
    tied = {key for key in result.missing_keys if key.endswith("lm_head.weight")
            and getattr(config, "tie_word_embeddings", False)}
    missing = sorted(set(result.missing_keys) - tied)
    if missing or result.unexpected_keys:
        which = f"no weight for {missing[0]}" if missing else f"an unexpected weight {result.unexpected_keys[0]}"
        raise ColaError(f"the pruned checkpoint {output_dir} has {which}; compress again to rebuild it")
    return model.eval()
