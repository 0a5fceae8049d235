"""The compression methods cola runs, their options, and the validation of a user's choice of both.

One table says which options belong to which method; the CLI builds its flags from it and
`resolve_options` turns what the user gave into a complete, checked set of options (defaults filled in),
before any model is loaded, so a typo fails at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cola.errors import ColaError, unknown_choice

QUANT_BITS = (2, 3, 4, 8)
LR_BITS = (2, 3, 4, 8, 16)
PATTERNS = ("unstructured", "2:4")
QUANTIZERS = ("uniform", "nf")


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("bits", int, 4, "weight bits", QUANT_BITS),
    Option("group_size", int, None, "input columns sharing one scale (default: the largest of 128, 64, 32 "
           "that divides every layer's input size; caldera: one scale per row)"),
    Option("actorder", bool, False, "GPTQ activation ordering (columns by decreasing Hessian diagonal)"),
    Option("smoothing_strength", float, 0.8, "SmoothQuant migration strength alpha in (0, 1)"),
    Option("sparsity", float, 0.5, "fraction of weights set to zero, in (0, 1); 2:4 implies 0.5"),
    Option("pattern", str, "unstructured", "sparsity pattern", PATTERNS),
    Option("alpha", float, 0.5, "RIA: exponent of the input-activation norm"),
    Option("q_bits", int, 2, "CALDERA: bits of the backbone Q", QUANT_BITS),
    Option("lr_bits", int, 4, "CALDERA: bits of the low-rank factors L and R (16 = float16)", LR_BITS),
    Option("rank", int, 16, "CALDERA: rank of L R"),
    Option("iters", int, 10, "CALDERA: outer alternating-minimization iterations"),
    Option("quantizer", str, "uniform", "CALDERA: quantizer of Q", QUANTIZERS),
    Option("hadamard", bool, False, "CALDERA: randomized Hadamard incoherence processing"),
)}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    kind: str        # "quantization" | "pruning" | "decomposition"
    backend: str     # "llm-compressor" | "native"
    options: tuple[str, ...]
    summary: str

    @property
    def native(self) -> bool:
        return self.backend == "native"


METHODS: dict[str, MethodSpec] = {m.name: m for m in (
    MethodSpec("rtn", "quantization", "llm-compressor", ("bits", "group_size"),
               "round-to-nearest weight quantization; the data-free baseline"),
    MethodSpec("gptq", "quantization", "llm-compressor", ("bits", "group_size", "actorder"),
               "GPTQ weight quantization with Hessian error feedback"),
    MethodSpec("awq", "quantization", "llm-compressor", ("bits", "group_size"),
               "activation-aware weight quantization (scales searched on the calibration set)"),
    MethodSpec("smoothquant", "quantization", "llm-compressor", ("smoothing_strength",),
               "SmoothQuant smoothing then GPTQ: int8 weights and int8 dynamic activations (W8A8)"),
    MethodSpec("sparsegpt", "pruning", "llm-compressor", ("sparsity", "pattern"),
               "SparseGPT pruning with Hessian reconstruction"),
    MethodSpec("wanda", "pruning", "llm-compressor", ("sparsity", "pattern"),
               "Wanda pruning by |weight| x input-activation norm"),
    MethodSpec("ria", "pruning", "native", ("sparsity", "pattern", "alpha"),
               "RIA pruning by relative importance x activation norm^alpha (Zhang et al., ICLR 2024)"),
    MethodSpec("caldera", "decomposition", "native",
               ("q_bits", "lr_bits", "rank", "iters", "group_size", "quantizer", "hadamard"),
               "CALDERA W = Q + L R, low precision plus quantized low rank (Saha et al., NeurIPS 2024)"),
)}

NOT_SUPPORTED = {"llm-pruner": "structured pruning with gradient importance and LoRA recovery",
                 "flatquant": "learned affine transforms before quantization"}


def method_spec(name: str) -> MethodSpec:
    key = name.lower()
    if key in NOT_SUPPORTED:
        raise ColaError(f"method {name!r} ({NOT_SUPPORTED[key]}) is not supported yet. "
                        f"Valid choices: {', '.join(sorted(METHODS))}")
    if key not in METHODS:
        raise unknown_choice("compression method", name, METHODS)
    return METHODS[key]


def _flag(name: str) -> str:
    return f"--{name}"


def resolve_options(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """All options of `method`, the user's values checked and the rest at their defaults.

    `given` holds only what the user set (None values are treated as not set).
    """
    spec = method_spec(method)
    given = {k: v for k, v in given.items() if v is not None}
    for name in given:
        if name not in OPTIONS:
            raise unknown_choice("compression option", name, OPTIONS)
        if name not in spec.options:
            valid = ", ".join(_flag(o) for o in spec.options)
            raise ColaError(f"option {_flag(name)} does not apply to method {spec.name!r}; its options: {valid}")
    options = {name: given.get(name, OPTIONS[name].default) for name in spec.options}
    for name, value in options.items():
        choices = OPTIONS[name].choices
        if choices is not None and value is not None and value not in choices:
            raise ColaError(f"{_flag(name)} {value} is not supported by {spec.name}. "
                            f"Valid choices: {', '.join(str(c) for c in choices)}")
    if "sparsity" in options:
        if options["pattern"] == "2:4":
            if "sparsity" in given and abs(given["sparsity"] - 0.5) > 1e-9:
                raise ColaError(f"--pattern 2:4 prunes exactly half the weights; --sparsity {given['sparsity']} "
                                "contradicts it (leave --sparsity out or set 0.5)")
            options["sparsity"] = 0.5
        if not 0.0 < options["sparsity"] < 1.0:
            raise ColaError(f"--sparsity must lie in (0, 1), got {options['sparsity']}")
    if "smoothing_strength" in options and not 0.0 < options["smoothing_strength"] < 1.0:
        raise ColaError(f"--smoothing_strength must lie in (0, 1), got {options['smoothing_strength']}")
    if "alpha" in options and options["alpha"] < 0:
        raise ColaError(f"--alpha must be >= 0, got {options['alpha']}")
    for name in ("rank", "iters", "group_size"):
        value = options.get(name)
        if value is not None and value < 1:
            raise ColaError(f"{_flag(name)} must be a positive integer, got {value}")
    return options


def pick_group_size(in_features: list[int], requested: int | None) -> int:
    """The requested group size if it divides every layer's input size, else the largest of 128/64/32 that does."""
    sizes = sorted(set(in_features))
    if requested is not None:
        bad = [n for n in sizes if n % requested]
        if bad:
            valid = [g for g in (256, 128, 64, 32, 16) if all(n % g == 0 for n in sizes)]
            raise ColaError(f"--group_size {requested} does not divide the input size {bad[0]} of some layers; "
                            f"valid group sizes for this model: {', '.join(map(str, valid)) or 'none'}")
        return requested
    for group in (128, 64, 32):
        if all(n % group == 0 for n in sizes):
            return group
    raise ColaError(f"no group size of 128, 64 or 32 divides every layer's input size ({sizes}); "
                    "pass --group_size explicitly")
