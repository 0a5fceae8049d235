"""The llm-compressor methods (rtn, gptq, awq, smoothquant, sparsegpt, wanda) through `llmcompressor.oneshot`.

The curated calibration set reaches llm-compressor verbatim: every sample, in the curated order, untruncated
and unpadded, one sample per batch. Given a `datasets.Dataset`, llm-compressor 0.14 would keep the tokens
(an `input_ids` column skips its tokenization) but would reorder the samples: with
`shuffle_calibration_samples=False` its `LengthAwareSampler` sorts them by decreasing length, and with True it
samples them at random. So we hand `oneshot` a ready `DataLoader` (sequential sampler, batch size 1, a collate
that only stacks the one sample), which it uses as is. Its sequential pipeline then traces the model with a
data-less (meta) copy of the first batch and runs every batch, in order, twice through each subgraph (a
calibration pass and an error-propagation pass).

Modifiers get explicit `config_groups` so that bits and group size are exactly the ones asked for, and the
saved checkpoint is in compressed-tensors format (`save_compressed=True`), which transformers and vLLM load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cola.compress.calibration import CalibrationSet
from cola.compress.methods import method_spec, pick_group_size
from cola.errors import ColaError, first_line

METHODS = ("rtn", "gptq", "awq", "smoothquant", "sparsegpt", "wanda")
QUANT_TARGETS = ["Linear"]
QUANT_IGNORE = ["lm_head"]
PRUNE_IGNORE = ["re:.*lm_head"]
MASK_STRUCTURES = {"unstructured": "0:0", "2:4": "2:4"}
LOGGED_LIBRARIES = ("llmcompressor", "compressed_tensors")
LIBRARY_MODULES = ("llmcompressor.modifiers.gptq", "llmcompressor.modifiers.pruning",
                   "llmcompressor.modifiers.quantization", "llmcompressor.modifiers.transform",
                   "llmcompressor.pipelines", "llmcompressor.transformers.compression.compressed_tensors_utils",
                   "compressed_tensors.compressors", "compressed_tensors.quantization", "compressed_tensors.offload")

_logging_ready = False
_quiet_runs: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------------------------------- output


def _import_llmcompressor() -> None:
    """Import llm-compressor once, quietly, and send its log to stderr instead of stdout.

    At import llm-compressor replaces every loguru handler by an INFO handler on stdout (where cola prints
    its own results) and warns twice "No accelerator available" on CPU machines. We import it with its
    logging switched off (its own LLM_COMPRESSOR_LOG_DISABLED switch), then install one handler on stderr at
    WARNING (its INFO level logs three lines per layer; LLM_COMPRESSOR_LOG_LEVEL overrides), which
    `library_output` mutes for quiet runs.
    """
    global _logging_ready
    if _logging_ready:
        return
    from loguru import logger

    previous = os.environ.get("LLM_COMPRESSOR_LOG_DISABLED")
    os.environ["LLM_COMPRESSOR_LOG_DISABLED"] = "true"
    try:
        import importlib

        import llmcompressor  # noqa: F401
        from llmcompressor.logger import support_log_once

        # everything a run touches, imported now so that `_quiet_library_bars` finds their tqdm to silence
        for module in LIBRARY_MODULES:
            importlib.import_module(module)
    finally:
        if previous is None:
            del os.environ["LLM_COMPRESSOR_LOG_DISABLED"]
        else:
            os.environ["LLM_COMPRESSOR_LOG_DISABLED"] = previous
    if os.environ.get("LLM_COMPRESSOR_LOG_DISABLED", "").lower() != "true":
        logger.remove()  # what llm-compressor's own logger setup does, sink aside
        if "METRIC" not in logger._core.levels:  # noqa: SLF001 - llm-compressor logs GPTQ errors at this level
            logger.level("METRIC", no=38)
        # resolve sys.stderr at each message, so a replaced stderr (pytest's capture) is never held on to
        level = os.environ.get("LLM_COMPRESSOR_LOG_LEVEL", "WARNING").upper()
        logger.add(lambda message: sys.stderr.write(message), level=level, filter=support_log_once,
                   format="{time:HH:mm:ss} | {name}:{function} | {level} - {message}")
        for name in LOGGED_LIBRARIES:
            logger.enable(name)
    _logging_ready = True


def _quiet_tqdm_class(cls: type) -> type:
    class QuietTqdm(cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return QuietTqdm


class _QuietTqdmModule:
    """Stands in for the `tqdm` module where a library did `import tqdm` and calls `tqdm.tqdm(...)`."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self.tqdm = _quiet_tqdm_class(module.tqdm)
        self.trange = lambda *args, **kwargs: self.tqdm(range(*args), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


@contextlib.contextmanager
def _quiet_library_bars() -> Iterator[None]:
    """Replace the `tqdm` that llm-compressor and compressed-tensors modules imported by a disabled one."""
    import tqdm as tqdm_module
    from tqdm.std import tqdm as tqdm_class

    patched: list[tuple[Any, Any]] = []
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(LOGGED_LIBRARIES):
            continue
        current = getattr(module, "tqdm", None)
        if current is tqdm_module:
            replacement: Any = _QuietTqdmModule(tqdm_module)
        elif isinstance(current, type) and issubclass(current, tqdm_class):
            replacement = _quiet_tqdm_class(current)
        else:
            continue
        patched.append((module, current))
        module.tqdm = replacement
    try:
        yield
    finally:
        for module, original in patched:
            module.tqdm = original


@contextlib.contextmanager
def library_output(quiet: bool) -> Iterator[None]:
    """While llm-compressor runs: nothing on screen when quiet; its warnings and bars (on stderr) otherwise.

    Everything switched off here is switched back on at the end, so a later non-quiet run shows it again.
    """
    from loguru import logger

    from cola.progress import silence_library_progress

    _import_llmcompressor()
    silence_library_progress(quiet)
    if not quiet:
        yield
        return
    import transformers

    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    fx_log = logging.getLogger("torch.fx")  # "is_fx_tracing will return true ..." when llm-compressor traces
    fx_level = fx_log.level
    fx_log.setLevel(logging.ERROR)
    for name in LOGGED_LIBRARIES:
        logger.disable(name)
    try:
        with warnings.catch_warnings(), _quiet_library_bars():
            warnings.simplefilter("ignore")
            yield
    finally:
        if os.environ.get("LLM_COMPRESSOR_LOG_DISABLED", "").lower() != "true":
            for name in LOGGED_LIBRARIES:
                logger.enable(name)
        transformers.utils.logging.set_verbosity(verbosity)
        fx_log.setLevel(fx_level)


# --------------------------------------------------------------------------------------------------- recipe


def quantized_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The Linear layers the quantization recipes target (every Linear but lm_head), by name."""
    from compressed_tensors.utils import match_named_modules

    return dict(match_named_modules(model, QUANT_TARGETS, QUANT_IGNORE))


def decoder_layer_class(model: torch.nn.Module) -> str:
    """Class name of the model's decoder block: the pruning modifiers target the Linears inside these blocks.

    (Targeting "Linear" directly would also reach lm_head under a name, "lm_head.", that no ignore entry
    spelled "lm_head" matches; the old "__ALL_PRUNABLE__" target no longer matches anything.)
    """
    from cola.models import find_decoder_layers

    _name, layers = find_decoder_layers(model)
    return type(layers[0]).__name__


def _weight_args(bits: int, group_size: int, *, symmetric: bool = True) -> Any:
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="group",
                            group_size=group_size, dynamic=False)


def _scheme(weights: Any, input_activations: Any = None) -> dict[str, Any]:
    from compressed_tensors.quantization import QuantizationScheme

    return {"group_0": QuantizationScheme(targets=QUANT_TARGETS, weights=weights,
                                          input_activations=input_activations)}


def _w8a8_scheme() -> dict[str, Any]:
    """SmoothQuant's W8A8: int8 symmetric per-channel weights, int8 symmetric dynamic per-token activations."""
    from compressed_tensors.quantization import QuantizationArgs

    weights = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel", dynamic=False)
    activations = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
    return _scheme(weights, activations)


def resolve_group_size(model: torch.nn.Module, requested: int | None) -> int:
    """The group size for this model: the requested one if it divides every targeted layer, else picked."""
    linears = quantized_linears(model)
    if not linears:
        raise ColaError(f"{type(model).__name__} has no Linear layer to quantize")
    return pick_group_size([m.in_features for m in linears.values()], requested)


def build_recipe(method: str, options: dict[str, Any], model: torch.nn.Module) -> list:
    """The llm-compressor modifiers for `method` with resolved `options` (see methods.resolve_options).

    rtn, gptq and awq quantize weights only, in groups of `group_size` input columns; rtn and gptq are
    symmetric (no zero points), awq is asymmetric as in the AWQ paper and llm-compressor's AWQ recipes.
    GPTQ's `actorder` True means llm-compressor's "static" ordering (columns by decreasing Hessian diagonal,
    same checkpoint format); False means none. ("group" ordering, deprecated in compressed-tensors, would
    also store a column permutation.)
    """
    _import_llmcompressor()
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier, SmoothQuantModifier

    name = method_spec(method).name
    if name not in METHODS:
        raise ColaError(f"method {name!r} is not an llm-compressor method; those are: {', '.join(METHODS)}")
    if name in ("rtn", "gptq", "awq"):
        group_size = resolve_group_size(model, options.get("group_size"))
        if name == "rtn":
            return [QuantizationModifier(config_groups=_scheme(_weight_args(options["bits"], group_size)),
                                         ignore=QUANT_IGNORE)]
        if name == "gptq":
            return [GPTQModifier(config_groups=_scheme(_weight_args(options["bits"], group_size)),
                                 ignore=QUANT_IGNORE, actorder="static" if options["actorder"] else None)]
        weights = _weight_args(options["bits"], group_size, symmetric=False)
        return [AWQModifier(),  # mappings inferred from the architecture (Llama, Qwen, Mistral, ... known)
                QuantizationModifier(config_groups=_scheme(weights), ignore=QUANT_IGNORE)]
    if name == "smoothquant":
        return [SmoothQuantModifier(smoothing_strength=options["smoothing_strength"]),
                GPTQModifier(config_groups=_w8a8_scheme(), ignore=QUANT_IGNORE, actorder=None)]
    pruner = SparseGPTModifier if name == "sparsegpt" else WandaPruningModifier
    return [pruner(sparsity=options["sparsity"], mask_structure=MASK_STRUCTURES[options["pattern"]],
                   targets=[decoder_layer_class(model)], ignore=PRUNE_IGNORE)]


# ------------------------------------------------------------------------------------------------------ run


def _collate_stack(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Samples of one length stacked into a batch: no truncation, no padding."""
    ids = torch.stack([torch.as_tensor(row["input_ids"], dtype=torch.long) for row in rows])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def calibration_loader(calibration: CalibrationSet, max_batch_tokens: int = 4096) -> torch.utils.data.DataLoader:
    """Every curated sample, in order, whole; consecutive samples of one length share a batch."""
    from torch.utils.data import DataLoader

    dataset = calibration.dataset()
    return DataLoader(dataset, batch_sampler=calibration.batches(max_batch_tokens), collate_fn=_collate_stack)


@contextlib.contextmanager
def _no_pinning_without_accelerator() -> Iterator[None]:
    """llm-compressor 0.14's AWQ pins its cached activations for faster host-to-device copies, which fails
    ("Cannot access accelerator device when none is available") on a machine without one: skip it there."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


@contextlib.contextmanager
def _local_name_or_path(model: torch.nn.Module) -> Iterator[None]:
    """Point the model's config at a local folder holding its config.json while oneshot runs.

    oneshot re-reads the config from `config._name_or_path` to refuse already-quantized models: an in-memory
    model has none (and a hub id may mean a network call), so give it a temporary local one.
    """
    config = model.config
    original = getattr(config, "_name_or_path", "") or ""
    if original and (Path(original) / "config.json").is_file():
        yield
        return
    with tempfile.TemporaryDirectory(prefix="cola-llmc-config-") as folder:
        config.to_json_file(str(Path(folder) / "config.json"))
        config._name_or_path = folder
        try:
            yield
        finally:
            config._name_or_path = original


def run_llmcompressor(model: torch.nn.Module, tokenizer: Any, calibration: CalibrationSet | None, method: str,
                      options: dict[str, Any], *, quiet: bool) -> dict[str, Any]:
    """Compress `model` in place through `llmcompressor.oneshot`; return the recipe and what was run.

    rtn is data-free (the calibration set, if any, is not used). Nothing is written to disk here and no log
    file is opened (log_dir=None); `save_llmcompressor` writes the checkpoint.
    """
    name = method_spec(method).name
    _quiet_runs[model] = quiet
    with library_output(quiet):
        from llmcompressor import active_session, oneshot

        recipe = build_recipe(name, options, model)
        data_free = name == "rtn"
        if not data_free and (calibration is None or len(calibration) == 0):
            raise ColaError(f"method {name!r} needs a calibration set")
        kwargs: dict[str, Any] = {}
        if not data_free:
            # With a DataLoader oneshot skips its own dataset handling; the arguments below say the same
            # thing for the record (and would be what it used if it ever looked at them).
            kwargs = {"dataset": calibration_loader(calibration), "num_calibration_samples": len(calibration),
                      "shuffle_calibration_samples": False, "max_seq_length": calibration.sequence_length,
                      "batch_size": 1}
        start = time.perf_counter()
        with _local_name_or_path(model), _no_pinning_without_accelerator(), torch.no_grad():
            try:
                oneshot(model=model, tokenizer=tokenizer, recipe=recipe, log_dir=None, output_dir=None, **kwargs)
            except ValueError as exc:  # llm-compressor's way of refusing a model or recipe
                first = first_line(exc)
                raise ColaError(f"llm-compressor cannot run {name} on this model: {first}") from exc
        seconds = time.perf_counter() - start
        recipe_yaml = active_session().lifecycle.recipe.yaml()
    info: dict[str, Any] = {"recipe": recipe_yaml, "modifiers": [type(m).__name__ for m in recipe],
                            "llmcompressor_seconds": round(seconds, 2),
                            "calibration_samples": 0 if data_free else len(calibration),
                            "calibration_tokens": 0 if data_free else calibration.num_tokens}
    if name in ("rtn", "gptq", "awq"):
        info["group_size"] = resolve_group_size(model, options.get("group_size"))
    fallback = [n for m in recipe for n in getattr(m, "_rtn_fallback_module_names", [])]
    if fallback:  # GPTQ could not invert these layers' Hessians and rounded them to nearest instead
        info["rtn_fallback_layers"] = fallback
    return info


def save_llmcompressor(model: torch.nn.Module, tokenizer: Any, output_dir: Path, *,
                       quiet: bool | None = None) -> None:
    """Save the model compressed (compressed-tensors format), its tokenizer and llm-compressor's recipe.yaml.

    Quantized layers are stored packed (int4 etc. in int32 words, "pack-quantized") or as int8
    ("int-quantized", W8A8) with their scales; pruned models are stored dense with the zeros in place
    (compressed-tensors 0.19 has no sparse storage format any more). transformers loads either with
    `AutoModelForCausalLM.from_pretrained(output_dir)`. Call it right after `run_llmcompressor`: the recipe
    written comes from llm-compressor's active session, and saving converts the in-memory model's quantized
    layers to their packed form (reload the saved model to use it). `quiet` defaults to the setting of the
    last `run_llmcompressor` on this model.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if quiet is None:
        quiet = _quiet_runs.get(model, False)
    with library_output(quiet):
        from llmcompressor.transformers.compression.compressed_tensors_utils import modify_save_pretrained

        modify_save_pretrained(model)  # already done by oneshot; needed for a model that did not go through it
        config = model.config
        original = getattr(config, "_name_or_path", "") or ""
        # Saving re-reads the source config.json (and an earlier recipe.yaml) from `_name_or_path`, fetching
        # it from the hub when it is not a local folder: keep local sources, hide anything else.
        if not (original and (Path(original) / "config.json").is_file()):
            config._name_or_path = ""
        try:
            with warnings.catch_warnings():
                # llm-compressor hands the model to transformers as "offloaded" to CPU, where it already is
                warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
                model.save_pretrained(str(output_dir), save_compressed=True)
        finally:
            config._name_or_path = original
        tokenizer.save_pretrained(str(output_dir))
