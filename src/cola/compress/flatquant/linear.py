"""FlatQuantLinear (a Linear computing with its transformed, quantized weight on its transformed, quantized input), the
attention function that quantizes the KV cache, and `flatquant.safetensors`, which holds everything to rebuild them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cola.atomic import atomic_path
from cola.compress.flatquant.config import FlatQuantConfig
from cola.compress.flatquant.transforms import InputTransform, KVQuantizer, owned, quantize_weight
from cola.errors import ColaError

FORMAT = "cola-flatquant/1"
ATTENTION = "flatquant"   # the name of the attention function registered with transformers
KV_ATTRIBUTE = "flatquant_kv"  # the KVQuantizer's attribute on an attention module


class FlatQuantLinear(torch.nn.Module):
    """y = Q_a((x ⊙ c) P) · (s ⊙ codes)ᵀ + b (Sun et al., 2024, Sec. 3): the input through its (shared)
    `InputTransform` and per-token quantizer, the weight W' = (W / c) P⁻ᵀ quantized per output channel.

    Two states:
    * training (`weight` (m, n) float32 buffer, the original weight): W' is recomputed from the current transform
      every forward, clipped by the trainable `weight_clip` (m, 2) logits (or not clipped) and fake-quantized with
      the straight-through estimator;
    * frozen (`freeze()`, and every module loaded from disk): `codes` (m, n) int8 and `scales` (m, 1) float16 are
      the stored weight; the forward dequantizes them. Only the frozen state is saved.

    Computes in float32 and returns x's dtype; x is (..., n), y (..., m).
    """

    def __init__(self, transform: InputTransform, *, out_features: int, w_bits: int,
                 weight: torch.Tensor | None = None, codes: torch.Tensor | None = None,
                 scales: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 weight_clip: torch.Tensor | None = None) -> None:
        super().__init__()
        self.transform = transform
        self.in_features, self.out_features, self.w_bits = transform.in_features, out_features, w_bits
        self.register_buffer("weight", None if weight is None else owned(weight))
        self.register_buffer("codes", None if codes is None else codes.detach().to(torch.int8).contiguous())
        self.register_buffer("scales", None if scales is None else scales.detach().to(torch.float16).contiguous())
        self.register_buffer("bias", None if bias is None else owned(bias))
        self.weight_clip = None if weight_clip is None else torch.nn.Parameter(owned(weight_clip),
                                                                               requires_grad=False)
        if (weight is None) == (codes is None):
            raise ValueError("a FlatQuantLinear holds either the float weight (training) or the codes (frozen)")

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, transform: InputTransform, w_bits: int) -> FlatQuantLinear:
        """A training-state module around `linear`'s weight (m, n) and bias; `transform` is the shared one of its
        input (its width must be n)."""
        if linear.in_features != transform.in_features:
            raise ValueError(f"a {linear.in_features}-wide layer cannot read a {transform.in_features}-wide transform")
        return cls(transform, out_features=linear.out_features, w_bits=w_bits, weight=linear.weight,
                   bias=linear.bias.detach() if linear.bias is not None else None)

    @property
    def frozen(self) -> bool:
        return self.codes is not None

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized transformed weight s ⊙ codes (m, n), float32 (differentiable while training)."""
        if self.frozen:
            return self.codes.to(torch.float32) * self.scales.to(torch.float32)
        codes, scales = quantize_weight(self.transform.weight_to_transformed(self.weight), self.w_bits,
                                        self.weight_clip)
        return codes * scales

    def trainable(self, clipping: bool) -> list[torch.nn.Parameter]:
        """Turn on training of the weight clipping: its logits (m, 2), created at the paper's 4 (ratio 0.982), or []
        without `clipping`. Raises RuntimeError on a frozen module."""
        if self.frozen:
            raise RuntimeError("a frozen FlatQuantLinear has nothing to train")
        if not clipping:
            return []
        from cola.compress.flatquant.transforms import CLIP_INIT

        if self.weight_clip is None:
            self.weight_clip = torch.nn.Parameter(torch.full((self.out_features, 2), CLIP_INIT,
                                                             device=self.weight.device))
        self.weight_clip.requires_grad_(True)
        return [self.weight_clip]

    @torch.no_grad()
    def freeze(self) -> None:
        """Quantize the transformed weight for good: W' is computed in float64 from the trained transform, clipped and
        quantized into `codes` and `scales`; the float weight is dropped. Idempotent."""
        if self.frozen:
            return
        transformed = self.transform.weight_to_transformed(self.weight.to(torch.float64))
        codes, scales = quantize_weight(transformed, self.w_bits, self.weight_clip)
        self.codes = codes.to(torch.int8).contiguous()
        self.scales = scales.to(torch.float16).contiguous()
        self.weight = None
        if self.weight_clip is not None:
            self.weight_clip.requires_grad_(False)

    def dense_weight(self) -> torch.Tensor:
        """The fake-quantized weight mapped back to the original input space, (s ⊙ codes) · Pᵀ ⊙ c (m, n), float64:
        x · this ᵀ equals the layer's output without activation quantization. Frozen modules only."""
        if not self.frozen:
            raise RuntimeError("freeze() the layer before reading its dense weight")
        return self.transform.weight_to_original(self.quantized_weight().to(torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.linear(self.transform(x), self.quantized_weight(), self.bias)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, w_bits={self.w_bits}, "
                f"a_bits={self.transform.bits}, frozen={self.frozen}, bias={self.bias is not None}")


# ------------------------------------------------------------------------------------------------- attention


def flatquant_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """transformers' SDPA attention with the module's KVQuantizer (attribute `flatquant_kv`, if any) applied first:
    queries and keys (after RoPE) through P_k and keys fake-quantized, values through P_v and fake-quantized, the
    output mapped back by P_v⁻¹. query (batch, heads, q_len, head_dim), key/value (batch, kv_heads, kv_len,
    head_dim) including any cached tokens (quantizing per token, a cached token is quantized the same each time);
    returns (batch, q_len, heads, head_dim) in query's dtype and no weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kv = getattr(module, KV_ATTRIBUTE, None)
    if kv is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    dtype = query.dtype
    q, k = kv.queries_keys(query, key)
    v = kv.values(value)
    out, weights = sdpa_attention_forward(module, q, k, v, attention_mask, **kwargs)
    return kv.output(out).to(dtype), weights


def register_attention() -> None:
    """Register `flatquant_attention` (and SDPA's mask) with transformers under the name "flatquant"; idempotent."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION, flatquant_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def use_kv_quantization(model: torch.nn.Module, quantizers: dict[str, KVQuantizer]) -> None:
    """Attach each KVQuantizer to its attention module (by name) and switch the model to the "flatquant" attention.
    Raises ColaError when a named module is missing."""
    register_attention()
    for name, quantizer in quantizers.items():
        try:
            attention = model.get_submodule(name)
        except AttributeError as exc:
            raise ColaError(f"the model has no attention module {name!r} for its KV-cache quantizer") from exc
        setattr(attention, KV_ATTRIBUTE, quantizer)
    model.set_attn_implementation(ATTENTION)


def attention_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The attention modules of the decoder blocks, by name: modules called `self_attn` (Llama, Qwen2, Mistral...)."""
    return {name: module for name, module in model.named_modules() if name.rpartition(".")[2] == "self_attn"}


@contextmanager
def dense_view(model: torch.nn.Module) -> Iterator[None]:
    """Within: every frozen FlatQuantLinear replaced by a plain Linear holding its `dense_weight` (in the model's
    dtype), no KV quantizer attached and the attention back to SDPA, so `save_pretrained` writes a plain checkpoint;
    everything is put back after."""
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    detached: list[tuple[torch.nn.Module, KVQuantizer]] = []
    implementation = model.config._attn_implementation
    try:
        for name, module in list(model.named_modules()):
            if isinstance(module, FlatQuantLinear):
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                reference = module.codes
                dtype = model.dtype
                linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                         device=reference.device, dtype=dtype)
                with torch.no_grad():
                    linear.weight.copy_(module.dense_weight().to(dtype))
                    if module.bias is not None:
                        linear.bias.copy_(module.bias.to(dtype))
                setattr(parent, child, linear)
                swapped.append((parent, child, module))
            kv = getattr(module, KV_ATTRIBUTE, None)
            if isinstance(kv, KVQuantizer):
                delattr(module, KV_ATTRIBUTE)
                detached.append((module, kv))
        if implementation == ATTENTION:
            model.set_attn_implementation("sdpa")
        yield
    finally:
        for parent, child, module in swapped:
            setattr(parent, child, module)
        for module, kv in detached:
            setattr(module, KV_ATTRIBUTE, kv)
        if implementation == ATTENTION:
            model.set_attn_implementation(ATTENTION)


# -------------------------------------------------------------------------------------------------- save/load


def shared_transforms(modules: dict[str, FlatQuantLinear]) -> tuple[dict[str, InputTransform], dict[str, str]]:
    """({transform id: transform}, {layer: transform id}): a transform's id is the name of the first layer reading it
    (q_proj's serves q/k/v, gate_proj's gate/up)."""
    ids: dict[int, str] = {}
    transforms: dict[str, InputTransform] = {}
    sharing: dict[str, str] = {}
    for name, module in modules.items():
        key = ids.setdefault(id(module.transform), name)
        transforms[key] = module.transform
        sharing[name] = key
    return transforms, sharing


def save_flatquant(path: Path, modules: dict[str, FlatQuantLinear], kv: dict[str, KVQuantizer],
                   config: FlatQuantConfig, metadata: dict[str, str] | None = None) -> None:
    """Write every frozen layer's `codes` (int8) and `scales` (float16), its bias and weight clipping logits (a
    record: already applied to the codes), every shared transform's P1, P2, c and activation clipping logits, and
    every KV quantizer's transforms and clipping (float32), with the config, the sharing and `metadata` in the file's
    metadata, atomically. Raises ColaError on a layer that is not frozen."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        if not module.frozen:
            raise ColaError(f"layer {name} was not frozen before saving")
        tensors[f"layer.{name}.codes"] = module.codes
        tensors[f"layer.{name}.scales"] = module.scales
        for key in ("bias", "weight_clip"):
            if getattr(module, key) is not None:
                tensors[f"layer.{name}.{key}"] = getattr(module, key).detach()
    transforms, sharing = shared_transforms(modules)
    for key, transform in transforms.items():
        for part in ("left", "right", "scale", "act_clip"):
            if getattr(transform, part) is not None:
                tensors[f"transform.{key}.{part}"] = getattr(transform, part).detach()
    for name, quantizer in kv.items():
        for part in ("k_transform", "v_transform", "k_clip", "v_clip"):
            if getattr(quantizer, part) is not None:
                tensors[f"kv.{name}.{part}"] = getattr(quantizer, part).detach()
    tensors = {k: v.cpu().contiguous() for k, v in tensors.items()}
    metadata = {**(metadata or {}), "format": FORMAT, "config": json.dumps(asdict(config)),
                "layers": json.dumps(sharing), "kv": json.dumps(list(kv)),
                "out_features": json.dumps({name: m.out_features for name, m in modules.items()})}
    with atomic_path(Path(path)) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def load_flatquant(path: Path) -> tuple[dict[str, FlatQuantLinear], dict[str, KVQuantizer], FlatQuantConfig]:
    """Read a file written by `save_flatquant`: the frozen FlatQuantLinear modules (layers sharing a transform share
    the module again), the KV quantizers by attention module, and the config. Raises ColaError on a missing,
    unreadable or foreign file."""
    from cola.compress.base import read_method_file

    metadata, tensors = read_method_file(path, "FlatQuant", FORMAT)
    config = FlatQuantConfig(**json.loads(metadata["config"]))
    sharing: dict[str, str] = json.loads(metadata["layers"])
    out_features: dict[str, int] = json.loads(metadata["out_features"])
    transforms: dict[str, InputTransform] = {}
    for key in dict.fromkeys(sharing.values()):
        parts = {part: tensors.get(f"transform.{key}.{part}") for part in ("left", "right", "scale", "act_clip")}
        transforms[key] = InputTransform(parts["scale"].numel(), config.a_bits, **parts)
    modules = {name: FlatQuantLinear(transforms[key], out_features=out_features[name], w_bits=config.w_bits,
                                     codes=tensors[f"layer.{name}.codes"], scales=tensors[f"layer.{name}.scales"],
                                     bias=tensors.get(f"layer.{name}.bias"),
                                     weight_clip=tensors.get(f"layer.{name}.weight_clip"))
               for name, key in sharing.items()}
    kv = {}
    for name in json.loads(metadata["kv"]):
        parts = {part: tensors.get(f"kv.{name}.{part}") for part in ("k_transform", "v_transform", "k_clip", "v_clip")}
        kv[name] = KVQuantizer(parts["k_transform"].shape[0], config.kv_bits, **parts)
    return modules, kv, config


def replace_layers(model: torch.nn.Module, modules: dict[str, torch.nn.Module]) -> None:
    """Swap the named submodules of `model` for the given ones (moved to the old one's device). Raises ColaError on a
    missing module or a shape mismatch."""
    for name, module in modules.items():
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            old = getattr(parent, child)
        except AttributeError as exc:
            raise ColaError(f"the model has no module {name!r} to replace with its FlatQuant layer") from exc
        shape = (getattr(old, "out_features", None), getattr(old, "in_features", None))
        if shape != (module.out_features, module.in_features):
            raise ColaError(f"module {name!r} is {shape[0]}x{shape[1]} but its FlatQuant layer is "
                            f"{module.out_features}x{module.in_features}")
        weight = getattr(old, "weight", None)
        setattr(parent, child, module.to(weight.device) if isinstance(weight, torch.Tensor) else module)
