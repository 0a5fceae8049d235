"""Where a model runs: one device (`--device`, checked against this machine) or sharded over several with
accelerate (`--device_map`: the placements and explicit maps cola accepts, the per-device memory caps), each
checked before any weight is read. `cola.models.load_model` applies them; `check_device_map` there checks an
explicit map against the model's modules."""

from __future__ import annotations

import re
from pathlib import Path

from cola.errors import ColaError

DEVICE_KINDS = ("cpu", "cuda", "mps", "xpu")  # what cola moves models to; cuda and xpu take an index
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps", "xpu", "xpu:N")


def available_devices() -> list[str]:
    """The device names this machine can run on now: auto, cpu, then every cuda:N, mps, every xpu:N present."""
    import torch

    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += ["xpu", *(f"xpu:{i}" for i in range(xpu.device_count()))]
    return found


def _missing_device_reason(kind: str) -> str:
    """Why a device kind is absent: torch built without it, or no such hardware found."""
    import torch

    if kind == "cuda":
        return (f"this torch {torch.__version__} is built without CUDA" if not torch.backends.cuda.is_built()
                else "torch finds no CUDA device (check the driver and CUDA_VISIBLE_DEVICES)")
    if kind == "mps":
        return "MPS needs Apple silicon and a torch built with it"
    return f"torch finds no {kind.upper()} device"


def resolve_device(name: str) -> str:
    """The device to run on: `auto` is cuda when available, else mps, else cpu; any other name is checked here,
    before a model loads, against this machine.

    Raises ColaError (one line, listing the valid names and those available here) for an unknown name such as
    `tpu` or `cuda:x`, and for a device this machine lacks (`cuda` without CUDA, `cuda:3` with two GPUs).
    """
    available = available_devices()
    if name == "auto":
        return next((d for d in ("cuda", "mps") if d in available), "cpu")
    kind, sep, index = name.partition(":")
    if kind not in DEVICE_KINDS or (sep and (kind not in ("cuda", "xpu") or not index.isdigit())):
        from cola.errors import unknown_choice

        raise ColaError(f"{unknown_choice('device', name, DEVICE_CHOICES)} (available here: {', '.join(available)})")
    if name not in available:
        if kind in available:  # an index past the last device of its kind
            count = sum(d.startswith(f"{kind}:") for d in available)
            reason = f"this machine has {count} {kind.upper()} device{'s' if count != 1 else ''}"
        else:
            reason = _missing_device_reason(kind)
        raise ColaError(f"device {name!r} is not available: {reason}; available here: {', '.join(available)}")
    return name


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's own placements


def parse_device_map(text: str | None) -> str | dict[str, int | str] | None:
    """`--device_map` as accelerate takes it: one of DEVICE_MAP_STRATEGIES, or {module name: device} given as
    inline JSON or a .json file. A device is a GPU index, cuda:N, xpu:N, mps, cpu (weights in RAM, run there or
    streamed to the GPU) or disk (weights memory-mapped from the offload folder); each is checked against this
    machine before any weight is read.

    Raises ColaError (one line) for an unknown strategy, a file that is missing or not a JSON object of module
    names to devices, `meta` (weights that would never load) or a device this machine lacks."""
    import json

    if text is None:
        return None
    if text in DEVICE_MAP_STRATEGIES:
        return text
    if text.lstrip().startswith(("{", "[")):
        raw, where = text, "--device_map"
    else:
        path = Path(text)
        if not path.is_file():
            raise ColaError(f"--device_map {text!r} is neither a placement ({', '.join(DEVICE_MAP_STRATEGIES)}) "
                            "nor a JSON file of {module: device} (no such file)")
        raw, where = path.read_text(encoding="utf-8"), f"--device_map {text}"
    try:
        mapping = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ColaError(f"{where}: not JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    if not isinstance(mapping, dict) or not mapping or not all(
            isinstance(key, str) and isinstance(value, (int, str)) and not isinstance(value, bool)
            for key, value in mapping.items()):
        raise ColaError(f"{where} must be a JSON object of module names to devices, e.g. "
                        '{"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "lm_head": "cpu"}')
    for module, device in mapping.items():
        if device == "meta":
            raise ColaError(f"{where} puts {module} on meta, where its weights would never load; use cpu or disk "
                            "to offload it")
        if device != "disk":
            resolve_device(f"cuda:{device}" if isinstance(device, int) else device)
    return mapping


def parse_max_memory(text: str | None) -> dict[int | str, str] | None:
    """`--max_memory` as accelerate takes it: "0=70GiB,1=70GiB,cpu=200GiB" → {0: "70GiB", 1: "70GiB",
    "cpu": "200GiB"}, the most each device may hold of the weights. Raises ColaError (one line) for a malformed
    entry."""
    if text is None:
        return None
    limits: dict[int | str, str] = {}
    for entry in text.split(","):
        device, sep, size = (part.strip() for part in entry.partition("="))
        if not sep or not re.fullmatch(r"\d+(\.\d+)?\s*([KMGT]i?B|B)?", size, flags=re.IGNORECASE) or not (
                device.isdigit() or device in ("cpu", "mps") or re.fullmatch(r"(cuda|xpu):\d+", device)):
            raise ColaError(f"--max_memory entry {entry.strip()!r} is not DEVICE=SIZE (e.g. 0=70GiB,1=70GiB,"
                            "cpu=200GiB; DEVICE a GPU index, cuda:N, xpu:N, mps or cpu)")
        limits[int(device) if device.isdigit() else device] = size
    return limits


def sharding_arguments(device: str, device_map: str | None, max_memory: str | None = None,
                       offload_folder: str | Path | None = None) -> dict:
    """from_pretrained's sharding arguments, checked: {} without a device map, else device_map (parsed),
    offload_folder (None until `load_model` makes a temporary one) and max_memory when given. Reads no weights.

    Raises ColaError (one line) for --device with --device_map, --max_memory or --offload_folder without a device
    map, --max_memory with an explicit map, and what `parse_device_map` and `parse_max_memory` refuse."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ColaError("--max_memory and --offload_folder shard the model: give --device_map too (e.g. auto)")
        return {}
    if device != "auto":
        raise ColaError(f"give --device or --device_map, not both (--device {device} puts the whole model on one "
                        f"device; --device_map {device_map} shards it)")
    mapping = parse_device_map(device_map)
    limits = parse_max_memory(max_memory)
    if limits is not None and not isinstance(mapping, str):
        raise ColaError(f"--max_memory caps what a placement ({', '.join(DEVICE_MAP_STRATEGIES)}) puts on each "
                        "device; an explicit --device_map already says where everything goes")
    arguments = {"device_map": mapping, "offload_folder": None if offload_folder is None else str(offload_folder)}
    return arguments | ({"max_memory": limits} if limits is not None else {})


def main_device(mapping: str | dict) -> str:
    """The device that picks the dtype of a sharded model: the first GPU named (any GPU for a placement), else
    cpu."""
    import torch

    if isinstance(mapping, str):
        return "cuda" if torch.cuda.is_available() else "cpu"
    for value in mapping.values():
        if isinstance(value, int):
            return f"cuda:{value}"
        if value not in ("cpu", "disk"):
            return value
    return "cpu"
