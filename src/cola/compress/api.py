"""`compress`: one entry point for every method, from the CLI and from Python.

It validates everything before the model loads (options, the output directory, the calibration set and its
hashes), runs the method (llm-compressor's `oneshot` or the native sequential driver), saves into a staging
directory beside the output directory, measures the saved weights (and fails loudly when the method did not
change them), records every file's sha256 in the summary, and only then swaps the whole directory in at once
(`cola.export.staged_outputs`), so a failure or a kill leaves the earlier model or none, never a mix.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from pathlib import Path
from typing import Any

import torch

from cola.compress.base import Method, MethodConfig
from cola.compress.calibration import CalibrationSet, load_calibration
from cola.compress.methods import METHODS, configure, method_named
from cola.errors import ColaError, unknown_choice
from cola.export import (check_output_dir, index_names, output_directory, read_index, run_environment,
                         staged_outputs, tree_hashes, verify_outputs)

SUMMARY_FILE = "compression_summary.json"
COMPRESS_AGAIN = "compress again (`cola compress --overwrite`) to rebuild it"
# the methods whose outputs are more than a plain checkpoint: they build or restore layers of their own
REBUILT_METHODS = frozenset(name for name, method in METHODS.items()
                            if type(method).build is not Method.build or type(method).restore is not Method.restore)


def holds_model(output_dir: Path) -> bool:
    return output_dir.is_dir() and ((output_dir / "config.json").exists() or any(output_dir.glob("*.safetensors")))


def _refuse_overlap(output_dir: Path, source: Path, role: str, *, inside_ok: bool) -> None:
    """Refuse an output directory that is `source` (the model or the calibration set), contains it, or (unless
    `inside_ok`) lies inside it: the model would be written over its own input."""
    out, src = output_dir.resolve(), source.resolve()
    if out == src:
        where = f"is the {role}"
    elif out in src.parents:
        where = f"contains the {role} {source}"
    elif src in out.parents and not inside_ok:
        where = f"lies inside the {role} {source}"
    else:
        return
    raise ColaError(f"--output_dir {output_dir} {where}: the compressed model would land on top of its own "
                    "input; name another directory")


def _prepare_output(output_dir: Path, overwrite: bool, *, model: Any, calibration: CalibrationSet | None) -> None:
    """Check the output directory before the model loads, creating nothing (see `check_output_dir`)."""
    if calibration is not None and calibration.path is not None:
        _refuse_overlap(output_dir, calibration.path, "calibration directory", inside_ok=False)
    model_path = model if isinstance(model, str) else getattr(model, "name_or_path", "")
    if model_path and Path(model_path).expanduser().exists():
        _refuse_overlap(output_dir, Path(model_path).expanduser(), "model's directory", inside_ok=True)
    check_output_dir(output_dir, holds_set=holds_model, what="a model")
    if holds_model(output_dir) and not overwrite:
        raise ColaError(f"output directory {output_dir} already holds a model; pass --overwrite to replace it")


def compress_set_names(directory: Path) -> set[str] | None:
    """The entries of an earlier output directory that belong to its model: those its summary lists (the rest
    is the user's and is kept), or None (all of it) when there is no summary listing them."""
    return index_names(directory / SUMMARY_FILE)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compress(model: Any, calibration: str | Path | CalibrationSet | None, method: str,
             output_dir: str | Path, *, tokenizer: Any = None, overwrite: bool = False, quiet: bool = False,
             dtype: str = "float32", device: str = "auto", max_batch_tokens: int = 4096,
             trust_remote_code: bool = False, config: MethodConfig | None = None,
             **options: Any) -> dict[str, Any]:
    """Compress `model` with the curated `calibration` set by `method` and save it to `output_dir`.

    `model` is a model name/path (loaded here, running its own code only with `trust_remote_code`) or an
    in-memory model (then pass `tokenizer`). The method's options are keyword `options` or its config object
    (`config=METHODS[method].config(...)`), not both. Returns the summary also written to
    `output_dir/compression_summary.json`, which lists every saved file's sha256 under "outputs".

    Refused before the model loads (ColaError, one line): unknown methods and options, an empty `output_dir`,
    one that is, contains or lies inside the calibration directory, is or contains the model's directory, is the
    current directory, holds files but no model, or holds a model without `overwrite`; a calibration set whose
    manifest is malformed or whose files do not match it; a device this machine lacks.

    >>> compress("embedded", "outputs/demo", "wanda", "outputs/wanda", sparsity=0.5)  # doctest: +SKIP
    """
    from cola.models import resolve_device

    spec = method_named(method)
    if config is not None and any(value is not None for value in options.values()):
        raise ColaError(f"pass {spec.name}'s options either as its config or as keywords, not both")
    config = configure(spec.name, options if config is None else config)
    device = resolve_device(device)  # auto: the best device here; one this machine lacks fails now
    output_dir = output_directory(output_dir)
    if calibration is None and spec.needs_calibration:
        raise ColaError(f"method {spec.name!r} needs a calibration set (--calibration CURATE_OUTPUT_DIR)")
    if isinstance(calibration, (str, Path)):
        calibration = load_calibration(calibration)  # read and checked against its manifest before the model
    _prepare_output(output_dir, overwrite, model=model, calibration=calibration)
    return _load_and_compress(model, tokenizer, calibration, spec, config, output_dir, quiet=quiet,
                              dtype=dtype, device=device, max_batch_tokens=max_batch_tokens,
                              trust_remote_code=trust_remote_code)


def _load_and_compress(model: Any, tokenizer: Any, calibration: CalibrationSet | None, spec: Method,
                       config: MethodConfig, output_dir: Path, *, quiet: bool, dtype: str, device: str,
                       max_batch_tokens: int, trust_remote_code: bool) -> dict[str, Any]:
    start = time.perf_counter()
    model_name = model if isinstance(model, str) else getattr(model, "name_or_path", "")
    if isinstance(model, str):
        from cola.models import load_model

        model, tokenizer = load_model(model, device=device, dtype=dtype, quiet=quiet,
                                      trust_remote_code=trust_remote_code)
    elif tokenizer is None:
        raise ColaError("pass the tokenizer along with an in-memory model")
    if calibration is not None:
        calibration.check_vocabulary(tokenizer)
    config = spec.prepare(config, model)  # the group size, and what else depends on the model, fixed once
    load_seconds = time.perf_counter() - start

    with staged_outputs(output_dir, set_names=compress_set_names) as staging:
        start = time.perf_counter()
        details = spec.run(model, calibration, config, tokenizer=tokenizer, output_dir=staging, quiet=quiet,
                           max_batch_tokens=max_batch_tokens)
        seconds = time.perf_counter() - start
        weights = spec.check(staging, config)
        summary = {"tool": "cola", "command": "compress", "model": model_name, "method": spec.name,
                   "kind": spec.kind, "backend": spec.backend, "options": dataclasses.asdict(config),
                   "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch."),
                   "calibration": calibration.describe() if calibration is not None else None,
                   "weights": weights, "seconds": round(seconds, 2), "load_seconds": round(load_seconds, 2),
                   "peak_rss_mb": round(peak_rss_mb(), 1), **run_environment(), "details": details,
                   "outputs": tree_hashes(staging)}
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _build(path: Path, dtype: str, device: str) -> tuple[Any, Any] | None:
    """(model, tokenizer) from the method whose `build` makes the model of `path` (LLM-Pruner's), else None."""
    from transformers import AutoTokenizer

    from cola.models import resolve_dtype

    torch_dtype = resolve_dtype(dtype, device)
    for method in METHODS.values():
        model = method.build(path, dtype=torch_dtype)
        if model is not None:
            return model.to(device), AutoTokenizer.from_pretrained(path)
    return None


def load_compressed(path: str | Path, *, dtype: str = "float32", device: str = "auto", quiet: bool = True,
                    caldera_layers: bool = True, caldera_forward: str = "factors",
                    trust_remote_code: bool = False, device_map: str | None = None, max_memory: str | None = None,
                    offload_folder: str | Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a `cola compress` output (or any model directory); CALDERA layers come back as
    CalderaLinear modules.

    A `cola compress` output is first checked against the sha256 of every file its compression_summary.json
    lists: a file missing, truncated or with a flipped byte is refused (ColaError, one line) before the model
    loads. `trust_remote_code` lets a model that needs its own Python code run it.

    Each method's `restore` puts back the layers a plain checkpoint cannot hold (CALDERA's codes).
    `caldera_layers=False` keeps the checkpoint's dense Q + L R weights instead: the same function (a test
    checks equal logits), at a dense model's speed in any dtype, where CalderaLinear dequantizes its codes in
    every forward and computes in float32 (about 9x slower to evaluate SmolLM2 on a CPU).
    `caldera_forward="cached"` keeps the CalderaLinear modules but has each rebuild its dense weight once
    (`CalderaLinear.cache_dense`); "factors" computes from the codes in every forward.

    `device_map`, `max_memory`, `offload_folder` shard a plain checkpoint (pruned, llm-compressor) over devices
    as `cola.models.load_model` does; an output whose method rebuilds its own layers (CALDERA, FlatQuant,
    LLM-Pruner's smaller shapes) is refused with them (ColaError, one line): it loads on one device.
    """
    from cola.config.run import CALDERA_FORWARDS

    if caldera_forward not in CALDERA_FORWARDS:
        raise unknown_choice("caldera_forward", caldera_forward, CALDERA_FORWARDS)
    from cola.compress.llmc.output import library_output
    from cola.devices import sharding_arguments
    from cola.models import input_device, load_model, resolve_device

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ColaError(f"{path} is not a saved model directory (no config.json)")
    sharded = bool(sharding_arguments(device, device_map, max_memory, offload_folder))  # checked before hashing
    device = resolve_device(device)  # auto: the best device here; one this machine lacks fails before hashing
    summary: dict[str, Any] = {}
    if (path / SUMMARY_FILE).is_file():
        summary = read_index(path / SUMMARY_FILE, what="compressed model", remedy=COMPRESS_AGAIN)
        if "outputs" in summary:  # summaries written before cola recorded hashes have none to check
            verify_outputs(path, summary, index_name=SUMMARY_FILE, what="compressed model", remedy=COMPRESS_AGAIN)
    if sharded and summary.get("method") in REBUILT_METHODS:
        raise ColaError(f"--device_map: a {summary['method']} output rebuilds its own layers and loads on one device; "
                        "use --device")
    built = _build(path, dtype, device)
    with library_output(quiet):  # compressed-tensors decompresses with bars of its own
        if built is not None:
            model, tokenizer = built
        else:
            sharding = {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder}
            model, tokenizer = load_model(str(path), device="auto" if sharded else device, dtype=dtype,
                                          quiet=quiet, trust_remote_code=trust_remote_code, **sharding)
        # compressed-tensors decompresses packed weights in a hook of the first forward: run it here, one
        # token, so that timings and weight checks after loading see the dense weights
        with torch.no_grad():
            model(torch.zeros((1, 1), dtype=torch.long, device=input_device(model)))
    if caldera_layers and any([method.restore(model, path) for method in METHODS.values()]):
        model.to(device)
        if caldera_forward == "cached":
            from cola.compress.caldera.linear import CalderaLinear

            for module in model.modules():
                if isinstance(module, CalderaLinear):
                    module.cache_dense()
    return model, tokenizer
