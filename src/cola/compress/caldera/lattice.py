"""QuIP#'s E8P12 lattice codebook, pure: 2^16 codewords of dimension 8 (2 bits per weight), exact
nearest-codeword encoding, row-scaled round-to-nearest, and BlockLDLQ (Tseng et al., "QuIP#: Even Better
LLM Quantization with Hadamard Incoherence and Lattice Codebooks", ICML 2024, Sec. 4: BlockLDLQ and the E8P codebook).

The codebook. Let D̂8 = D8 + ½ (half-odd-integer vectors with an even coordinate sum), a coset of E8. Its
absolute-value patterns a ∈ {½, 3⁄2, 5⁄2, …}^8 with ‖a‖² ≤ 10 number 227; QuIP# adds 29 chosen patterns of
‖a‖² = 12 (five 3⁄2 and three ½) to make 256. A pattern with signs σ lies in D̂8 iff σ·a has an even sum,
i.e. the number of negative signs has the parity of Σa: 2^7 sign patterns per pattern. Shifting by ±¼
(all coordinates) gives 256 · 2^7 · 2 = 2^16 codewords, every one in E8 + ¼ (c − ¼ ∈ D̂8 or D8), every
coordinate an odd multiple of ¼, |c_i| ≤ 11⁄4.

Index layout of a code (16 bits; stored as int32 here, int16 two's complement also decodes):
  bits 15..8  abs pattern, 0..255: the 227 of ‖a‖² ≤ 10 in lexicographic order of (2a_0, …, 2a_7), then
              QuIP#'s 29 of ‖a‖² = 12 in their order;
  bit  7      shift: 0 → +¼, 1 → −¼;
  bits 6..0   bit i set ⇔ coordinate i is negative (i = 0..6); coordinate 7's sign follows from parity.
(QuIP#'s own kernels pack the same set of codewords with a different bit layout.)

Encoding is exact nearest-codeword in Euclidean distance, without the 2^16 distances: for each pattern a
and shift s, with y = x − s, the best signs are sign(y), and if their parity is wrong the coordinate with
the least a_i |y_i| is flipped, so ‖x − c‖² = ‖y‖² + ‖a‖² − 2 (Σ a_i|y_i| − [wrong] 2 min_i a_i|y_i|).
All 512 (shift, pattern) pairs get a lower bound of that distance from one small matmul; the pair with the
least bound is evaluated exactly, and a vector where another pair's bound falls below that (rare: none among
4·10^5 Gaussian vectors at scales 0.5 to 4) is searched exactly over all 512 pairs.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import torch

from cola.compress.quant import Quantized, fp16_round
from cola.errors import ColaError

DIM = 8               # codeword dimension (weights per code)
CODE_BITS = 16        # bits per code
CODEBOOK_RMS = 1.09375  # root mean square of all 2^19 codebook entries (exact)
_CHUNK = 4096         # vectors per encoding step: (chunk, 512) float32 bounds, 8 MiB
_HALF_ODD = (0.5, 1.5, 2.5)   # the values of the abs-pattern entries
_BLOCK = 128          # BlockLDLQ lazy-batch block, in columns (a multiple of DIM)
# row-scale multipliers tried around rms(row) / rms(codebook): a coarse grid, then steps around the best
# (best on Gaussian rows ≈ 1.05, on Laplace ≈ 1.15, on Student-t3 ≈ 1.2–1.35)
_COARSE = (0.9, 1.0, 1.1, 1.2, 1.3, 1.4)
_FINE = (-0.05, 0.05)
# QuIP#'s 29 patterns of norm² 12: the positions of their three ½ entries (the other five are 3⁄2)
_NORM12_HALVES = ((1, 2, 3), (0, 2, 3), (0, 1, 3), (0, 1, 2), (3, 6, 7), (3, 5, 7), (3, 4, 7), (3, 5, 6),
                  (3, 4, 6), (3, 4, 5), (2, 6, 7), (2, 5, 7), (2, 4, 7), (2, 5, 6), (2, 4, 6), (2, 4, 5),
                  (1, 6, 7), (1, 5, 7), (1, 4, 7), (1, 5, 6), (1, 4, 6), (0, 4, 5), (0, 6, 7), (0, 5, 7),
                  (0, 4, 7), (0, 5, 6), (0, 4, 6), (0, 1, 4), (2, 3, 7))


@lru_cache(maxsize=None)
def _abs_patterns(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The 256 abs patterns (256, 8) float32 and their parities Σa mod 2 (256,) int32."""
    small = [p for p in itertools.product((1, 3, 5), repeat=DIM) if sum(v * v for v in p) <= 40]  # (2a)
    norm12 = [tuple(1 if i in halves else 3 for i in range(DIM)) for halves in _NORM12_HALVES]
    twice = torch.tensor(small + norm12, dtype=torch.int32)           # (256, 8) odd integers 2a
    parity = (twice.sum(1) // 2) % 2                                  # Σ 2a_i is even: Σ a_i is an integer
    return (twice.to(torch.float32) / 2).to(device), parity.to(device)


@lru_cache(maxsize=None)
def _codebook(device: torch.device) -> torch.Tensor:
    A, parity = _abs_patterns(torch.device("cpu"))
    codes = torch.arange(2**CODE_BITS, dtype=torch.int32)
    pattern = codes >> 8
    low = (codes.unsqueeze(1) >> torch.arange(7, dtype=torch.int32)) & 1             # (65536, 7)
    last = (low.sum(1) + parity[pattern]) % 2                                        # sign 7 by parity
    negative = torch.cat([low, last.unsqueeze(1)], dim=1).to(torch.float32)          # (65536, 8)
    shift = 0.25 - 0.5 * ((codes >> 7) & 1).to(torch.float32)                         # ±¼
    return (A[pattern] * (1 - 2 * negative) + shift.unsqueeze(1)).to(device)


def e8p_codebook() -> torch.Tensor:
    """All 2^16 E8P codewords, (65536, 8) float32 on the CPU, row c being code c (layout: module docstring)."""
    return _codebook(torch.device("cpu")).clone()


@lru_cache(maxsize=None)
def _bound_matrix(device: torch.device) -> torch.Tensor:
    """G (8 + 48, 256) with [|y|, t-features] @ G = −2 Σ a_i|y_i| + 4 [parity wrong] min(a_j|y_j|, ½|y_k|).

    Rows 8 + 6j + 3q + k: 4 where the pattern's parity ≠ q (that of sign(y)) and a_j = _HALF_ODD[k]."""
    A, parity = _abs_patterns(torch.device("cpu"))
    onehot = (A.T.unsqueeze(1) == torch.tensor(_HALF_ODD).view(3, 1)).to(torch.float32)   # (8, 3, 256)
    wrong = (parity != torch.arange(2).view(2, 1)).to(torch.float32)                      # (2, 256)
    flips = 4 * onehot.unsqueeze(1) * wrong.view(1, 2, 1, 256)                            # (8, 2, 3, 256)
    return torch.cat([-2 * A.T, flips.reshape(48, 256)]).to(device)


def _lower_bounds(x: torch.Tensor, A: torch.Tensor, parity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y = x − s for s = +¼, −¼ (n, 2, 8), and a lower bound (n, 512) of ‖x − c‖² over each (shift,
    pattern)'s codewords: exact when sign(y) has the right parity; else the flip cost min_i a_i|y_i| is
    bounded below by min(a_j|y_j|, ½|y_k|), j and k the smallest and second smallest |y| (all a_i ≥ ½).

    The bound is one matmul: a_j takes 3 values and the parity 2, so the flip term is a feature vector
    with the 3 values min(a|y_j|, ½|y_k|) at the slot of (j, parity of sign(y)), times `_bound_matrix`."""
    n = x.shape[0]
    ys = torch.stack([x - 0.25, x + 0.25], dim=1)                       # (n, 2, 8)
    ay = ys.abs()
    small, at = ay.topk(2, dim=2, largest=False)                        # (n, 2, 2) ascending
    half_odd = torch.tensor(_HALF_ODD, device=x.device)
    flip = torch.minimum(half_odd * small[..., :1], 0.5 * small[..., 1:])            # (n, 2, 3)
    slot = 6 * at[..., :1] + 3 * ((ys < 0).sum(2, keepdim=True) % 2)               # (n, 2, 1)
    feats = torch.zeros(n, 2, 48, device=x.device).scatter_(2, slot + torch.arange(3, device=x.device), flip)
    feats = torch.cat([ay, feats], dim=2).reshape(2 * n, 56)
    bound = torch.addmm(A.square().sum(1), feats, _bound_matrix(x.device)).view(n, 2, 256)
    bound += ys.square().sum(2, keepdim=True)
    return ys, bound.view(n, 2 * 256)


def _exact(ys: torch.Tensor, cand: torch.Tensor, A: torch.Tensor, parity: torch.Tensor) -> torch.Tensor:
    """Exact ‖x − c‖² (n, k) of the nearest codeword of each candidate (shift, pattern) cand (n, k) < 512."""
    rows = torch.arange(cand.shape[0], device=cand.device).unsqueeze(1)
    y = ys[rows, cand // 256]                                           # (n, k, 8)
    a = A[cand % 256]                                                   # (n, k, 8)
    wrong = ((y < 0).sum(2) % 2) != parity[cand % 256]                  # sign(y) has the wrong parity
    prod = a * y.abs()
    score = prod.sum(2) - 2 * wrong * prod.amin(2)                      # max over valid signs of Σ σ a y
    return y.square().sum(2) + a.square().sum(2) - 2 * score


def _encode_chunk(x: torch.Tensor, A: torch.Tensor, parity: torch.Tensor) -> torch.Tensor:
    """Codes (n,) int32 of the nearest codewords to x (n, 8) float32.

    The pair with the least lower bound is checked exactly; a row where another pair's bound is below
    that exact distance (rare) is searched exactly over all 512 (shift, pattern) pairs.
    """
    n = x.shape[0]
    rows = torch.arange(n, device=x.device)
    ys, bound = _lower_bounds(x, A, parity)
    best = bound.argmin(1)                                              # (n,) in [0, 512)
    dist = _exact(ys, best.unsqueeze(1), A, parity)                     # (n, 1)
    bound[rows, best] = math.inf
    unsure = (bound < dist).any(1).nonzero().squeeze(1)
    if unsure.numel():
        every = torch.arange(512, device=x.device).expand(unsure.numel(), 512)
        best[unsure] = _exact(ys[unsure], every, A, parity).argmin(1)
    shift_bit, pattern = best // 256, best % 256
    y = ys[rows, shift_bit]                                             # (n, 8)
    neg = y < 0
    flip = (neg.sum(1) % 2) != parity[pattern]
    neg[rows, (A[pattern] * y.abs()).argmin(1)] ^= flip                 # flip the cheapest coordinate
    weights = 2 ** torch.arange(7, device=x.device, dtype=torch.int32)
    low_bits = (neg[:, :7].to(torch.int32) * weights).sum(1)
    return (pattern.to(torch.int32) << 8) | (shift_bit.to(torch.int32) << 7) | low_bits


def e8p_encode(x: torch.Tensor) -> torch.Tensor:
    """Codes (N,) int32 in [0, 65536) of the nearest E8P codewords (Euclidean) to x (N, 8), already scaled.

    No N×65536 distances: a (2N × 56) @ (56 × 256) matmul of bounds and one exact check per vector
    (module docstring), in chunks of 4096 vectors; runs on x's device. Raises ColaError unless x is (N, 8).
    """
    if x.dim() != 2 or x.shape[1] != DIM:
        raise ColaError(f"E8P encodes vectors of shape (N, 8), got {tuple(x.shape)}")
    x = x.to(torch.float32)
    A, parity = _abs_patterns(x.device)
    out = torch.empty(x.shape[0], dtype=torch.int32, device=x.device)
    for i in range(0, x.shape[0], _CHUNK):
        out[i:i + _CHUNK] = _encode_chunk(x[i:i + _CHUNK], A, parity)
    return out


def e8p_decode(codes: torch.Tensor) -> torch.Tensor:
    """Codewords (*codes.shape, 8) float32 of integer codes (int16 two's complement accepted), on their device."""
    index = codes.to(torch.int64) & 0xFFFF
    return _codebook(codes.device)[index]


def _check_n(n: int) -> None:
    if n % DIM:
        raise ColaError(f"E8P needs the input size to be a multiple of 8, got n={n}")


def _dequant_rows(W: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """W (m, n) coded at per-row scale (m, 1) and decoded again, float32 (m, n)."""
    m, n = W.shape
    codes = e8p_encode((W / scale).reshape(-1, DIM))
    return e8p_decode(codes).reshape(m, n) * scale


def e8p_fit_scales(W: torch.Tensor) -> torch.Tensor:
    """Per-row scales of W (m, n): float16 values as float32, (m, 1), minimising each row's squared error.

    Start from rms(row) / CODEBOOK_RMS, try the multipliers 0.9..1.4 in steps
    of 0.1, then ±0.05 around the best (8 encodings of W); an all-zero row gets the tiny scale 2^-24.
    """
    m, n = W.shape
    _check_n(n)
    W = W.to(torch.float32)
    base = W.square().mean(1, keepdim=True).sqrt() / CODEBOOK_RMS     # (m, 1)
    best_err = torch.full((m, 1), math.inf, device=W.device)
    best = torch.ones(m, 1, device=W.device)

    def at(mult: torch.Tensor) -> torch.Tensor:
        return fp16_round(base * mult).clamp_min(2**-24)

    def trial(mult: torch.Tensor) -> None:
        err = (_dequant_rows(W, at(mult)) - W).square().sum(1, keepdim=True)
        better = err < best_err
        best_err.copy_(torch.where(better, err, best_err))
        best.copy_(torch.where(better, mult, best))

    for factor in _COARSE:
        trial(torch.full((m, 1), factor, device=W.device))
    coarse = best.clone()
    for step in _FINE:
        trial(coarse + step)
    return at(best)


def e8p_quantize_rtn(W: torch.Tensor, scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest with E8P: codes (m, n // 8) int32 (16-bit values) and scales (m, 1) float16.

    Each row's scale from `e8p_fit_scales`, or `scales` (m, 1) when given; each row's consecutive 8 weights /
    scale → one codeword. Raises ColaError unless n is a multiple of 8.
    """
    m, n = W.shape
    _check_n(n)
    W = W.to(torch.float32)
    scale = e8p_fit_scales(W) if scales is None else scales.to(W.device, torch.float32)
    codes = e8p_encode((W / scale).reshape(-1, DIM)).reshape(m, n // DIM)
    return codes, scale.to(torch.float16)


def e8p_dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Dense float32 (m, 8·k) values of codes (m, k) with one scale per row, scales (m, 1)."""
    m, k = codes.shape
    return e8p_decode(codes).reshape(m, k * DIM) * scales.to(codes.device, torch.float32)


def e8p_ldlq(W: torch.Tensor, hinv_u: torch.Tensor, scales: torch.Tensor | None = None) -> Quantized:
    """QuIP#'s BlockLDLQ with E8P: W (m, n) quantized 8 columns at a time, each block's error fed forward.

    hinv_u (n, n) is GPTQ's upper Cholesky factor U of the damped H⁻¹ (`quant.hinv_upper`). After block
    b is coded with error E = W_b − Q_b (m, 8), the later columns get W[:, r] −= E U_bb⁻¹ U[b, r]: the
    optimal (OBS) compensation E (H_F⁻¹)_bb⁻¹ (H_F⁻¹)_br with H_F⁻¹ = U_Fᵀ U_F on the columns F not yet
    coded; with 1-column blocks it is `quant.ldlq`'s update. Lazy batch updates every 128 columns. The row scales are
    fitted once, on W before the loop (as `quant.ldlq` with one group), so the error feedback cannot
    inflate them; `scales` (m, 1), when given, are used instead (CALDERA fits them once per layer and reuses
    them in every Q-step: the fit is most of the cost). Returns codes (m, n // 8) int32, scales (m, 1)
    float16, values (m, n) float32; on W's device. Raises ColaError unless n is a multiple of 8.
    """
    m, n = W.shape
    _check_n(n)
    W = W.to(torch.float32).clone()
    U = hinv_u.to(W.device, torch.float32)
    scale = e8p_fit_scales(W) if scales is None else scales.to(W.device, torch.float32)  # (m, 1)
    codes = torch.empty(m, n // DIM, dtype=torch.int32, device=W.device)
    for i1 in range(0, n, _BLOCK):
        i2 = min(i1 + _BLOCK, n)
        err = torch.empty(m, i2 - i1, device=W.device)                  # E U_bb⁻¹ per block, (m, i2 − i1)
        for k in range(i1, i2, DIM):
            w = W[:, k:k + DIM]                                         # (m, 8)
            c = e8p_encode(w / scale)
            codes[:, k // DIM] = c
            e = torch.linalg.solve_triangular(U[k:k + DIM, k:k + DIM], w - e8p_decode(c) * scale,
                                              upper=True, left=False)   # (m, 8)
            err[:, k - i1:k - i1 + DIM] = e
            if k + DIM < i2:
                W[:, k + DIM:i2].addmm_(e, U[k:k + DIM, k + DIM:i2], alpha=-1)
        if i2 < n:
            W[:, i2:].addmm_(err, U[i1:i2, i2:], alpha=-1)
    scales16 = scale.to(torch.float16)
    return Quantized(codes, scales16, e8p_dequantize(codes, scales16))


def e8p_bits_per_parameter(m: int, n: int) -> float:
    """Storage per weight of an E8P-coded (m, n) matrix: 16 bits per 8 weights + a float16 scale per row."""
    _check_n(n)
    return (CODE_BITS * m * (n // DIM) + 16 * m) / (m * n)
