"""The FFN weight spectrum (COLA, Appendix E): singular values of one feed-forward matrix, dense vs compressed.

Any linear-like module works (nn.Linear, CalderaLinear, compressed-tensors' layers): its weight is read
back as module(I) - bias, so what is measured is exactly what the compressed model computes.
"""

from __future__ import annotations


import torch

from cola.errors import ColaError


def default_ffn_module(model: torch.nn.Module) -> str:
    """The middle decoder layer's FFN output projection (mlp.down_proj, or the layer's last FFN Linear)."""
    from cola.models import find_decoder_layers

    prefix, layers = find_decoder_layers(model)
    index = len(layers) // 2
    names = [name for name, module in layers[index].named_modules()
             if isinstance(module, torch.nn.Module) and hasattr(module, "in_features")
             and any(part in name for part in ("mlp", "ffn", "feed_forward"))]
    if not names:
        raise ColaError(f"decoder layer {index} has no FFN linear layer to measure")
    chosen = next((n for n in names if n.endswith("down_proj")), names[-1])
    return f"{prefix}.{index}.{chosen}"


@torch.no_grad()
def module_weight(module: torch.nn.Module) -> torch.Tensor:
    """(out, in) float32 weight that `module` applies, however it stores it."""
    if type(module) is torch.nn.Linear:
        return module.weight.detach().float()
    if not hasattr(module, "in_features"):
        raise ColaError(f"{type(module).__name__} is not a linear layer")
    param = next(module.parameters(), None)
    buffer = next(module.buffers(), None)
    ref = param if param is not None else buffer
    eye = torch.eye(module.in_features, dtype=ref.dtype if ref is not None and ref.is_floating_point()
                    else torch.float32, device=ref.device if ref is not None else "cpu")
    out = module(eye).float()                                   # (in, out) = I Wᵀ + b
    bias = getattr(module, "bias", None)
    if bias is not None:
        out = out - bias.float()
    return out.T.contiguous()


def ffn_spectrum(model: torch.nn.Module, module_name: str | None = None) -> tuple[str, list[float]]:
    """(module name, singular values in descending order) of one FFN matrix of `model`."""
    name = module_name or default_ffn_module(model)
    modules = dict(model.named_modules())
    if name not in modules:
        raise ColaError(f"the model has no module {name!r} to measure the spectrum of")
    values = torch.linalg.svdvals(module_weight(modules[name]))
    return name, [round(float(v), 6) for v in values]
