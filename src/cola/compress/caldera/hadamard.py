"""The randomized Hadamard transform: the orthogonal rotation CALDERA's `hadamard=True` works in (as in QuIP#).

A rotation of size a·p (a a power of two, p odd) is a random sign flip, the Sylvester Hadamard matrix on the
power-of-two factor and a seeded random orthogonal matrix on the odd factor; it is regenerated from (size,
seed), so only the seed is stored.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


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


def rotate(x: torch.Tensor, seed: int, *, transpose: bool = False, signs: torch.Tensor | None = None) -> torch.Tensor:
    """Apply M = (H_a ⊗ O_p)/√a · diag(signs) to every row vector of x (x ↦ x Mᵀ), or Mᵀ (x ↦ x M).

    M is the randomized Hadamard transform of size x.shape[−1] = a·p (a a power of two, p odd): a sign
    flip, the Sylvester Hadamard matrix on the power-of-two factor and a seeded random orthogonal matrix
    on the odd factor. It is orthogonal and depends only on (size, seed). `signs` (dim,), when given, replaces
    the seed's ±1 signs (CALDERA's fine-tuned sign vectors; M is then orthogonal only for ±1 entries), and the
    result is differentiable in them.
    """
    dim = x.shape[-1]
    seeded, ortho = _hadamard_parts(dim, seed)
    signs = (seeded if signs is None else signs).to(x.device, x.dtype)
    a = dim & -dim
    p = dim // a
    if not transpose:
        x = x * signs
    y = _fwht(x.reshape(*x.shape[:-1], a, p))
    if ortho is not None:
        y = y @ (ortho.to(x.device, x.dtype) if transpose else ortho.to(x.device, x.dtype).T)
    y = y.reshape(x.shape) / math.sqrt(a)
    return y * signs if transpose else y


def to_original_basis(w: torch.Tensor, seed_u: int, seed_v: int, signs_u: torch.Tensor | None = None,
                      signs_v: torch.Tensor | None = None) -> torch.Tensor:
    """Uᵀ w V for w (m×n) in the rotated basis of a layer, U and V the rotations of sizes m and n made from
    `seed_u` and `seed_v` (with `signs_u`/`signs_v` in place of the seeds' signs when given; all-ones signs give
    the unsigned rotations). Differentiable in w and the signs."""
    w = rotate(w, seed_v, transpose=True, signs=signs_v)                                 # w V
    return rotate(w.transpose(0, 1).contiguous(), seed_u, transpose=True, signs=signs_u).transpose(0, 1)  # Uᵀ w V


def random_hadamard(dim: int, seed: int, signs: torch.Tensor | None = None) -> torch.Tensor:
    """The dense matrix M (dim×dim, float32) that `rotate(x, seed, signs=signs)` applies (orthogonal for the
    seed's signs)."""
    return rotate(torch.eye(dim), seed, signs=None if signs is None else signs.to(torch.float32)).T.contiguous()


def seeded_signs(dim: int, seed: int) -> torch.Tensor:
    """The ±1 signs (dim,), float32, of the rotation of size `dim` made from `seed`."""
    return _hadamard_parts(dim, seed)[0].clone()


def rotation_seeds(seed: int) -> tuple[int, int]:
    """Seeds of U (output side) and V (input side) of a layer rotated with `seed`."""
    return 2 * seed, 2 * seed + 1
