"""Running an llm-compressor method: the calibration set handed to `oneshot` whole and in order, and the save.

The curated calibration set reaches llm-compressor verbatim: every sample, in the curated order, untruncated
and unpadded. Given a `datasets.Dataset`, llm-compressor 0.14 would keep the tokens (an `input_ids` column
skips its tokenization) but would reorder the samples: with `shuffle_calibration_samples=False` its
`LengthAwareSampler` sorts them by decreasing length, and with True it samples them at random. So we hand
`oneshot` a ready `DataLoader` (sequential batches of consecutive equal-length samples, a collate that only
stacks them), which it uses as is. Its sequential pipeline then traces the model with a data-less (meta) copy
of the first batch and runs every batch, in order, twice through each subgraph (a calibration pass and an
error-propagation pass).

The saved checkpoint is in compressed-tensors format (`save_compressed=True`), which transformers and vLLM load.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cola.compress.calibration import CalibrationSet
from cola.compress.llmc.output import library_output
from cola.errors import ColaError, first_line

if TYPE_CHECKING:
    from cola.compress.base import Method, MethodConfig

_quiet_runs: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


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


def run_llmcompressor(model: torch.nn.Module, tokenizer: Any, calibration: CalibrationSet | None, method: Method,
                      config: MethodConfig, *, quiet: bool) -> dict[str, Any]:
    """Compress `model` in place through `llmcompressor.oneshot` with `method`'s recipe for a prepared `config`
    (group size resolved: `Method.prepare`); return the recipe and what was run.

    A method that needs no calibration (rtn) runs data-free: the calibration set, if any, is not used. Nothing
    is written to disk here and no log file is opened (log_dir=None); `save_llmcompressor` writes the checkpoint.
    """
    if not callable(getattr(method, "recipe", None)):  # an llm-compressor method is one with a recipe
        raise ColaError(f"method {method.name!r} is not an llm-compressor method")
    _quiet_runs[model] = quiet
    with library_output(quiet):
        from llmcompressor import active_session, oneshot

        recipe = method.recipe(config, model)
        data_free = not method.needs_calibration
        if not data_free and (calibration is None or len(calibration) == 0):
            raise ColaError(f"method {method.name!r} needs a calibration set")
        kwargs: dict[str, Any] = {}
        if not data_free:
            # With a DataLoader oneshot skips its own dataset handling; the arguments below say the same
            # thing for the record (and would be what it used if it ever looked at them).
            kwargs = {"dataset": calibration.dataloader(), "num_calibration_samples": len(calibration),
                      "shuffle_calibration_samples": False, "max_seq_length": calibration.sequence_length,
                      "batch_size": 1}
        start = time.perf_counter()
        with _local_name_or_path(model), _no_pinning_without_accelerator(), torch.no_grad():
            try:
                oneshot(model=model, tokenizer=tokenizer, recipe=recipe, log_dir=None, output_dir=None, **kwargs)
            except ValueError as exc:  # llm-compressor's way of refusing a model or recipe
                first = first_line(exc)
                raise ColaError(f"llm-compressor cannot run {method.name} on this model: {first}") from exc
        seconds = time.perf_counter() - start
        recipe_yaml = active_session().lifecycle.recipe.yaml()
    info: dict[str, Any] = {"recipe": recipe_yaml, "modifiers": [type(m).__name__ for m in recipe],
                            "llmcompressor_seconds": round(seconds, 2),
                            "calibration_samples": 0 if data_free else len(calibration),
                            "calibration_tokens": 0 if data_free else calibration.num_tokens}
    group_size = getattr(config, "group_size", None)
    if group_size is not None:
        info["group_size"] = group_size
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
