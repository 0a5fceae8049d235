"""The compression-method interface, and the pieces several methods share.

A method is one class (see `Method`): its name, its kind, its backend, ONE frozen keyword-only config class
(validated at construction), whether it needs a calibration set, `prepare` (fill in what depends on the model:
the group size), `run` (compress the model in place and write its checkpoint) and `check` (measure the saved
weights and fail loudly when the method did nothing). `cola.compress.methods.METHODS` registers one instance of
each, one line per method; nothing outside a method's own class asks which method it is.

This module imports no torch: the registry, and the CLI flags made from the config classes, load without it.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cola.errors import ColaError
from cola.schema import check_field_types
from cola.settings import build, check_choices, option

if TYPE_CHECKING:
    import torch

    from cola.compress.calibration import CalibrationSet

QUANT_BITS = (2, 3, 4, 8)
PATTERNS = ("unstructured", "2:4")
QUANTIZERS = ("uniform", "nf")  # the quantizers of `cola.compress.quant`
KINDS = ("quantization", "pruning", "decomposition")
# The one list of group sizes: a group size left unset is the largest of these that divides the input size of
# every compressed layer; one that does not divide is refused with the ones of these that do.
GROUP_SIZES = (128, 64, 32, 16)
GROUP_SIZE_HELP = (f"input columns sharing one scale (default: the largest of {', '.join(map(str, GROUP_SIZES))} "
                   "that divides every layer's input size; caldera: one scale per row)")


# ---------------------------------------------------------------------------------------------- configs


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method's config: field types, choices and ranges are checked at construction, each
    failure one ColaError line naming the option (as its flag) and what it takes.

    Choices are listed in their declared order ("2, 3, 4, 8, 16"; "unstructured, 2:4")."""

    # the settings `cola compress` prints after a run, in this order (empty: every field that is set)
    summary_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        check_field_types(self)
        check_choices(self, as_flag=True)
        self.check()

    def check(self) -> None:
        """Range checks of the subclass (raise ColaError)."""


def at_least_one(config: MethodConfig, *names: str) -> None:
    """Refuse a field of `config` among `names` that is set (not None) and below 1."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ColaError(f"--{name} must be a positive integer, got {value}")


def in_unit_interval(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ColaError(f"--{name} must lie in (0, 1), got {value}")


def seed_option() -> Any:
    """The `seed` field of the methods that draw random numbers: one help for all, off the command line."""
    return option(0, help="seed of the method's random draws (CALDERA: the randomized SVD and the Hadamard signs; "
                          "FlatQuant: the orthogonal initialisation; LLM-Pruner: the LoRA initialisation and batch "
                          "order)", cli=False)


def group_size_option() -> Any:
    """The `group_size` field: the same flag, type and help for every method that has one."""
    return option(None, help=GROUP_SIZE_HELP)


@dataclass(frozen=True, kw_only=True)
class WeightQuantConfig(MethodConfig):
    """Weight-only quantization: `bits`-bit codes, one scale per `group_size` input columns (rtn, awq)."""

    bits: int = option(4, help="weight bits", choices=QUANT_BITS)
    group_size: int | None = group_size_option()

    def check(self) -> None:
        at_least_one(self, "group_size")


@dataclass(frozen=True, kw_only=True)
class PruningConfig(MethodConfig):
    """Pruning to a fraction `sparsity` of zero weights, unstructured or 2:4 (sparsegpt, wanda)."""

    sparsity: float = option(0.5, help="fraction of weights set to zero, in (0, 1); 2:4 implies 0.5")
    pattern: str = option("unstructured", help="sparsity pattern", choices=PATTERNS)

    def check(self) -> None:
        if self.pattern == "2:4" and abs(self.sparsity - 0.5) > 1e-9:
            raise ColaError(f"--pattern 2:4 prunes exactly half the weights; --sparsity {self.sparsity} "
                            "contradicts it (leave --sparsity out or set 0.5)")
        in_unit_interval("sparsity", self.sparsity)


# ------------------------------------------------------------------------------------------- group size


def resolve_group_size(in_features: Iterable[int], requested: int | None) -> int:
    """The group size for layers of these input sizes: `requested` if it divides every one, else the largest
    of GROUP_SIZES that does. Raises ColaError (one line) when `requested` does not divide some size (naming
    the GROUP_SIZES that do) or, with nothing requested, when none of GROUP_SIZES divides them all."""
    sizes = sorted(set(in_features))
    valid = [g for g in GROUP_SIZES if all(n % g == 0 for n in sizes)]
    if requested is not None:
        bad = [n for n in sizes if n % requested]
        if bad:
            raise ColaError(f"--group_size {requested} does not divide the input size {bad[0]} of some layers; "
                            f"valid group sizes for this model: {', '.join(map(str, valid)) or 'none'}")
        return requested
    if not valid:
        raise ColaError(f"no group size of {', '.join(map(str, GROUP_SIZES))} divides every layer's input size "
                        f"({sizes}); pass --group_size explicitly")
    return valid[0]


def compressible_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Every Linear layer of `model` but lm_head, by name: the layers every method compresses."""
    import torch

    linears = {name: module for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")}
    if not linears:
        raise ColaError(f"{type(model).__name__} has no Linear layer to compress")
    return linears


# ------------------------------------------------------------------------------------------------ method


class Method(ABC):
    """One compression method. Subclasses set the class attributes and implement `run` (and `check` where
    the saved weights need more than the kind's check); `cola.compress.methods` registers one instance."""

    name: ClassVar[str]
    kind: ClassVar[str]                     # one of KINDS
    backend: ClassVar[str]                  # "llm-compressor" | "native"
    config: ClassVar[type[MethodConfig]]    # the method's one config class
    description: ClassVar[str]              # one line saying what it does, for listings
    needs_calibration: ClassVar[bool] = True

    @property
    def options(self) -> tuple[str, ...]:
        """The names of the method's options: its config's fields, in order."""
        return tuple(f.name for f in dataclasses.fields(self.config) if f.init)

    def configure(self, options: Mapping[str, Any] | MethodConfig) -> MethodConfig:
        """The method's config from the options a user gave (None values count as not given), strictly: an
        option of another method is a one-line ColaError listing this one's; types, choices and ranges are
        the config's own checks."""
        if type(options) is self.config:
            return options
        if isinstance(options, MethodConfig):
            raise ColaError(f"method {self.name!r} takes a {self.config.__name__}, "
                            f"not a {type(options).__name__}")
        given = {name: value for name, value in options.items() if value is not None}
        for name in given:
            if name not in self.options:
                flags = {f.name for f in dataclasses.fields(self.config) if f.metadata.get("cli", True)}
                valid = ", ".join(f"--{o}" for o in self.options if o in flags)  # not the config-only fields
                raise ColaError(f"option --{name} does not apply to method {self.name!r}; its options: {valid}")
        return build(self.config, given, source=f"{self.name} options")

    def prepare(self, config: MethodConfig, model: torch.nn.Module) -> MethodConfig:
        """The config with what depends on the model filled in, checked before any work: a group size left
        unset is picked, one given is checked against every layer (`resolve_group_size`)."""
        if "group_size" not in self.options:
            return config
        sizes = [m.in_features for m in compressible_linears(model).values()]
        return dataclasses.replace(config, group_size=resolve_group_size(sizes, config.group_size))

    @abstractmethod
    def run(self, model: torch.nn.Module, calibration: CalibrationSet | None, config: MethodConfig, *,
            tokenizer: Any, output_dir: Path, quiet: bool, max_batch_tokens: int) -> dict[str, Any]:
        """Compress `model` in place with a prepared `config` and write its checkpoint (and tokenizer) into
        `output_dir`; return the method's details for the summary."""

    def check(self, output_dir: Path, config: MethodConfig, *, reload: bool = True) -> dict[str, Any]:
        """Measure the saved weights (`verify.saved_weight_summary`) and raise a one-line ColaError unless they
        show the method's effect (`check_summary`); with `reload`, also load and run the checkpoint through
        transformers (`verify.reload_check`). Returns the weights summary."""
        from cola.compress.verify import reload_check, saved_weight_summary

        summary = saved_weight_summary(output_dir)
        self.check_summary(output_dir, config, summary)
        if reload:
            reload_check(output_dir, summary)
        return summary

    def check_summary(self, output_dir: Path, config: MethodConfig, summary: dict[str, Any]) -> None:
        """Raise ColaError unless the measured weights show the method's effect (the kind's check)."""
        raise NotImplementedError(f"{type(self).__name__} checks its saved weights in check()")

    def summary_lines(self, details: dict[str, Any]) -> list[str]:
        """Lines the printed summary adds about this run, from the details `run` returned (none, for most)."""
        return []

    def build(self, output_dir: Path, *, dtype: torch.dtype) -> torch.nn.Module | None:
        """The model of `output_dir` (in eval mode, on the CPU, in `dtype`) where transformers' from_pretrained
        cannot build it from the files (LLM-Pruner's blocks of different sizes); None for most methods."""
        return None

    def restore(self, model: torch.nn.Module, output_dir: Path) -> bool:
        """Put back, on a model loaded from `output_dir`, layers the plain checkpoint cannot hold (CALDERA's
        codes); whether anything was put back (nothing, for most methods)."""
        return False


class PruningMethod(Method):
    """A method that zeroes weights: its saved layers must hold the asked sparsity (and pattern)."""

    kind = "pruning"

    def check_summary(self, output_dir: Path, config: MethodConfig, summary: dict[str, Any]) -> None:
        from cola.compress.verify import check_pruned

        check_pruned(output_dir, self.name, summary, sparsity=config.sparsity, pattern=config.pattern)


class QuantizationMethod(Method):
    """A method that stores weights as integer codes: every saved layer must hold the asked bits and grouping."""

    kind = "quantization"

    def stored_as(self, config: MethodConfig) -> tuple[int, int | None]:
        """(bits, group size) the saved layers must show; a group size of None means one scale per output
        channel."""
        return config.bits, config.group_size

    def check_summary(self, output_dir: Path, config: MethodConfig, summary: dict[str, Any]) -> None:
        from cola.compress.verify import check_quantized

        bits, group_size = self.stored_as(config)
        check_quantized(self.name, summary, bits=bits, group_size=group_size)


def read_method_file(path: Path, what: str, format_version: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a method's side file (`caldera.safetensors`, `flatquant.safetensors`), whose metadata
    "format" must be `format_version`. Raises ColaError (one line, naming `what`) on a missing, unreadable or foreign
    file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ColaError(f"{what} file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not such a file"
        raise ColaError(f"cannot read {what} file {path}: {exc}") from exc
    if metadata.get("format") != format_version:
        raise ColaError(f"{path} is not a {what} file of this version (format {metadata.get('format')!r}, "
                        f"expected {format_version!r})")
    return metadata, tensors


def save_dense(model: torch.nn.Module, tokenizer: Any, output_dir: Path) -> None:
    """A plain checkpoint that any transformers/vLLM loader reads, and the tokenizer beside it."""
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
