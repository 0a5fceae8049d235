"""Output silencing for llm-compressor and compressed-tensors: their loguru log goes to stderr (never to stdout,
where cola prints its results), a quiet run shows none of their warnings, log lines or progress bars, and their
bars follow cola's rule (`cola.progress.bars_disabled`: not on a non-terminal stderr, not under TQDM_DISABLE)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

LOGGED_LIBRARIES = ("llmcompressor", "compressed_tensors")
LIBRARY_MODULES = ("llmcompressor.modifiers.gptq", "llmcompressor.modifiers.pruning",
                   "llmcompressor.modifiers.quantization", "llmcompressor.modifiers.transform",
                   "llmcompressor.pipelines", "llmcompressor.transformers.compression.compressed_tensors_utils",
                   "compressed_tensors.compressors", "compressed_tensors.quantization", "compressed_tensors.offload")

_logging_ready = False


def import_llmcompressor() -> None:
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
        chosen = os.environ.get("LLM_COMPRESSOR_LOG_LEVEL")
        level = (chosen or "WARNING").upper()

        def shown(record: Any) -> bool:
            # METRIC (per-layer timings and GPTQ errors, 7 lines a layer) sits above WARNING in loguru's
            # order; it is shown only when the user chose a log level
            return support_log_once(record) and (chosen is not None or record["level"].name != "METRIC")

        logger.add(lambda message: sys.stderr.write(message), level=level, filter=shown,
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
    """While llm-compressor runs: nothing on screen when quiet; otherwise its warnings on stderr, and its bars
    where `cola.progress.bars_disabled` lets bars draw (a terminal, no TQDM_DISABLE).

    Everything switched off here is switched back on at the end, so a later non-quiet run shows it again.
    """
    from loguru import logger

    from cola.progress import bars_disabled, silence_library_progress

    import_llmcompressor()
    silence_library_progress(quiet)
    if not quiet:
        with _quiet_library_bars() if bars_disabled(quiet) else contextlib.nullcontext():
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
