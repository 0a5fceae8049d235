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

Quantizers, with one float16 scale per output row per group of input columns: "uniform" is symmetric
(codes 0..2^b−1, w = (code − (2^b−1)/2) · scale; no zero point is stored: at equal storage it beat
asymmetric min/max on SmolLM2 layers); "nf" is the NF-b codebook (normal quantiles with an exact zero,
QLoRA's NF4 for b = 4) times the scale. Each scale shrinks the group's range by the factor that minimises
the squared rounding error (a coarse grid, then a finer one): at 2 bits the best factor is about 0.45.
Codes are stored as uint8; `bits_per_parameter` counts them at their bit width (as packed storage would)
and every float16 tensor at 16 bits.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

from cola.compress.methods import LR_BITS, QUANTIZERS
from cola.compress.methods import QUANT_BITS as Q_BITS  # one source for the valid choices: the method table
from cola.errors import ColaError, unknown_choice
from cola.models import single_threaded

FORMAT = "cola-caldera/1"

_BLOCK = 128          # LDLQ lazy-batch block, in columns
_OVERSAMPLE = 8       # randomized SVD: extra directions
_POWER_ITERS = 2      # randomized SVD: subspace iterations per LR-step (warm-started)
# range-shrink factors tried by the scale search: a coarse grid per bit width, then steps around the best
_COARSE = {2: (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2), 3: (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3),
           4: (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4), 8: (1.0, 0.9, 0.8)}
_FINE = (-0.05, -0.025, 0.025, 0.05)

_CODE_KEYS = ("q_codes", "l_codes", "r_codes")                          # uint8
_FLOAT_KEYS = ("q_scales", "l_scales", "r_scales", "l_weight", "r_weight")  # float16
_SEED_KEY = "hadamard_seed"                                            # int64, shape (1,)


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CalderaConfig:
    """Bits, rank and iterations of one CALDERA run (the same for every layer)."""

    q_bits: int = 2
    lr_bits: int = 4
    rank: int = 16
    iters: int = 10
    group_size: int | None = None
    quantizer: str = "uniform"
    hadamard: bool = False
    damp: float = 0.01
    seed: int = 0

    def validate(self, out_features: int | None = None, in_features: int | None = None) -> None:
        """Raise ColaError naming the first invalid setting (and the layer shape, when given)."""
        if self.q_bits not in Q_BITS:
            raise ColaError(f"unsupported q_bits {self.q_bits}; valid choices: {', '.join(map(str, Q_BITS))}")
        if self.lr_bits not in LR_BITS:
            raise ColaError(f"unsupported lr_bits {self.lr_bits}; valid choices: "
                            f"{', '.join(map(str, LR_BITS))} (16 = float16 factors)")
        if self.quantizer not in QUANTIZERS:
            raise unknown_choice("quantizer", str(self.quantizer), QUANTIZERS)
        if self.iters < 1:
            raise ColaError(f"iters must be at least 1, got {self.iters}")
        if self.rank < 1:
            raise ColaError(f"rank must be at least 1, got {self.rank}")
        if not self.damp > 0:
            raise ColaError(f"damp must be positive (a fraction of the mean Hessian diagonal), got {self.damp}")
        if self.group_size is not None and self.group_size < 1:
            raise ColaError(f"group_size must be a positive number of input columns or None, got {self.group_size}")
        if out_features is not None and in_features is not None and self.rank > min(out_features, in_features):
            raise ColaError(f"rank {self.rank} is larger than layer {out_features}x{in_features} allows "
                            f"(min(out,in)={min(out_features, in_features)})")
        if in_features is not None and self.group_size is not None and in_features % self.group_size:
            valid = [g for g in (16, 32, 64, 128, 256) if in_features % g == 0]
            hint = f"e.g. {' or '.join(map(str, valid))}, " if valid else ""
            raise ColaError(f"group_size {self.group_size} does not divide the layer's {in_features} input "
                            f"columns; use a divisor ({hint}or None for one scale per row)")


# ------------------------------------------------------------------------------------------ quantizers


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


def _fp16(x: torch.Tensor) -> torch.Tensor:
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
    scale = _fp16(absmax * shrink / half).clamp_min(2**-24)
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
class _Quantized:
    codes: torch.Tensor    # uint8 (rows, cols)
    scales: torch.Tensor   # float16 (rows, groups)
    values: torch.Tensor   # float32, dequantized


def _damped_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
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


def _hinv_upper(chol: torch.Tensor) -> torch.Tensor:
    """GPTQ's inverse Hessian: the upper Cholesky factor of (C Cᵀ)⁻¹ for a lower Cholesky factor C (float32)."""
    return torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True).to(torch.float32)


def _ldlq(W: torch.Tensor, hinv_u: torch.Tensor, bits: int, quantizer: str, group_size: int | None) -> _Quantized:
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
    return _Quantized(codes_u8, scales16, dequantize_codes(codes_u8, scales16, bits, quantizer))


# ----------------------------------------------------------------------------- randomized Hadamard


def _fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh–Hadamard transform (Sylvester order) along dim −2 of x (..., a, p), a a power of 2."""
    *batch, a, p = x.shape
    h = 1
    while h < a:
        y = x.reshape(*batch, a // (2 * h), 2, h, p)
        x = torch.stack((y[..., 0, :, :] + y[..., 1, :, :], y[..., 0, :, :] - y[..., 1, :, :]), dim=-3)
        h *= 2
    return x.reshape(*batch, a, p)


@lru_cache(maxsize=64)
def _hadamard_parts(dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random signs (dim,) and, when dim is not a power of two, a random orthogonal p×p for its odd factor."""
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (dim,), generator=gen).to(torch.float32) * 2 - 1
    p = dim // (dim & -dim)
    if p == 1:
        return signs, None
    q, r = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))
    return signs, (q * torch.sign(torch.diagonal(r))).to(torch.float32)  # Haar-distributed


def rotate(x: torch.Tensor, seed: int, *, transpose: bool = False) -> torch.Tensor:
    """Apply M = (H_a ⊗ O_p)/√a · diag(signs) to every row vector of x (x ↦ x Mᵀ), or Mᵀ (x ↦ x M).

    M is the randomized Hadamard transform of size x.shape[−1] = a·p (a a power of two, p odd): a sign
    flip, the Sylvester Hadamard matrix on the power-of-two factor and a seeded random orthogonal matrix
    on the odd factor. It is orthogonal and depends only on (size, seed).
    """
    dim = x.shape[-1]
    signs, ortho = _hadamard_parts(dim, seed)
    signs = signs.to(x.device, x.dtype)
    a = dim & -dim
    p = dim // a
    if not transpose:
        x = x * signs
    y = _fwht(x.reshape(*x.shape[:-1], a, p))
    if ortho is not None:
        y = y @ (ortho.to(x.device, x.dtype) if transpose else ortho.to(x.device, x.dtype).T)
    y = y.reshape(x.shape) / math.sqrt(a)
    return y * signs if transpose else y


def random_hadamard(dim: int, seed: int) -> torch.Tensor:
    """The dense orthogonal matrix M (dim×dim, float32) that `rotate(x, seed)` applies."""
    return rotate(torch.eye(dim), seed).T.contiguous()


def _rotation_seeds(seed: int) -> tuple[int, int]:
    """Seeds of U (output side) and V (input side) of a layer rotated with `seed`."""
    return 2 * seed, 2 * seed + 1


# ------------------------------------------------------------------------------------------- factors


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes (< 2**bits, any shape) packed densely into a 1-D uint8 tensor, `bits` bits each."""
    planes = (codes.reshape(-1, 1).to(torch.int32) >> torch.arange(bits, dtype=torch.int32)) & 1
    flat = planes.reshape(-1).to(torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8))
    weights = 2 ** torch.arange(8, dtype=torch.int32)
    return (flat.reshape(-1, 8).to(torch.int32) * weights).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of pack_codes: uint8 codes of `shape`."""
    count = math.prod(shape)
    flat = ((packed.to(torch.int32).reshape(-1, 1) >> torch.arange(8, dtype=torch.int32)) & 1).reshape(-1)
    planes = flat[: count * bits].reshape(count, bits)
    codes = (planes * 2 ** torch.arange(bits, dtype=torch.int32)).sum(dim=1)
    return codes.to(torch.uint8).reshape(shape)


@dataclass
class CalderaFactors:
    """What is stored of one layer: uint8 codes, float16 scales, and the rotation seed.

    Q has one scale per row per group of input columns, L (m×r) one per row, R (r×n) the grouping of Q.
    With lr_bits = 16, l_weight/r_weight hold float16 factors instead of L/R codes and scales.
    With a hadamard_seed, Q + L R lives in the rotated basis: Ŵ = Uᵀ (Q + L R) V.
    """

    q_codes: torch.Tensor
    q_scales: torch.Tensor
    config: CalderaConfig
    l_codes: torch.Tensor | None = None
    l_scales: torch.Tensor | None = None
    r_codes: torch.Tensor | None = None
    r_scales: torch.Tensor | None = None
    l_weight: torch.Tensor | None = None
    r_weight: torch.Tensor | None = None
    hadamard_seed: int | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features)."""
        return int(self.q_codes.shape[0]), int(self.q_codes.shape[1])

    def parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dense float32 Q (m×n), L (m×r), R (r×n), in the (possibly rotated) basis they were fitted in."""
        cfg = self.config
        q = dequantize_codes(self.q_codes, self.q_scales, cfg.q_bits, cfg.quantizer)
        if self.l_weight is not None and self.r_weight is not None:
            return q, self.l_weight.to(torch.float32), self.r_weight.to(torch.float32)
        assert self.l_codes is not None and self.l_scales is not None
        assert self.r_codes is not None and self.r_scales is not None
        left = dequantize_codes(self.l_codes, self.l_scales, cfg.lr_bits, cfg.quantizer)
        right = dequantize_codes(self.r_codes, self.r_scales, cfg.lr_bits, cfg.quantizer)
        return q, left, right

    def hadamard_matrices(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(U, V) of the rotation, orthogonal m×m and n×n, or None without one."""
        if self.hadamard_seed is None:
            return None
        m, n = self.shape
        seed_u, seed_v = _rotation_seeds(self.hadamard_seed)
        return random_hadamard(m, seed_u), random_hadamard(n, seed_v)

    def dequantize(self) -> torch.Tensor:
        """The dense Ŵ (m×n, float32) in the original basis of the layer."""
        q, left, right = self.parts()
        w = torch.addmm(q, left, right)
        if self.hadamard_seed is None:
            return w
        seed_u, seed_v = _rotation_seeds(self.hadamard_seed)
        w = rotate(w, seed_v, transpose=True)                            # (Q + L R) V
        return rotate(w.T.contiguous(), seed_u, transpose=True).T.contiguous()  # Uᵀ (Q + L R) V

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by key: codes, scales, float16 factors and the seed (those present)."""
        out = {k: getattr(self, k) for k in _CODE_KEYS + _FLOAT_KEYS if getattr(self, k) is not None}
        if self.hadamard_seed is not None:
            out[_SEED_KEY] = torch.tensor([self.hadamard_seed], dtype=torch.int64)
        return out

    def bits_per_parameter(self) -> float:
        """Stored bits per weight: codes at their bit width, scales and float16 factors at 16 bits.

        (q_codes.numel()·q_bits + (l_codes + r_codes).numel()·lr_bits + 16·(every float16 element)) / (m·n);
        the one integer seed of a rotation is not counted.
        """
        cfg = self.config
        bits = self.q_codes.numel() * cfg.q_bits
        bits += sum(t.numel() for t in (self.l_codes, self.r_codes) if t is not None) * cfg.lr_bits
        bits += sum(getattr(self, k).numel() * getattr(self, k).element_size() * 8
                    for k in _FLOAT_KEYS if getattr(self, k) is not None)
        m, n = self.shape
        return bits / (m * n)

    def _bits_of(self, key: str) -> int:
        return self.config.q_bits if key == "q_codes" else self.config.lr_bits

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """The stored tensors under `prefix` + key, ready for safetensors; codes bit-packed at their width
        (a `<key>_shape` tensor says how to unpack them), so the file holds what bits_per_parameter counts."""
        out = {}
        for key, value in self.tensors().items():
            value = value.detach().cpu().contiguous()
            if key in _CODE_KEYS:
                out[prefix + key] = pack_codes(value, self._bits_of(key))
                out[prefix + key + "_shape"] = torch.tensor(value.shape, dtype=torch.int64)
            else:
                out[prefix + key] = value
        return out

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], prefix: str, config: CalderaConfig) -> CalderaFactors:
        """Rebuild the factors stored under `prefix` (the inverse of state_dict: codes are unpacked)."""
        found = {k: tensors[prefix + k] for k in _CODE_KEYS + _FLOAT_KEYS + (_SEED_KEY,) if prefix + k in tensors}
        for key in _CODE_KEYS:
            if key in found:
                bits = config.q_bits if key == "q_codes" else config.lr_bits
                found[key] = unpack_codes(found[key], bits, tuple(tensors[prefix + key + "_shape"].tolist()))
        return cls.from_tensors(found, config, where=repr(prefix))

    @classmethod
    def from_tensors(cls, found: dict[str, torch.Tensor], config: CalderaConfig, where: str = "") -> CalderaFactors:
        """Factors from unpacked tensors keyed as in `tensors()`; a missing part is a one-line error."""
        found = dict(found)
        if "q_codes" not in found or "q_scales" not in found:
            raise ColaError(f"no CALDERA factors under {where}: q_codes or q_scales is missing")
        needed = ("l_weight", "r_weight") if config.lr_bits == 16 else ("l_codes", "l_scales", "r_codes", "r_scales")
        missing = [k for k in needed if k not in found]
        if missing:
            raise ColaError(f"the CALDERA factors under {where} lack {', '.join(missing)} "
                            f"(expected for lr_bits={config.lr_bits})")
        seed = found.pop(_SEED_KEY, None)
        return cls(config=config, hadamard_seed=int(seed.reshape(-1)[0]) if seed is not None else None, **found)


@dataclass
class CalderaResult:
    """The factors of one layer and the relative activation-aware errors of the run."""

    factors: CalderaFactors
    errors: list[float]
    best_error: float
    rtn_error: float | None


# ------------------------------------------------------------------------------------- decomposition


def activation_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W−Ŵ) H (W−Ŵ)ᵀ) / tr(W H Wᵀ) (products in float32, sums in float64)."""
    H = H.to(torch.float32)
    W = W.to(torch.float32)
    E = W - W_hat.to(W.device, torch.float32)
    num = ((E @ H) * E).sum(dtype=torch.float64).item()
    return _relative(num, ((W @ H) * W).sum(dtype=torch.float64).item())


def _relative(num: float, den: float) -> float:
    """num / den, with 0 for 0/0 and inf for x/0 (an all-zero layer)."""
    return num / den if den > 0 else (0.0 if num <= 0 else math.inf)


class _Context:
    """What depends on H only, computed once per decomposition (H normalised to mean diagonal 1)."""

    def __init__(self, H: torch.Tensor, config: CalderaConfig) -> None:
        self.config = config
        self.H = H.to(torch.float32)
        chol = _damped_cholesky(H, config.damp)
        self.hinv_u = _hinv_upper(chol)
        self.C = chol.to(torch.float32)      # Hd = C Cᵀ: ‖E C‖² = tr(E Hd Eᵀ), C plays the role of Hd^{1/2}
        self.Hd = (chol @ chol.T).to(torch.float32)
        self.start: torch.Tensor | None = None  # warm start of the randomized SVD


def _top_svd(A: torch.Tensor, ctx: _Context, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-r SVD of A C by warm-started randomized subspace iteration: (U m×r, σ r, Vᵀ r×n)."""
    m, n = A.shape
    q = min(rank + _OVERSAMPLE, m, n)
    if ctx.start is None:
        gen = torch.Generator().manual_seed(ctx.config.seed)
        ctx.start = torch.linalg.qr(torch.randn(n, q, generator=gen)).Q
    Z = ctx.start
    for _ in range(_POWER_ITERS):
        Y = torch.linalg.qr(A @ (ctx.C @ Z)).Q
        Z = torch.linalg.qr(ctx.C.T @ (A.T @ Y)).Q
    Y = torch.linalg.qr(A @ (ctx.C @ Z)).Q
    u, sigma, vt = torch.linalg.svd((Y.T @ A) @ ctx.C, full_matrices=False)
    ctx.start = vt.T.contiguous()
    return Y @ u[:, :rank], sigma[:rank], vt[:rank]


def _solve_right(B: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """B G⁻¹ for a small symmetric PSD G (ridge-stabilised), in float64."""
    G = G.to(torch.float64)
    ridge = 1e-8 * G.diagonal().mean().clamp_min(1e-30)
    G = G + ridge * torch.eye(G.shape[0], dtype=torch.float64)
    return torch.linalg.solve(G, B.to(torch.float64).T).T.to(torch.float32)


def _error_num(A: torch.Tensor, AH: torch.Tensor, L: torch.Tensor, R: torch.Tensor, H: torch.Tensor) -> float:
    """tr((A − L R) H (A − L R)ᵀ) given AH = A H, at cost O(m n r + n² r)."""
    E = A - L @ R
    return ((AH - L @ (R @ H)) * E).sum(dtype=torch.float64).item()


@dataclass
class _LowRank:
    L: torch.Tensor                 # float32 values of the stored factors
    R: torch.Tensor
    left: _Quantized | None         # None when lr_bits == 16
    right: _Quantized | None


def _lr_step(A: torch.Tensor, AH: torch.Tensor, ctx: _Context) -> tuple[_LowRank, float]:
    """Quantized rank-r fit of A in the H metric, and its error numerator tr((A − L R) H (A − L R)ᵀ)."""
    cfg = ctx.config
    U, sigma, vt = _top_svd(A, ctx, cfg.rank)
    root = sigma.clamp_min(0).sqrt()
    L0 = U * root
    R0 = torch.linalg.solve_triangular(ctx.C, root[:, None] * vt, upper=False, left=False)  # Σ^½ Vᵀ C⁻¹
    # equal RMS per component in L and R keeps both in the same float16/scale range
    balance = (R0.square().mean(1).sqrt() / L0.square().mean(0).sqrt()).sqrt()
    balance = torch.where(torch.isfinite(balance) & (balance > 0), balance, torch.ones_like(balance))
    L0, R0 = L0 * balance, R0 / balance[:, None]
    if cfg.lr_bits == 16:
        L = _fp16(L0)
        R = _fp16(_solve_right(A.T @ L, L.T @ L).T.contiguous())  # (LᵀL)⁻¹ Lᵀ A
        return _LowRank(L, R, None, None), _error_num(A, AH, L, R, ctx.H)
    HL = (R0 @ ctx.Hd) @ R0.T  # the Hessian of L's error: ‖ΔL R C‖² = tr(ΔL R Hd Rᵀ ΔLᵀ)
    left = _ldlq(L0, _hinv_upper(_damped_cholesky(HL, cfg.damp)), cfg.lr_bits, cfg.quantizer, None)
    R = _solve_right(A.T @ left.values, left.values.T @ left.values).T  # exact for any H: it acts on the right
    right = _ldlq(R, ctx.hinv_u, cfg.lr_bits, cfg.quantizer, cfg.group_size)
    return _LowRank(left.values, right.values, left, right), _error_num(A, AH, left.values, right.values, ctx.H)




def caldera_decompose(W: torch.Tensor, H: torch.Tensor, config: CalderaConfig) -> CalderaResult:
    """Decompose W (out×in) as Q + L R against the calibration Hessian H (in×in), on the CPU, single-threaded."""
    with single_threaded():
        return _decompose(W, H, config)


def _decompose(W: torch.Tensor, H: torch.Tensor, config: CalderaConfig) -> CalderaResult:
    if W.dim() != 2:
        raise ColaError(f"CALDERA needs a 2-D weight, got shape {tuple(W.shape)}")
    m, n = W.shape
    if tuple(H.shape) != (n, n):
        raise ColaError(f"the Hessian has shape {tuple(H.shape)} but the layer has {n} input columns")
    config.validate(m, n)
    W = W.detach().to("cpu", torch.float32)
    if not torch.isfinite(W).all():
        raise ColaError("the layer's weight has NaN or infinite entries")
    H = H.detach().to("cpu", torch.float64)
    H = (H + H.T) / 2
    mean = H.diagonal().mean().item()
    if not (math.isfinite(mean) and mean > 0 and torch.isfinite(H).all()):
        raise ColaError("the calibration Hessian is zero or not finite: the layer saw no usable calibration tokens")
    H = H / mean  # errors are scale-free; a unit mean diagonal keeps L and R in float16's comfortable range

    codes, scales = quantize_rtn(W, config.q_bits, config.quantizer, config.group_size)
    rtn_error = activation_error(W, dequantize_codes(codes, scales, config.q_bits, config.quantizer), H)

    seed = config.seed if config.hadamard else None
    if seed is not None:
        seed_u, seed_v = _rotation_seeds(seed)
        W = rotate(rotate(W, seed_v).T.contiguous(), seed_u).T.contiguous()  # U W Vᵀ
        V = random_hadamard(n, seed_v).to(torch.float64)
        H = V @ H @ V.T
        H = (H + H.T) / 2
    ctx = _Context(H, config)
    denom = ((W @ ctx.H) * W).sum(dtype=torch.float64).item()

    errors: list[float] = []
    best: tuple[float, _Quantized, _LowRank] | None = None
    low_rank: _LowRank | None = None
    for _ in range(config.iters):
        target = W if low_rank is None else W - low_rank.L @ low_rank.R
        q = _ldlq(target, ctx.hinv_u, config.q_bits, config.quantizer, config.group_size)
        A = W - q.values
        low_rank, num = _lr_step(A, A @ ctx.H, ctx)
        errors.append(_relative(num, denom))
        if best is None or errors[-1] < best[0]:
            best = (errors[-1], q, low_rank)
    assert best is not None
    best_error, q, low_rank = best
    factors = CalderaFactors(q_codes=q.codes, q_scales=q.scales, config=config, hadamard_seed=seed)
    if low_rank.left is None or low_rank.right is None:
        factors.l_weight, factors.r_weight = low_rank.L.to(torch.float16), low_rank.R.to(torch.float16)
    else:
        factors.l_codes, factors.l_scales = low_rank.left.codes, low_rank.left.scales
        factors.r_codes, factors.r_scales = low_rank.right.codes, low_rank.right.scales
    return CalderaResult(factors=factors, errors=errors, best_error=best_error, rtn_error=rtn_error)


# ---------------------------------------------------------------------------------------------- module


class CalderaLinear(torch.nn.Module):
    """y = x (Q + L R)ᵀ + b, dequantizing Q, L, R from their codes in every forward (no dense cache).

    The codes, scales and the rotation seed are buffers, so `state_dict()` holds exactly what is stored.
    """

    def __init__(self, factors: CalderaFactors, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = factors.config
        self.out_features, self.in_features = factors.shape
        self._keys = tuple(factors.tensors())
        # Contiguous copies: a fresh module and one reloaded from disk must run the same matmul kernels (a
        # transposed view takes another kernel on some CPUs, and the outputs then differ in the last bits).
        for key, tensor in factors.tensors().items():
            self.register_buffer(key, tensor.detach().clone(memory_format=torch.contiguous_format))
        self.register_buffer("bias", bias.detach().clone(memory_format=torch.contiguous_format)
                             if bias is not None else None)

    @property
    def factors(self) -> CalderaFactors:
        """The factors, built on the current buffers (no copy)."""
        return CalderaFactors.from_tensors({k: getattr(self, k) for k in self._keys}, self.config, "a module")

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, H: torch.Tensor,
                    config: CalderaConfig) -> tuple[CalderaLinear, CalderaResult]:
        """Decompose a Linear layer against its calibration Hessian H; the module lives on the layer's device."""
        result = caldera_decompose(linear.weight.detach(), H, config)
        bias = linear.bias.detach() if linear.bias is not None else None
        return cls(result.factors, bias).to(linear.weight.device), result

    def extra_repr(self) -> str:
        c = self.config
        return (f"in_features={self.in_features}, out_features={self.out_features}, q_bits={c.q_bits}, "
                f"lr_bits={c.lr_bits}, rank={c.rank}, hadamard={c.hadamard}, bias={self.bias is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factors = self.factors
        q, left, right = factors.parts()
        h = x.to(torch.float32)
        if factors.hadamard_seed is not None:
            seed_u, seed_v = _rotation_seeds(factors.hadamard_seed)
            h = rotate(h, seed_v)                                  # x Vᵀ
        y = h @ q.T + (h @ right.T) @ left.T
        if factors.hadamard_seed is not None:
            y = rotate(y, seed_u, transpose=True)                  # · U
        if self.bias is not None:
            y = y + self.bias.to(torch.float32)
        return y.to(x.dtype)


# ------------------------------------------------------------------------------------------ save/load


def save_caldera(path: Path, modules: dict[str, CalderaLinear], config: CalderaConfig) -> None:
    """Write every module's codes, scales and bias to one safetensors file (config in the metadata), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        if module.config != config:
            raise ColaError(f"layer {name} was decomposed with {module.config}, not the {config} being saved")
        tensors.update(module.factors.state_dict(f"{name}."))
        if module.bias is not None:
            tensors[f"{name}.bias"] = module.bias.detach().cpu().contiguous()
    metadata = {"format": FORMAT, "config": json.dumps(asdict(config)), "modules": json.dumps(list(modules))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_caldera(path: Path) -> tuple[dict[str, CalderaLinear], CalderaConfig]:
    """Read a file written by save_caldera: the CalderaLinear modules by name, and the config."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ColaError(f"CALDERA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a CALDERA file"
        raise ColaError(f"cannot read CALDERA file {path}: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise ColaError(f"{path} is not a CALDERA file of this version (format {metadata.get('format')!r}, "
                        f"expected {FORMAT!r})")
    config = CalderaConfig(**json.loads(metadata["config"]))
    config.validate()
    modules = {}
    for name in json.loads(metadata["modules"]):
        factors = CalderaFactors.from_state_dict(tensors, f"{name}.", config)
        modules[name] = CalderaLinear(factors, tensors.get(f"{name}.bias"))
    return modules, config


def replace_with_caldera(model: torch.nn.Module, modules: dict[str, CalderaLinear]) -> None:
    """Swap the named submodules of `model` (dotted names from named_modules()) for their CalderaLinear."""
    for name, module in modules.items():
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            old = getattr(parent, child)
        except AttributeError as exc:
            raise ColaError(f"the model has no module {name!r} to replace with its CALDERA layer") from exc
        old_in, old_out = getattr(old, "in_features", None), getattr(old, "out_features", None)
        if (old_in, old_out) not in ((None, None), (module.in_features, module.out_features)):
            raise ColaError(f"module {name!r} is {old_out}x{old_in} but its CALDERA layer is "
                            f"{module.out_features}x{module.in_features}")
        weight = getattr(old, "weight", None)
        if isinstance(weight, torch.Tensor):
            module = module.to(weight.device)
        setattr(parent, child, module)
