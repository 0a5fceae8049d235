"""The CALDERA decomposition, pure: W ≈ Q + L R fitted to the calibration Hessian by alternating minimization.

See `cola.compress.caldera` for the algorithm (Saha et al., NeurIPS 2024). Tensors and a config in, factors
and errors out; no module, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cola.compress.caldera.config import CalderaConfig, check_layer
from cola.compress.caldera.factors import CalderaFactors
from cola.compress.caldera.hadamard import random_hadamard, rotate, rotation_seeds
from cola.compress.quant import (Quantized, damped_cholesky, dequantize_codes, fp16_round, hinv_upper, ldlq,
                                 quantize_rtn)
from cola.errors import ColaError
from cola.models import single_threaded

_OVERSAMPLE = 8       # randomized SVD: extra directions
_POWER_ITERS = 2      # randomized SVD: subspace iterations per LR-step (warm-started)


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
        chol = damped_cholesky(H, config.damp)
        self.hinv_u = hinv_upper(chol)
        self.C = chol.to(torch.float32)      # Hd = C Cᵀ: ‖E C‖² = tr(E Hd Eᵀ), C plays the role of Hd^{1/2}
        self.Hd = (chol @ chol.T).to(torch.float32)
        self.start: torch.Tensor | None = None  # warm start of the randomized SVD
        self.e8p_scales: torch.Tensor | None = None  # (m, 1) row scales of an E8P Q, fitted once


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
    L: torch.Tensor                 # (m, r) float32 values of the stored factors
    R: torch.Tensor                 # (r, n)
    left: Quantized | None         # the quantized first r − f columns of L; None when all r are float16
    right: Quantized | None        # the quantized first r − f rows of R


def _lr_step(A: torch.Tensor, AH: torch.Tensor, ctx: _Context) -> tuple[_LowRank, float]:
    """Rank-r fit of A in the H metric, its first r − f components quantized and the last f = float16_rank kept
    in float16, and its error numerator tr((A − L R) H (A − L R)ᵀ).

    L's quantized columns go through LDLQ under L's Hessian R Hd Rᵀ ordered with the float16 columns last, so
    those absorb the rounding error (GPTQ's feedback: Δ = E H_hf H_ff⁻¹); R is then solved by least squares given
    L (exact for any H: it acts on the right), its first rows quantized with LDLQ under H, and its float16 rows
    solved again given the quantized ones.
    """
    cfg = ctx.config
    U, sigma, vt = _top_svd(A, ctx, cfg.rank)
    root = sigma.clamp_min(0).sqrt()
    L0 = U * root
    R0 = torch.linalg.solve_triangular(ctx.C, root[:, None] * vt, upper=False, left=False)  # Σ^½ Vᵀ C⁻¹
    # equal RMS per component in L and R keeps both in the same float16/scale range
    balance = (R0.square().mean(1).sqrt() / L0.square().mean(0).sqrt()).sqrt()
    balance = torch.where(torch.isfinite(balance) & (balance > 0), balance, torch.ones_like(balance))
    L0, R0 = L0 * balance, R0 / balance[:, None]
    k = cfg.rank - cfg.float16_rank  # quantized components
    if k == 0:
        L = fp16_round(L0)
        R = fp16_round(_solve_right(A.T @ L, L.T @ L).T.contiguous())  # (LᵀL)⁻¹ Lᵀ A
        return _LowRank(L, R, None, None), _error_num(A, AH, L, R, ctx.H)
    HL = (R0 @ ctx.Hd) @ R0.T  # (r, r) the Hessian of L's error: ‖ΔL R C‖² = tr(ΔL R Hd Rᵀ ΔLᵀ)
    hinv_l = hinv_upper(damped_cholesky(HL, cfg.damp))  # its [:k, :k] block: the head's, the tail compensating
    left = ldlq(L0[:, :k].contiguous(), hinv_l[:k, :k].contiguous(), cfg.lr_bits, cfg.lr_quantizer, None)
    L = left.values
    if k < cfg.rank:  # the float16 columns take the head's rounding error: E H_hf H_ff⁻¹
        compensation = _solve_right((L0[:, :k] - left.values) @ HL[:k, k:], HL[k:, k:])
        L = torch.cat([left.values, fp16_round(L0[:, k:] + compensation)], dim=1)
    R = _solve_right(A.T @ L, L.T @ L).T.contiguous()
    right = ldlq(R[:k].contiguous(), ctx.hinv_u, cfg.lr_bits, cfg.lr_quantizer, cfg.group_size)
    R = right.values
    if k < cfg.rank:  # the float16 rows of R, solved given the quantized rows
        tail = L[:, k:]
        rest = A - left.values @ right.values
        R = torch.cat([right.values, fp16_round(_solve_right(rest.T @ tail, tail.T @ tail).T.contiguous())], dim=0)
    return _LowRank(L, R, left, right), _error_num(A, AH, L, R, ctx.H)


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
    check_layer(config, m, n)
    W = W.detach().to("cpu", torch.float32)
    if not torch.isfinite(W).all():
        raise ColaError("the layer's weight has NaN or infinite entries")
    H = H.detach().to("cpu", torch.float64)
    H = (H + H.T) / 2
    mean = H.diagonal().mean().item()
    if not (math.isfinite(mean) and mean > 0 and torch.isfinite(H).all()):
        raise ColaError("the calibration Hessian is zero or not finite: the layer saw no usable calibration tokens")
    H = H / mean  # errors are scale-free; a unit mean diagonal keeps L and R in float16's comfortable range

    if config.quantizer != "e8p":  # round-to-nearest in the layer's own basis (e8p's: below, in Q's basis)
        rtn_error = activation_error(W, _rtn_values(W, config), H)

    seed = config.seed if config.hadamard else None
    if seed is not None:
        seed_u, seed_v = rotation_seeds(seed)
        W = rotate(rotate(W, seed_v).T.contiguous(), seed_u).T.contiguous()  # U W Vᵀ
        V = random_hadamard(n, seed_v).to(torch.float64)
        H = V @ H @ V.T
        H = (H + H.T) / 2
    ctx = _Context(H, config)
    denom = ((W @ ctx.H) * W).sum(dtype=torch.float64).item()
    if config.quantizer == "e8p":  # the error is rotation-invariant; the row scales are fitted once, here
        from cola.compress.caldera.lattice import e8p_dequantize, e8p_fit_scales, e8p_quantize_rtn

        ctx.e8p_scales = e8p_fit_scales(W)
        rtn_error = activation_error(W, e8p_dequantize(*e8p_quantize_rtn(W, ctx.e8p_scales)), ctx.H)

    errors: list[float] = []
    best: tuple[float, Quantized, _LowRank | None] | None = None
    low_rank: _LowRank | None = None
    for _ in range(config.iters if config.rank else 1):  # Q alone (rank 0) is one LDLQ pass
        target = W if low_rank is None else W - low_rank.L @ low_rank.R
        q = _ldlq_q(target, ctx)
        A = W - q.values
        if config.rank:
            low_rank, num = _lr_step(A, A @ ctx.H, ctx)
        else:
            num = ((A @ ctx.H) * A).sum(dtype=torch.float64).item()
        errors.append(_relative(num, denom))
        if best is None or errors[-1] < best[0]:
            best = (errors[-1], q, low_rank)
    assert best is not None
    best_error, q, low_rank = best
    factors = CalderaFactors(q_codes=q.codes, q_scales=q.scales, config=config, hadamard_seed=seed)
    if low_rank is not None:
        k = config.rank - config.float16_rank
        if low_rank.left is not None and low_rank.right is not None:
            factors.l_codes, factors.l_scales = low_rank.left.codes, low_rank.left.scales
            factors.r_codes, factors.r_scales = low_rank.right.codes, low_rank.right.scales
        if k < config.rank:
            factors.l_weight = low_rank.L[:, k:].to(torch.float16).contiguous()
            factors.r_weight = low_rank.R[k:].to(torch.float16).contiguous()
    return CalderaResult(factors=factors, errors=errors, best_error=best_error, rtn_error=rtn_error)


def _ldlq_q(target: torch.Tensor, ctx: _Context) -> Quantized:
    """The Q-step: LDLQ of `target` (m×n) under H with Q's quantizer (E8P: 8 columns at a time)."""
    cfg = ctx.config
    if cfg.quantizer == "e8p":
        from cola.compress.caldera.lattice import e8p_ldlq

        q = e8p_ldlq(target, ctx.hinv_u, ctx.e8p_scales)  # scales fitted once on W in `_decompose`: 8 encodings
        return Quantized(q.codes.to(torch.int16), q.scales, q.values)  # 16-bit codes, stored two's complement
    return ldlq(target, ctx.hinv_u, cfg.q_bits, cfg.quantizer, cfg.group_size)


def _rtn_values(W: torch.Tensor, config: CalderaConfig) -> torch.Tensor:
    """W (m×n) rounded to nearest by Q's scalar quantizer, dequantized (float32): the baseline of `rtn_error`."""
    codes, scales = quantize_rtn(W, config.q_bits, config.quantizer, config.group_size)
    return dequantize_codes(codes, scales, config.q_bits, config.quantizer)
