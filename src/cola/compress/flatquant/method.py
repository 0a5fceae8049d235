"""The FlatQuant method: every decoder Linear behind a trained Kronecker transform and quantized, block by block
through the sequential driver, saved twice.

The checkpoint holds dense weights: each layer's fake-quantized transformed weight mapped back to the original input
space, (s ⊙ codes) · Pᵀ ⊙ c, so that any transformers/vLLM loader gets the weight-quantized model; activations and the
KV cache are NOT quantized there (a plain checkpoint has no place for the online transforms). Beside it,
`flatquant.safetensors` holds the codes, scales, transforms, clipping and sharing, which `restore` (called by
`cola.compress.api.load_compressed`) turns back into the exact quantized forward: FlatQuantLinear layers and, with
KV quantization, the "flatquant" attention function.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cola.compress.base import Method, save_dense
from cola.compress.flatquant.config import FlatQuantConfig
from cola.errors import ColaError, first_line

if TYPE_CHECKING:
    import torch

    from cola.compress.calibration import CalibrationSet

logger = logging.getLogger(__name__)

FLATQUANT_FILE = "flatquant.safetensors"
COMPRESS_AGAIN = "compress again (`cola compress --overwrite`) to rebuild it"
SCALE_BITS = 16      # one float16 scale per output channel
TRANSFORM_BITS = 32  # transforms, per-channel scales and clipping logits are stored in float32


class FlatQuant(Method):
    name = "flatquant"
    kind = "quantization"
    backend = "native"
    config = FlatQuantConfig
    description = ("FlatQuant: learned Kronecker affine transforms and clipping before W/A/KV quantization "
                   "(Sun et al., 2024, arXiv 2410.09426)")

    def run(self, model: torch.nn.Module, calibration: CalibrationSet | None, config: FlatQuantConfig, *,
            tokenizer: Any, output_dir: Path, quiet: bool, max_batch_tokens: int) -> dict[str, Any]:
        """Quantize `model` in place (it keeps FlatQuantLinear layers and, with `kv_bits` < 16, the "flatquant"
        attention) and write the dense checkpoint, the tokenizer and `flatquant.safetensors` into `output_dir`.
        Returns the details: bits, per-block relative output errors before/after training and their means."""
        import torch

        from cola.compress.driver import compress_sequentially
        from cola.compress.flatquant.linear import (ATTENTION, dense_view, register_attention, save_flatquant,
                                                    use_kv_quantization)
        from cola.compress.flatquant.train import quantize_block
        from cola.models import find_decoder_layers

        assert calibration is not None  # checked before the model loads
        prefix, _blocks = find_decoder_layers(model)
        generator = torch.Generator().manual_seed(config.seed)
        modules: dict[str, Any] = {}
        kv: dict[str, Any] = {}
        logs: list[dict[str, Any]] = []
        if config.kv_bits < 16:
            register_attention()
            model.set_attn_implementation(ATTENTION)  # before the driver builds the blocks' masks

        def block_fn(index: int, block: torch.nn.Module, train: list, held: list) -> None:
            layers, quantizer, log = quantize_block(index, block, train + held, config, generator)
            modules.update({f"{prefix}.{index}.{name}": module for name, module in layers.items()})
            if quantizer is not None:
                kv[f"{prefix}.{index}.self_attn"] = quantizer
            logs.append(log.as_dict())

        compress_sequentially(model, calibration, lambda *_: None, stats_kind="norms", quiet=quiet,
                              max_batch_tokens=max_batch_tokens, block_fn=block_fn)
        if kv:
            use_kv_quantization(model, kv)
        save_flatquant(output_dir / FLATQUANT_FILE, modules, kv, config)
        with dense_view(model):
            save_dense(model, tokenizer, output_dir)
        before = sum(log["loss_before"] for log in logs) / len(logs)
        after = sum(log["loss_after"] for log in logs) / len(logs)
        return {"weight_bits": config.w_bits, "activation_bits": config.a_bits, "kv_bits": config.kv_bits,
                "epochs": config.epochs, "mean_block_loss_before": before, "mean_block_loss_after": after,
                "loss": "|block(x) - dense_block(x)|^2 / |dense_block(x) - x|^2", "blocks": logs,
                "checkpoint": "dense weights = fake-quantized weights mapped back to the original space; activation "
                              "and KV quantization only through load_compressed (flatquant.safetensors)"}

    def summary_lines(self, details: dict[str, Any]) -> list[str]:
        """'W4A4 KV16: block output error 0.123 -> 0.045 (mean of N blocks)'."""
        if "mean_block_loss_before" not in details:
            return []
        return [f"W{details['weight_bits']}A{details['activation_bits']} KV{details['kv_bits']}: block output error "
                f"{details['mean_block_loss_before']:.4f} -> {details['mean_block_loss_after']:.4f} (mean of "
                f"{len(details['blocks'])} blocks, relative to what each block adds; {details['epochs']} epochs)"]

    def check(self, output_dir: Path, config: FlatQuantConfig, *, reload: bool = True) -> dict[str, Any]:
        """The stored bits of every layer from `flatquant.safetensors`: codes at `w_bits`, one 16-bit scale per output
        channel, and its share of the transform it reads (P1, P2, c and the activation clipping at 32 bits, split
        evenly between the layers sharing it); the KV quantizers' transforms are reported as `kv_transform_bits`.
        With `reload`, the dense checkpoint must load through transformers and give finite logits. Raises ColaError
        (one line) otherwise, or when a layer's codes leave the `w_bits` range."""

        from cola.compress.flatquant.linear import load_flatquant, shared_transforms
        from cola.compress.verify import layer_type, summarize_layers

        modules, kv, saved = load_flatquant(Path(output_dir) / FLATQUANT_FILE)
        if not modules:
            raise ColaError(f"flatquant quantized nothing: {FLATQUANT_FILE} holds no layer")
        transforms, sharing = shared_transforms(modules)
        readers = {key: sum(1 for k in sharing.values() if k == key) for key in transforms}
        low, high = -(2 ** (saved.w_bits - 1)), 2 ** (saved.w_bits - 1) - 1
        layers = {}
        for name, module in modules.items():
            codes_min, codes_max = int(module.codes.min()), int(module.codes.max())
            if codes_min < low or codes_max > high:
                raise ColaError(f"flatquant: {name}'s codes span [{codes_min}, {codes_max}], outside the "
                                f"{saved.w_bits}-bit range [{low}, {high}]")
            t = transforms[sharing[name]]
            transform_numel = sum(p.numel() for p in (t.left, t.right, t.scale, t.act_clip) if p is not None)
            transform_bits = TRANSFORM_BITS * transform_numel / readers[sharing[name]]
            params = module.in_features * module.out_features
            layers[name] = {"type": layer_type(name + ".weight"), "parameters": params, "sparsity": None,
                            "shape": [module.out_features, module.in_features], "quantized": True,
                            "num_bits": saved.w_bits, "group_size": None, "groups_per_row": 1, "symmetric": True,
                            "stored_bits": saved.w_bits * params + SCALE_BITS * module.out_features + transform_bits,
                            "transform_bits": transform_bits, "transform": sharing[name]}
        summary = summarize_layers(layers, "flatquant")
        summary["kv_transform_bits"] = TRANSFORM_BITS * sum(p.numel() for q in kv.values() for p in q.parameters())
        summary["quantization"] = {"weight_bits": saved.w_bits, "activation_bits": saved.a_bits,
                                   "kv_bits": saved.kv_bits}
        if reload:
            from cola.compress.verify import load_and_run

            load_and_run(Path(output_dir))
        return summary

    def restore(self, model: torch.nn.Module, output_dir: Path) -> bool:
        """Swap the model's dense layers for the FlatQuantLinear modules of `flatquant.safetensors` and, when it
        quantizes the KV cache, attach the KV quantizers and switch to the "flatquant" attention; False when the
        directory holds no such file. Raises ColaError on an unreadable file or a model that does not match."""
        path = Path(output_dir) / FLATQUANT_FILE
        if not path.is_file():
            return False
        from safetensors import SafetensorError

        from cola.compress.flatquant.linear import load_flatquant, replace_layers, use_kv_quantization

        try:
            modules, kv, _config = load_flatquant(path)
        except (SafetensorError, OSError) as exc:
            raise ColaError(f"cannot load {path}: {first_line(exc)}; {COMPRESS_AGAIN}") from exc
        replace_layers(model, modules)
        if kv:
            device = next(model.parameters()).device
            use_kv_quantization(model, {name: q.to(device) for name, q in kv.items()})
        return True
