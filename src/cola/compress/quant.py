"""The shared quantization core, pure: codebooks, scale fitting, round-to-nearest, and GPTQ/LDLQ.

Quantizers, with one float16 scale per output row per group of input columns: "uniform" is symmetric
(codes 0..2^b−1, w = (code − (2^b−1)/2) · scale; no zero point is stored: at equal storage it beat
asymmetric min/max on SmolLM2 layers); "nf" is the NF-b codebook (normal quantiles with an exact zero,
QLoRA's NF4 for b = 4) times the scale. Each scale shrinks the group's range by the factor that minimises
the squared rounding error (a coarse grid, then a finer one): at 2 bits the best factor is about 0.45.

`ldlq` is GPTQ's error feedback (Frantar et al., ICLR 2023; LDLQ in QuIP, Chee et al., NeurIPS 2023): the
columns of W are quantized in order, each column's rounding error fed forward through the upper Cholesky
factor of the damped inverse Hessian, in blocks with lazy batch updates. CALDERA uses it for Q, L and R; any
method that quantizes against a calibration Hessian can.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from cola.compress.base import QUANTIZERS  # noqa: F401 - the valid names, for callers of this core
from cola.errors import ColaError

_BLOCK = 128          # LDLQ lazy-batch block, in columns
# range-shrink factors tried by the scale search: a coarse grid per bit width, then steps around the best
_COARSE = {2: (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2), 3: (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3),
           4: (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4), 8: (1.0, 0.9, 0.8)}
_FINE = (-0.05, -0.025, 0.025, 0.05)


def nf_codebook(bits: int) -> torch.Tensor:
    """The 2^bits NF values in [−1, 1], ascending: normal quantiles with an exact zero (NF4 for bits = 4)."""
    return _nf_book(bits).clone()


@lru_cache(maxsize=None)
def _nf_book(bits: int) -> torch.Tensor:
    n = 2**bits
    offset = 0.5 * ((1 - 1 / (2 * (n - 1))) + (1 - 1 / (2 * n)))
    ndtri = torch.special.ndtri
    positive = ndtri(torch.linspace(offset, 0.5, n // 2 + 1, dtype=torch.float64)[:-1])
    negative = -ndtri(torch.linspace(offset, 0.5, n // 2, dtype=torch.float64)[:-1])
    values = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative])
    return (values / values.abs().max()).sort().values.to(torch.float32)


@lru_cache(maxsize=None)
def _nf_midpoints(bits: int) -> torch.Tensor:
    book = _nf_book(bits)
    return (book[1:] + book[:-1]) / 2


def fp16_round(x: torch.Tensor) -> torch.Tensor:
    """x rounded to what float16 stores (kept in float32)."""
    return x.to(torch.float16).to(torch.float32)


def _encode(x: torch.Tensor, scale: torch.Tensor, bits: int, quantizer: str) -> torch.Tensor:
    """Integer codes (int64) of x under a broadcastable scale."""
    if quantizer == "nf":
        t = x / scale
        mid = _nf_midpoints(bits)
        if bits > 4:
            return torch.bucketize(t, mid)
        codes = (t > mid[0]).to(torch.uint8)  # the nearest value's index: how many midpoints lie below
        for m in mid[1:].tolist():
            codes += t > m
        return codes.long()
    maxq = 2**bits - 1
    return (x / scale).add_(maxq / 2).round_().clamp_(0, maxq).to(torch.int64)


def _decode(codes: torch.Tensor, scale: torch.Tensor, bits: int, quantizer: str) -> torch.Tensor:
    """float32 values of integer codes under a broadcastable scale."""
    if quantizer == "nf":
        return _nf_book(bits).to(scale.device)[codes.long()] * scale
    return (codes.to(torch.float32) - (2**bits - 1) / 2) * scale


def _scale_at(absmax: torch.Tensor, bits: int, quantizer: str, shrink: torch.Tensor) -> torch.Tensor:
    """float16-valued scale putting ±shrink·absmax on the outermost code (all-zero rows get a tiny scale)."""
    half = 1.0 if quantizer == "nf" else (2**bits - 1) / 2
    scale = fp16_round(absmax * shrink / half).clamp_min(2**-24)
    return torch.where(absmax > 0, scale, torch.full_like(scale, 2**-24))


def fit_scales(x: torch.Tensor, bits: int, quantizer: str) -> torch.Tensor:
    """Per-row scales of x (rows, cols): float16 values as float32, shape (rows, 1).

    Each row's absmax is shrunk by the factor that minimises the row's squared rounding error: a coarse
    grid per bit width, then steps of 0.05 and 0.025 around the best coarse factor.
    """
    rows = x.shape[0]
    absmax = x.abs().amax(dim=1, keepdim=True)
    best_err = torch.full((rows, 1), math.inf, device=x.device)
    best = torch.ones(rows, 1, device=x.device)

    def trial(shrink: torch.Tensor) -> None:
        scale = _scale_at(absmax, bits, quantizer, shrink)
        err = _decode(_encode(x, scale, bits, quantizer), scale, bits, quantizer).sub_(x).square_().sum(1, True)
        better = err < best_err
        best_err.copy_(torch.where(better, err, best_err))
        best.copy_(torch.where(better, shrink, best))

    for factor in _COARSE[bits]:
        trial(torch.full((rows, 1), factor, device=x.device))
    coarse = best.clone()
    for step in _FINE:
        trial((coarse + step).clamp_(0.05, 1.0))
    return _scale_at(absmax, bits, quantizer, best)


def quantize_rtn(x: torch.Tensor, bits: int, quantizer: str,
                 group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest: uint8 codes (rows, cols) and float16 scales (rows, cols // group_size)."""
    rows, cols = x.shape
    gs = group_size or cols
    xg = x.to(torch.float32).reshape(rows * (cols // gs), gs)
    scale = fit_scales(xg, bits, quantizer)
    codes = _encode(xg, scale, bits, quantizer).to(torch.uint8).reshape(rows, cols)
    return codes, scale.reshape(rows, cols // gs).to(torch.float16)


def dequantize_codes(codes: torch.Tensor, scales: torch.Tensor, bits: int, quantizer: str) -> torch.Tensor:
    """Dense float32 values of codes (rows, cols) with one scale per row per group, scales (rows, groups)."""
    scale = scales.to(torch.float32).repeat_interleave(codes.shape[1] // scales.shape[1], dim=1)
    return _decode(codes, scale, bits, quantizer)


@dataclass
class Quantized:
    """Codes, their scales, and the float32 values they decode to."""

    codes: torch.Tensor    # uint8 (rows, cols)
    scales: torch.Tensor   # float16 (rows, groups)
    values: torch.Tensor   # float32, dequantized


def damped_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Lower Cholesky factor (float64) of H + damp·mean(diag H)·I, with more damping if H is indefinite."""
    H = H.to(torch.float64)
    eye = torch.eye(H.shape[0], dtype=torch.float64, device=H.device)
    mean = H.diagonal().mean().item()
    if not mean > 0:  # e.g. a factor that is all zero: any positive definite metric will do
        H, mean = eye, 1.0
    for attempt in range(6):
        chol, info = torch.linalg.cholesky_ex(H + (damp * 10**attempt) * mean * eye)
        if info.item() == 0:
            return chol
    raise ColaError("the calibration Hessian is not positive semi-definite even after damping")


def hinv_upper(chol: torch.Tensor) -> torch.Tensor:
    """GPTQ's inverse Hessian: the upper Cholesky factor of (C Cᵀ)⁻¹ for a lower Cholesky factor C (float32)."""
    return torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True).to(torch.float32)


def ldlq(W: torch.Tensor, hinv_u: torch.Tensor, bits: int, quantizer: str, group_size: int | None) -> Quantized:
    """GPTQ/LDLQ: quantize W's columns in order, feeding each column's error forward through hinv_u.

    A group's scales are fitted on the error-updated weights when the group starts (with group_size
    None, once per row on W). Columns go in blocks; later blocks get one lazy batch update per block.
    """
    m, n = W.shape
    gs = group_size or n
    WT = W.T.contiguous()  # one contiguous row per column of W, updated in place
    codes = torch.empty(n, m)
    scales = torch.empty(n // gs, m)
    nf = quantizer == "nf"
    book, mid = (_nf_book(bits), _nf_midpoints(bits)) if nf else (None, None)
    maxq = 2**bits - 1
    center = torch.full((m,), maxq / 2)
    block = min(_BLOCK, n) if group_size is None else gs * max(1, _BLOCK // gs)  # groups stay in one block
    inv_d = (1 / hinv_u.diagonal()).tolist()
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1 = WT[i1:i2]
        err1 = torch.empty(i2 - i1, m)
        hinv1 = hinv_u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % gs == 0:
                s = fit_scales(W if group_size is None else W1[i:i + gs].T, bits, quantizer)[:, 0]
                scales[col // gs] = s
                inv_s = 1 / s
                center_s = center * s
            w = W1[i]
            if nf:
                c = torch.bucketize(w * inv_s, mid)
                e = torch.addcmul(w, book[c], s, value=-1)
            else:
                c = torch.addcmul(center, w, inv_s).round_().clamp_(0, maxq)
                e = torch.addcmul(w, c, s, value=-1).add_(center_s)
            codes[col] = c
            err1[i] = e.mul_(inv_d[col])  # (w − q) / d
            if i + 1 < i2 - i1:
                W1[i + 1:].addr_(hinv1[i, i + 1:], err1[i], alpha=-1)
        if i2 < n:
            WT[i2:].addmm_(hinv_u[i1:i2, i2:].T, err1, alpha=-1)
    codes_u8 = codes.T.to(torch.uint8).contiguous()
    scales16 = scales.T.to(torch.float16).contiguous()
    return Quantized(codes_u8, scales16, dequantize_codes(codes_u8, scales16, bits, quantizer))

