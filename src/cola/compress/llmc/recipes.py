"""The llm-compressor methods: one class each, holding its config and its recipe (the modifiers `oneshot` runs).

rtn, gptq and awq quantize weights only, in groups of `group_size` input columns; rtn and gptq are symmetric
(no zero points), awq is asymmetric as in the AWQ paper and llm-compressor's AWQ recipes. smoothquant smooths
then quantizes to W8A8. sparsegpt and wanda prune the Linears inside the decoder blocks. Modifiers get explicit
`config_groups` so that bits and group size are exactly the ones asked for.

Adding an llm-compressor method: a class here (name, kind, config, summary, `recipe`) and one registration line
in `cola.compress.methods`.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cola.compress.base import (Method, MethodConfig, PruningConfig, PruningMethod, QuantizationMethod,
                                WeightQuantConfig, in_unit_interval)
from cola.compress.llmc.output import import_llmcompressor
from cola.settings import option

if TYPE_CHECKING:
    import torch

    from cola.compress.calibration import CalibrationSet

QUANT_TARGETS = ["Linear"]
QUANT_IGNORE = ["lm_head"]
PRUNE_IGNORE = ["re:.*lm_head"]
MASK_STRUCTURES = {"unstructured": "0:0", "2:4": "2:4"}


class LlmcMethod(Method):
    """A method run by `llmcompressor.oneshot` with the modifiers `recipe` returns, saved in compressed-tensors
    format (`cola.compress.llmc.run`)."""

    backend = "llm-compressor"

    @abstractmethod
    def recipe(self, config: MethodConfig, model: torch.nn.Module) -> list:
        """The llm-compressor modifiers for a prepared `config` (group size resolved)."""

    def run(self, model: torch.nn.Module, calibration: CalibrationSet | None, config: MethodConfig, *,
            tokenizer: Any, output_dir: Path, quiet: bool, max_batch_tokens: int) -> dict[str, Any]:
        from cola.compress.llmc.run import run_llmcompressor, save_llmcompressor

        details = run_llmcompressor(model, tokenizer, calibration, self, config, quiet=quiet)
        save_llmcompressor(model, tokenizer, output_dir)
        return details


# ---------------------------------------------------------------------------------------- shared pieces


def decoder_layer_class(model: torch.nn.Module) -> str:
    """Class name of the model's decoder block: the pruning modifiers target the Linears inside these blocks.

    (Targeting "Linear" directly would also reach lm_head under a name, "lm_head.", that no ignore entry
    spelled "lm_head" matches; the old "__ALL_PRUNABLE__" target no longer matches anything.)
    """
    from cola.models import find_decoder_layers

    _name, layers = find_decoder_layers(model)
    return type(layers[0]).__name__


def weight_args(bits: int, group_size: int, *, symmetric: bool = True) -> Any:
    """Static integer weights of `bits` bits, one scale (and zero point unless symmetric) per group."""
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="group",
                            group_size=group_size, dynamic=False)


def scheme(weights: Any, input_activations: Any = None) -> dict[str, Any]:
    """`config_groups` applying `weights` (and `input_activations`) to every targeted Linear."""
    from compressed_tensors.quantization import QuantizationScheme

    return {"group_0": QuantizationScheme(targets=QUANT_TARGETS, weights=weights,
                                          input_activations=input_activations)}


def w8a8_scheme() -> dict[str, Any]:
    """SmoothQuant's W8A8: int8 symmetric per-channel weights, int8 symmetric dynamic per-token activations."""
    from compressed_tensors.quantization import QuantizationArgs

    weights = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel", dynamic=False)
    activations = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
    return scheme(weights, activations)


# ------------------------------------------------------------------------------------------------ methods


@dataclass(frozen=True, kw_only=True)
class GPTQConfig(WeightQuantConfig):
    actorder: bool = option(False, help="GPTQ activation ordering (columns by decreasing Hessian diagonal)")


@dataclass(frozen=True, kw_only=True)
class SmoothQuantConfig(MethodConfig):
    smoothing_strength: float = option(0.8, help="SmoothQuant migration strength alpha in (0, 1)")

    def check(self) -> None:
        in_unit_interval("smoothing_strength", self.smoothing_strength)


class RTN(LlmcMethod, QuantizationMethod):
    name = "rtn"
    config = WeightQuantConfig
    description = "round-to-nearest weight quantization; the data-free baseline"
    needs_calibration = False

    def recipe(self, config: WeightQuantConfig, model: torch.nn.Module) -> list:
        import_llmcompressor()
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return [QuantizationModifier(config_groups=scheme(weight_args(config.bits, config.group_size)),
                                     ignore=QUANT_IGNORE)]


class GPTQ(LlmcMethod, QuantizationMethod):
    """GPTQ's `actorder` True is llm-compressor's "static" ordering (columns by decreasing Hessian diagonal,
    same checkpoint format); False means none. ("group" ordering, deprecated in compressed-tensors, would also
    store a column permutation.)"""

    name = "gptq"
    config = GPTQConfig
    description = "GPTQ weight quantization with Hessian error feedback"

    def recipe(self, config: GPTQConfig, model: torch.nn.Module) -> list:
        import_llmcompressor()
        from llmcompressor.modifiers.gptq import GPTQModifier

        return [GPTQModifier(config_groups=scheme(weight_args(config.bits, config.group_size)),
                             ignore=QUANT_IGNORE, actorder="static" if config.actorder else None)]


class AWQ(LlmcMethod, QuantizationMethod):
    name = "awq"
    config = WeightQuantConfig
    description = "activation-aware weight quantization (scales searched on the calibration set)"

    def recipe(self, config: WeightQuantConfig, model: torch.nn.Module) -> list:
        import_llmcompressor()
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform import AWQModifier

        weights = weight_args(config.bits, config.group_size, symmetric=False)
        return [AWQModifier(),  # mappings inferred from the architecture (Llama, Qwen, Mistral, ... known)
                QuantizationModifier(config_groups=scheme(weights), ignore=QUANT_IGNORE)]


class SmoothQuant(LlmcMethod, QuantizationMethod):
    name = "smoothquant"
    config = SmoothQuantConfig
    description = "SmoothQuant smoothing then GPTQ: int8 weights and int8 dynamic activations (W8A8)"

    def recipe(self, config: SmoothQuantConfig, model: torch.nn.Module) -> list:
        import_llmcompressor()
        from llmcompressor.modifiers.gptq import GPTQModifier
        from llmcompressor.modifiers.transform import SmoothQuantModifier

        return [SmoothQuantModifier(smoothing_strength=config.smoothing_strength),
                GPTQModifier(config_groups=w8a8_scheme(), ignore=QUANT_IGNORE, actorder=None)]

    def stored_as(self, config: MethodConfig) -> tuple[int, int | None]:
        return 8, None  # W8A8: 8-bit codes, one scale per output channel


class LlmcPruning(LlmcMethod, PruningMethod):
    """An llm-compressor pruning modifier (named by `modifier`, in `llmcompressor.modifiers.pruning`) over the
    Linears of the decoder blocks; lm_head is never pruned."""

    config = PruningConfig
    modifier: ClassVar[str]

    def recipe(self, config: PruningConfig, model: torch.nn.Module) -> list:
        import_llmcompressor()
        import llmcompressor.modifiers.pruning as pruning

        modifier = getattr(pruning, self.modifier)
        return [modifier(sparsity=config.sparsity, mask_structure=MASK_STRUCTURES[config.pattern],
                         targets=[decoder_layer_class(model)], ignore=PRUNE_IGNORE)]


class SparseGPT(LlmcPruning):
    name = "sparsegpt"
    description = "SparseGPT pruning with Hessian reconstruction"
    modifier = "SparseGPTModifier"


class Wanda(LlmcPruning):
    name = "wanda"
    description = "Wanda pruning by |weight| x input-activation norm"
    modifier = "WandaPruningModifier"
