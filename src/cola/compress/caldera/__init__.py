"""CALDERA (Saha et al., NeurIPS 2024): a linear layer's weight as W ≈ Q + L R.

Q is a low-precision copy of W (q_bits) and L (m×r), R (r×n) are low-rank factors quantized to lr_bits.
Everything is fitted to the activation-aware error tr((W − Ŵ) H (W − Ŵ)ᵀ), H = Σ x xᵀ over the
calibration inputs of the layer, by alternating minimization:

* Q-step: Q = LDLQ(W − L R): GPTQ's error feedback through the upper Cholesky factor of the damped H⁻¹,
  column by column in blocks with lazy batch updates; a group's scales are fitted when the group starts.
* LR-step: the rank-r SVD of (W − Q) C, split evenly between L and R (L = U Σ^½, R = Σ^½ Vᵀ C⁻¹), where
  C Cᵀ is the damped H. C is its Cholesky factor rather than the symmetric root H^½: every root gives the
  same optimal rank-r fit, and GPTQ needs the Cholesky factor anyway. The SVD is randomized and
  warm-started from the previous iterate. L is quantized with LDLQ under its own Hessian R H Rᵀ; then R is
  re-solved by least squares given the quantized L (exact for the H-weighted error, as H acts on the
  right) and quantized with LDLQ under H.

The first Q-step sees L R = 0 (so it is plain GPTQ), as in the paper; starting with the low-rank step
instead was worse on SmolLM2 layers. The iterate with the lowest relative error is kept. With
`hadamard=True` the decomposition runs in a randomly rotated basis (W' = U W Vᵀ, H' = V H Vᵀ, U and V
orthogonal and regenerated from the stored seed).

The quantizers ("uniform", "nf") and LDLQ are the shared core in `cola.compress.quant`. Codes are uint8;
`bits_per_parameter` counts them at their bit width (as packed storage would) and every float16 tensor at
16 bits.

The package, in data-flow order: `config` (CalderaConfig), `hadamard` (the rotation), `factors` (what is
stored of a layer), `decompose` (the pure decomposition), `linear` (CalderaLinear, save/load) and `method`
(the registered Method). The names below load on first use, so importing the package needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CalderaConfig": "config", "LR_BITS": "config", "QUANTIZERS": "config", "CALDERA_QUANTIZERS": "config",
    "check_layer": "config",
    "random_hadamard": "hadamard", "rotate": "hadamard", "rotation_seeds": "hadamard",
    "CalderaFactors": "factors", "pack_codes": "factors", "unpack_codes": "factors",
    "CalderaResult": "decompose", "activation_error": "decompose", "caldera_decompose": "decompose",
    "CalderaLinear": "linear", "FORMAT": "linear", "load_caldera": "linear", "replace_with_caldera": "linear",
    "save_caldera": "linear",
    "CALDERA_FILE": "method", "Caldera": "method",
}
_QUANT = ("dequantize_codes", "fit_scales", "nf_codebook", "quantize_rtn")  # the shared core, re-exported
__all__ = [*_EXPORTS, *_QUANT]  # noqa: PLE0604 (built from the name tables above)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"cola.compress.caldera.{_EXPORTS[name]}"), name)
    if name in _QUANT:
        return getattr(importlib.import_module("cola.compress.quant"), name)
    raise AttributeError(f"module 'cola.compress.caldera' has no attribute {name!r}")
