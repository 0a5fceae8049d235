"""The CALDERA method: every decoder Linear decomposed as Q + L R by the sequential driver, saved twice.

The checkpoint holds the dense Q + L R weights (any transformers/vLLM loader reads it) and, beside it,
`caldera.safetensors` with the codes, scales and factors, which `restore` turns back into CalderaLinear layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cola.compress.base import Method, compressible_linears, save_dense
from cola.compress.caldera.config import CalderaConfig, check_layer
from cola.errors import ColaError, first_line

if TYPE_CHECKING:
    import torch

    from cola.compress.calibration import CalibrationSet

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
        from cola.compress.caldera.linear import CalderaLinear, save_caldera
        from cola.compress.driver import compress_sequentially

        modules: dict[str, CalderaLinear] = {}
        errors: dict[str, dict[str, float]] = {}

        def decompose(name: str, linear: torch.nn.Linear, stats: Any) -> None:
            module, result = CalderaLinear.from_linear(linear, stats.hessian, config)
            modules[name] = module
            errors[name] = {"error": result.best_error, "rtn_error": result.rtn_error}
            # the dense copy keeps the sequential pass fast; the saved CalderaLinear holds the codes
            linear.weight.data.copy_(module.factors.dequantize().to(linear.weight.dtype))

        cache = None
        if config.hessian_cache is not None:
            from cola.compress.hessian_cache import HessianCache
            from cola.models import find_decoder_layers

            assert calibration is not None  # CALDERA needs calibration (checked before the model loads)
            cache = HessianCache.open(config.hessian_cache, model, calibration.input_ids,
                                      len(find_decoder_layers(model)[1]))
        reused = cache is not None and cache.complete
        compress_sequentially(model, calibration, decompose, stats_kind="hessian", quiet=quiet,
                              max_batch_tokens=max_batch_tokens, hessian_cache=cache)
        save_caldera(output_dir / CALDERA_FILE, modules, config)
        save_dense(model, tokenizer, output_dir)  # a plain checkpoint of the dense Q + L R
        mean = sum(e["error"] for e in errors.values()) / len(errors)
        rtn = [e["rtn_error"] for e in errors.values() if e["rtn_error"] is not None]
        return {"mean_activation_error": mean, "mean_rtn_error": sum(rtn) / len(rtn) if rtn else None,
                "hessians": "sequential" if cache is None else ("dense, read from the cache" if reused
                                                                 else "dense, computed and cached"),
                "layer_errors": errors}

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

