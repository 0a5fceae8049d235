"""What the saved weights show, read from the safetensors files themselves, and a loud failure when a method
did nothing.

A recipe whose targets match no layer runs without complaint and saves the model unchanged, so cola measures
the checkpoint on disk: per decoder Linear, its parameters, the fraction of exact zeros (dense weights) or the
exact storage cost of quantized ones (compressed-tensors "pack-quantized": int32 words holding `num_bits`-bit
codes plus one scale per group and, when asymmetric, packed zero points; "int-quantized": int8 codes plus
scales), then checks that the method's effect is there.

Loading: with transformers 5.17 and compressed-tensors 0.19, `AutoModelForCausalLM.from_pretrained(dir)` of a
quantized checkpoint keeps the packed codes (`dequantize=False`, the default; `run_compressed` is deprecated)
and decompresses them on the first forward pass; `quantization_config=CompressedTensorsConfig(dequantize=True)`
decompresses at load time into float weights on the quantization grid, with `weight_scale` kept on each
layer. Pruned checkpoints are plain dense weights (compressed-tensors 0.19 no longer writes sparse formats)
and load with their zeros in place.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cola.errors import ColaError, first_line

# a decoder block's Linear weights live under "<...>.layers.<i>." (Llama, Qwen, Mistral, ...), "h.<i>." (GPT-2
# style) or "blocks.<i>."; embeddings, lm_head and norms (1-D) are not counted
DECODER_BLOCK = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.\d+\.")
PACKED = "weight_packed"
QUANT_PARAMS = ("weight_scale", "weight_zero_point", "weight_g_idx")
METADATA_PARAMS = ("weight_shape",)
SPARSITY_TOLERANCE = 0.005   # 0.5 percentage points
GRID_TOLERANCE = 1e-3        # |W / scale - integer|, i.e. relative to the scale


def layer_type(name: str) -> str:
    """'model.layers.3.self_attn.q_proj.weight' -> 'q_proj': the module name before the parameter name."""
    parts = name.split(".")
    if len(parts) > 1 and (parts[-1].startswith("weight") or parts[-1] == "bias"):
        parts = parts[:-1]
    return parts[-1]


# ------------------------------------------------------------------------------------------------ reading


def _weight_files(output_dir: Path) -> list[Path]:
    index = output_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [output_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(output_dir.glob("model*.safetensors"))
    if not files:
        raise ColaError(f"{output_dir} holds no model*.safetensors weights")
    return files


class _Tensors:
    """Every tensor of a (possibly sharded) safetensors checkpoint by name, read lazily."""

    def __init__(self, output_dir: Path) -> None:
        from safetensors import safe_open

        self._handles = [safe_open(str(path), framework="pt") for path in _weight_files(output_dir)]
        self.where = {key: handle for handle in self._handles for key in handle.keys()}

    def shape(self, key: str) -> list[int]:
        return list(self.where[key].get_slice(key).get_shape())

    def dtype_bits(self, key: str) -> int:
        dtype = self.where[key].get_slice(key).get_dtype()
        bits = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U8": 8,
                "F8_E4M3": 8, "F8_E5M2": 8, "BOOL": 8}
        if dtype not in bits:
            raise ColaError(f"unexpected tensor dtype {dtype} for {key}")
        return bits[dtype]

    def get(self, key: str) -> torch.Tensor:
        return self.where[key].get_tensor(key)


def _decoder_modules(tensors: _Tensors) -> dict[str, dict[str, str]]:
    """Decoder-block modules holding a 2-D weight (dense, int8 or packed): module name -> {param: key}."""
    modules: dict[str, dict[str, str]] = {}
    for key in tensors.where:
        module, _, param = key.rpartition(".")
        if DECODER_BLOCK.search(key) and param.startswith("weight"):
            modules.setdefault(module, {})[param] = key
    linear = {}
    for module, params in modules.items():
        if PACKED in params or ("weight" in params and len(tensors.shape(params["weight"])) == 2):
            linear[module] = params
        elif "weight" not in params and any(p not in QUANT_PARAMS + METADATA_PARAMS for p in params):
            raise ColaError(f"{module} is stored in a layout cola cannot read ({', '.join(sorted(params))}); "
                            "compressed-tensors 0.19 writes pruned weights dense and quantized ones packed")
    return dict(sorted(linear.items(), key=lambda item: _natural_key(item[0])))


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def _quant_config(output_dir: Path) -> dict[str, Any]:
    config_path = output_dir / "config.json"
    if not config_path.is_file():
        return {}
    return json.loads(config_path.read_text(encoding="utf-8")).get("quantization_config") or {}


def _scheme_bits(quant_config: dict[str, Any]) -> set[int]:
    groups = quant_config.get("config_groups") or {}
    return {g["weights"]["num_bits"] for g in groups.values() if g.get("weights")}


def _layer_entry(name: str, params: dict[str, str], tensors: _Tensors, config_bits: set[int]) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": layer_type(name)}
    if PACKED in params:
        packed_cols = tensors.shape(params[PACKED])[-1]
        shape = [int(v) for v in tensors.get(params["weight_shape"]).tolist()]
        in_features = shape[-1]
        # 32 codes of b bits fill exactly b int32 words: the packed width gives b back
        derived = packed_cols * 32 // in_features if (packed_cols * 32) % in_features == 0 else None
        num_bits = derived if derived is not None else (next(iter(config_bits)) if len(config_bits) == 1 else None)
        entry.update(format="pack-quantized", code_bits=tensors.dtype_bits(params[PACKED]) *
                     math.prod(tensors.shape(params[PACKED])))
    else:
        shape = tensors.shape(params["weight"])
        in_features = shape[-1]
        weight_bits = tensors.dtype_bits(params["weight"])
        quantized = "weight_scale" in params
        num_bits = weight_bits if quantized else None
        entry.update(format="int-quantized" if quantized else "dense",
                     code_bits=weight_bits * math.prod(shape))
    parameters = math.prod(shape)
    entry.update(shape=shape, parameters=parameters, quantized="weight_scale" in params)
    stored = entry.pop("code_bits")
    if entry["quantized"]:
        scale_shape = tensors.shape(params["weight_scale"])
        groups = scale_shape[-1] if len(scale_shape) == 2 else 1
        entry.update(num_bits=num_bits, group_size=in_features // groups if in_features % groups == 0 else None,
                     groups_per_row=groups, symmetric="weight_zero_point" not in params, sparsity=None)
        for param in QUANT_PARAMS:
            if param in params:
                stored += tensors.dtype_bits(params[param]) * math.prod(tensors.shape(params[param]))
    else:
        weight = tensors.get(params["weight"])
        entry.update(num_bits=None, group_size=None, sparsity=float((weight == 0).sum().item()) / parameters)
    entry["stored_bits"] = stored
    entry["bits_per_parameter"] = stored / parameters
    return entry


def _aggregate(entries: list[dict[str, Any]]) -> dict[str, Any]:
    parameters = sum(e["parameters"] for e in entries)
    stored = sum(e["stored_bits"] for e in entries)
    dense = [e for e in entries if e["sparsity"] is not None]
    dense_params = sum(e["parameters"] for e in dense)
    zeros = sum(e["sparsity"] * e["parameters"] for e in dense)
    bits = {e["num_bits"] for e in entries if e["quantized"]}
    groups = {e["group_size"] for e in entries if e["quantized"]}
    return {"layers": len(entries), "parameters": parameters,
            "quantized_layers": sum(1 for e in entries if e["quantized"]),
            "sparsity": round(zeros) / dense_params if dense_params else None,
            "bits_per_parameter": stored / parameters if parameters else None,
            "stored_bits": stored,
            "num_bits": next(iter(bits)) if len(bits) == 1 else None,
            "group_size": next(iter(groups)) if len(groups) == 1 else None}


def saved_weight_summary(output_dir: Path) -> dict[str, Any]:
    """Per decoder Linear, per layer type and in total: parameters, sparsity of dense weights, exact bits.

    bits_per_parameter = stored bits of codes + scales + zero points (+ a group-order index, if any) over
    the parameters; the two-integer `weight_shape` record per layer is not counted. Dense weights count
    their dtype's bits.
    """
    output_dir = Path(output_dir)
    tensors = _Tensors(output_dir)
    quant_config = _quant_config(output_dir)
    modules = _decoder_modules(tensors)
    if not modules:
        raise ColaError(f"no decoder Linear weights found in {output_dir}")
    layers = {name: _layer_entry(name, params, tensors, _scheme_bits(quant_config))
              for name, params in modules.items()}
    return summarize_layers(layers, quant_config.get("format", "dense") if quant_config else "dense")


def summarize_layers(layers: dict[str, dict[str, Any]], storage_format: str) -> dict[str, Any]:
    """Per layer type and in total, from per-layer entries (type, parameters, stored_bits, sparsity,
    quantized, num_bits, group_size): what every method's summary reports."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in layers.values():
        by_type.setdefault(entry["type"], []).append(entry)
    return {"format": storage_format,
            "by_type": {kind: _aggregate(entries) for kind, entries in by_type.items()},
            "total": _aggregate(list(layers.values())),
            "layers": layers}


# ------------------------------------------------------------------------------------------------ checking


def _sparsity_tolerance(in_features: int) -> float:
    """0.5 points, or one weight per row where rows are short: Wanda prunes a whole number of weights per row."""
    return max(SPARSITY_TOLERANCE, 1.0 / in_features)


def check_pruned(output_dir: Path, method: str, summary: dict[str, Any], *, sparsity: float, pattern: str) -> None:
    """Raise a one-line ColaError unless every decoder layer of `summary` is dense and within 0.5 points of
    `sparsity` (one weight per row for rows shorter than 200) and, for the 2:4 `pattern`, holds at least 2
    zeros in every group of 4 consecutive input weights."""
    layers = summary["layers"]
    if not layers:
        raise ColaError(f"no decoder Linear weights found in {output_dir}")
    quantized = [n for n, e in layers.items() if e["sparsity"] is None]
    if quantized:
        raise ColaError(f"{method} should save dense pruned weights but {len(quantized)} layers are quantized "
                        f"(e.g. {quantized[0]})")
    if all(e["sparsity"] < 0.01 for e in layers.values()):
        raise ColaError(f"{method} pruned nothing: no decoder layer of the saved model has more than 1 % zeros "
                        f"(asked {100 * sparsity:.1f} %); the recipe's targets matched no layer")
    bad = [(n, e) for n, e in layers.items()
           if abs(e["sparsity"] - sparsity) > _sparsity_tolerance(e["shape"][-1])]
    if bad:
        name, entry = bad[0]
        raise ColaError(f"{method}: {len(bad)} of {len(layers)} decoder layers miss the asked sparsity "
                        f"{100 * sparsity:.2f} % by more than 0.5 points, e.g. {name} at "
                        f"{100 * entry['sparsity']:.2f} %")
    if pattern == "2:4":
        tensors = _Tensors(output_dir)
        modules = _decoder_modules(tensors)
        for name, params in modules.items():
            weight = tensors.get(params["weight"])
            if weight.shape[-1] % 4:
                raise ColaError(f"{method} 2:4: {name} has {weight.shape[-1]} input columns, not a multiple of 4")
            zeros = (weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1)
            if (zeros < 2).any():
                groups = int((zeros < 2).sum())
                raise ColaError(f"{method} 2:4: {groups} groups of 4 input weights in {name} keep more than 2 "
                                "non-zeros")


def check_quantized(method: str, summary: dict[str, Any], *, bits: int, group_size: int | None) -> None:
    """Raise a one-line ColaError unless every decoder layer of `summary` is stored quantized with `bits`-bit
    codes and one scale per `group_size` input columns (group_size None: one scale per output channel)."""
    layers = summary["layers"]
    if not layers:
        raise ColaError("no decoder Linear weights found in the saved model")
    dense = [n for n, e in layers.items() if not e["quantized"]]
    if len(dense) == len(layers):
        raise ColaError(f"{method} quantized nothing: every decoder layer of the saved model is dense; the "
                        "recipe's targets matched no layer")
    if dense:
        raise ColaError(f"{method} left {len(dense)} of {len(layers)} decoder layers unquantized (e.g. {dense[0]})")
    wrong_bits = [(n, e) for n, e in layers.items() if e["num_bits"] != bits]
    if wrong_bits:
        name, entry = wrong_bits[0]
        raise ColaError(f"{method}: {len(wrong_bits)} layers are stored with {entry['num_bits']}-bit codes, "
                        f"not the asked {bits} bits (e.g. {name})")
    if group_size is None:
        wrong = [n for n, e in layers.items() if e["groups_per_row"] != 1]
        what = "one scale per output channel"
    else:
        wrong = [n for n, e in layers.items() if e["group_size"] != group_size]
        what = f"groups of {group_size} input columns"
    if wrong:
        entry = layers[wrong[0]]
        raise ColaError(f"{method}: {len(wrong)} layers are not stored with {what} (e.g. {wrong[0]} has "
                        f"{entry['groups_per_row']} scales per row of {entry['shape'][-1]})")


# ---------------------------------------------------------------------------------------------- reloading


def load_saved(output_dir: Path, *, dequantize: bool = True) -> torch.nn.Module:
    """The saved model through transformers, in float32, quantized layers decompressed at load time."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if _quant_config(Path(output_dir)) and dequantize:
        from transformers.utils.quantization_config import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    with warnings.catch_warnings():  # "the quantization_config from the model will be used": as intended
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        return AutoModelForCausalLM.from_pretrained(str(output_dir), **kwargs).eval()


def _named_linears(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2:
            yield name, module


def grid_violation(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                   num_bits: int) -> str | None:
    """Why `weight` is not `scale * (codes - zero_point)` with integer codes in the signed num_bits range."""
    out_features, in_features = weight.shape
    scale = scale.reshape(out_features, -1).to(torch.float64)
    groups = scale.shape[1]
    if in_features % groups:
        return f"{groups} scales per row do not divide {in_features} columns"
    ratio = weight.to(torch.float64).reshape(out_features, groups, -1) / scale.unsqueeze(-1)
    ratio = torch.nan_to_num(ratio, nan=0.0)  # a zero scale only scales zeros
    off = (ratio - ratio.round()).abs().max().item()
    if off > GRID_TOLERANCE:
        return f"W / scale is {off:.2e} away from an integer"
    codes = ratio.round()
    if zero_point is not None:
        codes = codes + zero_point.reshape(out_features, groups, 1).to(torch.float64)
    low, high = -(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1
    if codes.min().item() < low or codes.max().item() > high:
        return f"codes span [{codes.min().item():.0f}, {codes.max().item():.0f}], outside [{low}, {high}]"
    return None


def load_and_run(output_dir: Path, load: Any = None) -> torch.nn.Module:
    """The saved model of `output_dir`, loaded by `load(output_dir)` (default: `load_saved`, through transformers)
    and run once on 8 tokens. Raises ColaError (one line) when it cannot be loaded (a loader's own ColaError
    passes as it is) or its logits are not finite."""
    from cola.compress.llmc.output import library_output

    output_dir = Path(output_dir)
    with library_output(True):
        try:
            model = (load or load_saved)(output_dir)
        except ColaError:
            raise
        except Exception as exc:  # noqa: BLE001 - any loader failure means the checkpoint is unusable
            raise ColaError(f"transformers cannot load the saved model in {output_dir}: "
                            f"{first_line(exc)}") from exc
        with torch.no_grad():
            logits = model(torch.arange(8).unsqueeze(0) % model.config.vocab_size).logits
    if not torch.isfinite(logits).all():
        raise ColaError(f"the saved model in {output_dir} loads but its forward pass gives non-finite logits")
    return model


def reload_check(output_dir: Path, summary: dict[str, Any]) -> None:
    """Load the checkpoint with transformers, run one forward pass, and check the loaded weights.

    Quantized layers must lie on their grid (W / scale integral within 1e-3, codes within the signed range);
    dense layers must hold exactly the zeros the files hold.
    """
    output_dir = Path(output_dir)
    layers = summary["layers"]
    model = load_and_run(output_dir)
    loaded = dict(_named_linears(model))
    missing = [name for name in layers if name not in loaded]
    if missing:
        raise ColaError(f"the reloaded model has no layer {missing[0]} (of {len(missing)} missing)")
    for name, entry in layers.items():
        module = loaded[name]
        weight = module.weight.detach()
        if list(weight.shape) != entry["shape"]:
            raise ColaError(f"{name} reloads with shape {list(weight.shape)}, saved {entry['shape']}")
        if entry["quantized"]:
            scale = getattr(module, "weight_scale", None)
            if scale is None:
                raise ColaError(f"{name} reloads without its quantization scale")
            zero_point = None if entry["symmetric"] else getattr(module, "weight_zero_point", None)
            problem = grid_violation(weight, scale.detach(), zero_point, entry["num_bits"])
            if problem:
                raise ColaError(f"{name} reloads off its {entry['num_bits']}-bit grid: {problem}")
        else:
            sparsity = float((weight == 0).sum().item()) / entry["parameters"]
            if abs(sparsity - entry["sparsity"]) > 0.5 / entry["parameters"]:
                raise ColaError(f"{name} reloads with {100 * sparsity:.2f} % zeros, saved "
                                f"{100 * entry['sparsity']:.2f} %")
