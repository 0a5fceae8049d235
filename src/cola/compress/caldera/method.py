"""The CALDERA method: every decoder Linear decomposed as Q + L R by the sequential driver, saved twice.

The checkpoint holds the dense Q + L R weights (any transformers/vLLM loader reads it) and, beside it,
`caldera.safetensors` with the codes, scales and factors, which `restore` turns back into CalderaLinear layers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cola.compress.base import Method, compressible_linears, save_dense
from cola.compress.caldera.config import CalderaConfig, check_layer
from cola.errors import ColaError, first_line

if TYPE_CHECKING:
    import torch

    from cola.compress.calibration import CalibrationSet

logger = logging.getLogger(__name__)

CALDERA_FILE = "caldera.safetensors"
COMPRESS_AGAIN = "compress again (`cola compress --overwrite`) to rebuild it"


class Caldera(Method):
    name = "caldera"
    kind = "decomposition"
    backend = "native"
    config = CalderaConfig
    description = "CALDERA W = Q + L R, low precision plus quantized low rank (Saha et al., NeurIPS 2024)"

    def prepare(self, config: CalderaConfig, model: torch.nn.Module) -> CalderaConfig:
        """Without a group size CALDERA keeps one scale per row; a rank or group size that some layer cannot
        take fails here, before any work."""
        linears = compressible_linears(model)
        prepared = config if config.group_size is None else super().prepare(config, model)
        for linear in linears.values():
            check_layer(prepared, linear.out_features, linear.in_features)
        return prepared

    def run(self, model: torch.nn.Module, calibration: CalibrationSet | None, config: CalderaConfig, *,
            tokenizer: Any, output_dir: Path, quiet: bool, max_batch_tokens: int) -> dict[str, Any]:
        import torch

        from cola.compress.caldera.linear import CalderaLinear, save_caldera
        from cola.compress.driver import compress_sequentially
        from cola.compress.hessian_cache import calibration_digest
        from cola.models import find_decoder_layers

        assert calibration is not None  # CALDERA needs calibration (checked before the model loads)
        prefix, blocks = find_decoder_layers(model)
        finetuning = config.finetune_steps > 0
        held_out: list[int] = []
        if finetuning:  # refused before any work when the set is too small to hold samples out
            from cola.compress.caldera.finetune import held_out_samples

            held_out = held_out_samples(len(calibration), config.finetune_holdout)
        cache = None
        if config.hessian_cache is not None:
            from cola.compress.hessian_cache import HessianCache

            cache = HessianCache.open(config.hessian_cache, model, calibration.input_ids, len(blocks))
        reused = cache is not None and cache.complete

        modules: dict[str, CalderaLinear] = {}
        errors: dict[str, dict[str, float]] = {}
        linears: dict[str, torch.nn.Linear] = {}
        logs: list[dict[str, Any]] = []

        def keep_dense(name: str, module: CalderaLinear) -> None:
            # the dense copy keeps the sequential pass fast; the saved CalderaLinear holds the codes
            linear = linears.pop(name)
            linear.weight.data.copy_(module.factors.dequantize().to(linear.weight.device, linear.weight.dtype))

        def decompose(name: str, linear: torch.nn.Linear, stats: Any) -> CalderaLinear | None:
            module, result = CalderaLinear.from_linear(linear, stats.hessian, config)
            modules[name] = module
            linears[name] = linear
            errors[name] = {"error": result.best_error, "rtn_error": result.rtn_error}
            if finetuning:
                return module  # in the block until its fine-tuning is done
            keep_dense(name, module)
            return None

        def finetune(index: int, block: torch.nn.Module, train: list, held: list) -> None:
            from cola.compress.caldera.finetune import finetune_block

            log = finetune_block(index, block, train, held, config)
            logs.append(log.as_dict())
            logger.info("block %d: held-out relative error %.5f -> %.5f (step %d of %d)", index,
                        log.held_out_before, log.held_out_best, log.best_step, config.finetune_steps)
            for local, module in list(block.named_modules()):
                if isinstance(module, CalderaLinear):
                    name = f"{prefix}.{index}.{local}"
                    block.set_submodule(local, linears[name])
                    keep_dense(name, module)

        compress_sequentially(model, calibration, decompose, stats_kind="hessian", quiet=quiet,
                              max_batch_tokens=max_batch_tokens, hessian_cache=cache,
                              block_fn=finetune if finetuning else None, held_out=held_out,
                              layer_workers=torch.get_num_threads())
        order = {name: i for i, name in enumerate(name for name, _ in model.named_modules())}
        modules = dict(sorted(modules.items(), key=lambda item: order[item[0]]))  # decomposed concurrently: any order
        errors = {name: errors[name] for name in modules}
        details: dict[str, Any] = {}
        if finetuning:
            details["finetune"] = {
                "loss": "|block(x) - dense_block(x)|^2 / |dense_block(x) - x|^2", "steps_per_block":
                config.finetune_steps, "trained_on": {**calibration.describe(), "calibration_digest":
                                                     calibration_digest(calibration.input_ids)},
                "held_out_samples": held_out, "blocks": logs}
        metadata = {"finetune": json.dumps(details["finetune"]["trained_on"] | {"held_out_samples": held_out})} \
            if finetuning else None
        save_caldera(output_dir / CALDERA_FILE, modules, config, metadata=metadata)
        save_dense(model, tokenizer, output_dir)  # a plain checkpoint of the dense Q + L R
        mean = sum(e["error"] for e in errors.values()) / len(errors)
        rtn = [e["rtn_error"] for e in errors.values() if e["rtn_error"] is not None]
        return {"mean_activation_error": mean, "mean_rtn_error": sum(rtn) / len(rtn) if rtn else None,
                "hessians": "sequential" if cache is None else ("dense, read from the cache" if reused
                                                                 else "dense, computed and cached"),
                **details, "layer_errors": errors}

    def summary_lines(self, details: dict[str, Any]) -> list[str]:
        """Where the Hessians came from, and the mean held-out block error before and after fine-tuning."""
        lines = [f"Hessians: {details['hessians']}"] if "hessians" in details else []  # older summaries lack it
        blocks = details.get("finetune", {}).get("blocks")
        if blocks:
            before = sum(block["held_out_before"] for block in blocks) / len(blocks)
            best = sum(block["held_out_best"] for block in blocks) / len(blocks)
            lines.append(f"fine-tuning: held-out relative error of a block {before:.4f} -> {best:.4f} (mean of "
                         f"{len(blocks)} blocks)")
        return lines

    def check(self, output_dir: Path, config: CalderaConfig, *, reload: bool = True) -> dict[str, Any]:
        """The stored bits of every layer, counted from `caldera.safetensors` (codes at their bit width)."""
        from cola.compress.caldera.linear import load_caldera
        from cola.compress.verify import layer_type, summarize_layers

        modules, saved = load_caldera(output_dir / CALDERA_FILE)
        layers = {}
        for name, module in modules.items():
            params = module.in_features * module.out_features
            layers[name] = {"type": layer_type(name + ".weight"), "parameters": params, "sparsity": None,
                            "stored_bits": module.factors.bits_per_parameter() * params, "quantized": True,
                            "num_bits": saved.q_bits, "group_size": saved.group_size}
        return summarize_layers(layers, "caldera")

    def restore(self, model: torch.nn.Module, output_dir: Path) -> bool:
        """Swap the model's dense Q + L R layers for CalderaLinear modules built from `caldera.safetensors`,
        when the directory holds one."""
        path = Path(output_dir) / CALDERA_FILE
        if not path.is_file():
            return False
        from safetensors import SafetensorError

        from cola.compress.caldera.linear import load_caldera, replace_with_caldera

        try:
            modules, _config = load_caldera(path)
        except (SafetensorError, OSError) as exc:
            raise ColaError(f"cannot load {path}: {first_line(exc)}; {COMPRESS_AGAIN}") from exc
        replace_with_caldera(model, modules)
        return True

