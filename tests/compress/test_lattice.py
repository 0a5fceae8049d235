"""E8P (QuIP#'s E8P12 lattice codebook): the codebook's definition and index layout, exact nearest-codeword
encoding, the row-scaled quantizer against scalar 2-bit, BlockLDLQ against round-to-nearest and an OBS
reference, errors and storage."""

from __future__ import annotations

import pytest
import torch

from cola.compress import quant
from cola.compress.caldera import lattice
from cola.compress.caldera.lattice import (
    e8p_bits_per_parameter,
    e8p_codebook,
    e8p_decode,
    e8p_dequantize,
    e8p_encode,
    e8p_fit_scales,
    e8p_ldlq,
    e8p_quantize_rtn,
)
from cola.errors import ColaError

CODES = torch.arange(2**16)


@pytest.fixture(scope="module")
def book() -> torch.Tensor:
    return e8p_codebook()


def brute_force_distances(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """‖x − c‖² (N, 65536) in float64, for a few hundred vectors at a time."""
    x, book = x.double(), book.double()
    return torch.cat([(xs.square().sum(1, keepdim=True) - 2 * xs @ book.T + book.square().sum(1))
                      for xs in x.split(250)])


def problem(seed: int, m: int = 32, n: int = 192, tokens: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """W gaussian; H = XᵀX of correlated, anisotropic activations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g) / n**0.5
    X = (torch.randn(tokens, n, generator=g) * torch.logspace(0, -1, n)) @ mix
    return torch.randn(m, n, generator=g), X.T @ X


def hessian_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    E = (W - Q).double()
    return ((E @ H.double()) * E).sum().item()


# ------------------------------------------------------------------------------------------ the codebook


def test_codebook_is_2_to_16_distinct_points_of_e8_shifted_by_a_quarter(book) -> None:
    assert book.shape == (65536, 8) and book.dtype == torch.float32
    assert torch.unique(book, dim=0).shape[0] == 65536
    quarters = book * 4
    assert torch.equal(quarters, quarters.round()) and (quarters.round().long() % 2 == 1).all()  # odd · ¼
    assert book.abs().max().item() == 2.75 and book.square().mean().sqrt().item() == lattice.CODEBOOK_RMS
    v2 = (book - 0.25) * 2                     # 2(c − ¼) ∈ 2·E8: all even (D8) or all odd (D8 + ½) integers
    assert torch.equal(v2, v2.round())
    parity = v2.round().long() % 2
    assert ((parity == 0).all(1) | (parity == 1).all(1)).all()
    assert ((v2.sum(1).round().long() // 2) % 2 == 0).all()        # the coordinate sum of c − ¼ is even
    # the codebook is centred: each sign pattern comes with its negation, up to the shift
    assert torch.equal(torch.unique(-book, dim=0), torch.unique(book, dim=0))


def test_index_layout_abs_pattern_shift_and_signs(book) -> None:
    shift = 0.25 - 0.5 * ((CODES >> 7) & 1).float()                  # bit 7: +¼ or −¼
    v = book - shift.unsqueeze(1)                                    # in D8 + ½
    assert torch.equal(v * 2 % 2, torch.ones_like(v))                # half-odd integers
    assert ((v.sum(1).round().long()) % 2 == 0).all()                # even sum: the parity rule
    negative = (CODES.unsqueeze(1) >> torch.arange(7)) & 1          # bits 0..6: signs of coordinates 0..6
    assert torch.equal((v[:, :7] < 0).long(), negative)
    patterns = v.abs().reshape(256, 256, 8)                          # bits 15..8: the abs pattern
    assert torch.equal(patterns, patterns[:, :1].expand(-1, 256, -1))
    A = patterns[:, 0]                                               # (256, 8)
    assert torch.unique(A, dim=0).shape[0] == 256
    norms = A.square().sum(1)
    # QuIP#: all 227 abs patterns of D8 + ½ with norm² ≤ 10, then 29 of norm² 12 (five 3⁄2, three ½)
    assert (norms[:227] <= 10).all() and (norms[227:] == 12).all()
    assert ((A[227:] == 1.5).sum(1) == 5).all() and ((A[227:] == 0.5).sum(1) == 3).all()
    grid = torch.cartesian_prod(*[torch.tensor([0.5, 1.5, 2.5, 3.5])] * 8)
    assert (grid.square().sum(1) <= 10).sum().item() == 227
    assert torch.equal(A[:227], grid[grid.square().sum(1) <= 10])   # lexicographic order
    # per pattern: 2^7 sign patterns × 2 shifts; the codeword norm is ‖a‖² ± Σa/2 + ½
    assert torch.allclose(book.square().sum(1), norms.repeat_interleave(256) + shift * 2 * v.sum(1) + 0.5)


# ------------------------------------------------------------------------------------------ encoding


@pytest.mark.parametrize("scale", [0.2, 1.0, 3.0])
def test_encode_is_the_exact_nearest_codeword(book, scale: float) -> None:
    x = torch.randn(1000, 8, generator=torch.Generator().manual_seed(int(scale * 10))) * scale
    codes = e8p_encode(x)
    assert codes.dtype == torch.int32 and codes.shape == (1000,)
    d = brute_force_distances(x, book)
    ours = d.gather(1, codes.long().unsqueeze(1)).squeeze(1)
    assert (ours - d.min(1).values).max().item() < 1e-5 * (1 + scale**2)
    assert (codes.long() == d.argmin(1)).float().mean().item() > 0.998   # ties aside


def test_the_exhaustive_fallback_is_exact_too(book, monkeypatch) -> None:
    """Loosened bounds leave every vector unsure, so each is searched over all 512 (shift, pattern) pairs."""
    tight = lattice._lower_bounds

    def loose(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ys, bound = tight(*args)
        return ys, bound - 100

    monkeypatch.setattr(lattice, "_lower_bounds", loose)
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(1)) * 1.5
    d = brute_force_distances(x, book)
    ours = d.gather(1, e8p_encode(x).long().unsqueeze(1)).squeeze(1)
    assert (ours - d.min(1).values).max().item() < 1e-4


def test_the_lower_bounds_are_valid_and_mostly_tight() -> None:
    """The bound of every (shift, pattern) pair is ≤ its exact distance, and equal for most pairs."""
    A, parity = lattice._abs_patterns(torch.device("cpu"))
    x = torch.randn(1000, 8, generator=torch.Generator().manual_seed(8))
    ys, bound = lattice._lower_bounds(x, A, parity)
    exact = lattice._exact(ys, torch.arange(512).expand(1000, 512), A, parity)
    assert (bound <= exact + 1e-5).all()
    assert ((exact - bound).abs() < 1e-5).float().mean().item() > 0.9


def test_every_code_round_trips(book) -> None:
    assert torch.equal(e8p_decode(CODES), book)
    assert torch.equal(e8p_decode(CODES.to(torch.int16)), book)       # int16 storage, two's complement
    assert torch.equal(e8p_encode(book), CODES.to(torch.int32))
    assert torch.equal(e8p_decode(CODES.reshape(256, 256)), book.reshape(256, 256, 8))


def test_encode_rejects_other_shapes() -> None:
    with pytest.raises(ColaError, match=r"^E8P encodes vectors of shape \(N, 8\), got \(3, 4\)$"):
        e8p_encode(torch.zeros(3, 4))


# ------------------------------------------------------------------------------------------ quantizers


def test_e8p_beats_scalar_2_bit_on_gaussian_weights() -> None:
    """Measured: E8P 0.0916 vs 0.1190 for cola's uniform 2-bit (both with a fitted float16 scale per row)."""
    W = torch.randn(256, 512, generator=torch.Generator().manual_seed(0))
    codes, scales = e8p_quantize_rtn(W)
    assert codes.shape == (256, 64) and codes.dtype == torch.int32 and scales.shape == (256, 1)
    assert scales.dtype == torch.float16 and 0 <= codes.min() and codes.max() < 2**16
    e8p = (e8p_dequantize(codes, scales) - W).square().mean().item()
    c, s = quant.quantize_rtn(W, 2, "uniform")
    scalar = (quant.dequantize_codes(c, s, 2, "uniform") - W).square().mean().item()
    assert 0.088 < e8p < 0.095 and 0.115 < scalar < 0.123
    assert e8p < 0.8 * scalar


def test_fitted_scales_beat_the_starting_scale_and_handle_zero_rows() -> None:
    g = torch.Generator().manual_seed(7)
    chi2 = torch.randn(3, 32, 256, generator=g).square().mean(0)
    W = torch.randn(32, 256, generator=g) / chi2.sqrt()      # Student-t, 3 dof: heavy tails
    W[3] = 0
    scale = e8p_fit_scales(W)
    assert scale.shape == (32, 1) and torch.equal(scale, scale.half().float())
    start = quant.fp16_round(W.square().mean(1, keepdim=True).sqrt() / lattice.CODEBOOK_RMS)
    fitted_err = (lattice._dequant_rows(W, scale) - W).square().sum(1)
    start_err = (lattice._dequant_rows(W, start.clamp_min(2**-24)) - W).square().sum(1)
    assert (fitted_err <= start_err).all() and fitted_err.sum() < 0.97 * start_err.sum()
    assert scale[3].item() == 2**-24 and fitted_err[3].item() < 1e-12


def test_ldlq_with_identity_hessian_is_round_to_nearest() -> None:
    W = torch.randn(24, 192, generator=torch.Generator().manual_seed(2))
    hinv_u = quant.hinv_upper(quant.damped_cholesky(torch.eye(192), 0.01))
    q = e8p_ldlq(W, hinv_u)
    codes, scales = e8p_quantize_rtn(W)
    assert torch.equal(q.codes, codes) and torch.equal(q.scales, scales)
    assert q.codes.dtype == torch.int32 and q.values.dtype == torch.float32 and q.values.shape == W.shape
    assert torch.allclose(q.values, e8p_dequantize(codes, scales))


def test_ldlq_lowers_the_activation_error_of_round_to_nearest() -> None:
    W, H = problem(seed=3)
    q = e8p_ldlq(W, quant.hinv_upper(quant.damped_cholesky(H, 0.01)))
    rtn = e8p_dequantize(*e8p_quantize_rtn(W))
    assert hessian_error(W, q.values, H) < 0.7 * hessian_error(W, rtn, H)


def test_ldlq_is_the_block_obs_update() -> None:
    """Against an unbatched float64 reference that compensates each 8-column block's error E on the later
    columns r by E (H_F⁻¹)_bb⁻¹ (H_F⁻¹)_br, H_F⁻¹ the inverse of the damped Hessian on the columns F not
    yet coded: the optimal update, which the Cholesky form E U_bb⁻¹ U_br must reproduce."""
    W, H = problem(seed=4, m=16)
    chol = quant.damped_cholesky(H, 0.01)
    q = e8p_ldlq(W, quant.hinv_upper(chol))
    Hd, Wr, scale = chol @ chol.T, W.double().clone(), q.scales.double()
    codes = torch.empty_like(q.codes)
    for k in range(0, W.shape[1], 8):
        Hinv = torch.linalg.inv(Hd[k:, k:])
        codes[:, k // 8] = e8p_encode((Wr[:, k:k + 8] / scale).float())
        E = Wr[:, k:k + 8] - e8p_decode(codes[:, k // 8]).double() * scale
        Wr[:, k + 8:] -= E @ torch.linalg.solve(Hinv[:8, :8], Hinv[:8, 8:])
    assert (codes == q.codes).float().mean().item() > 0.99
    assert hessian_error(W, q.values, H) == pytest.approx(hessian_error(W, e8p_dequantize(codes, q.scales), H),
                                                          rel=1e-3)


def test_inputs_whose_size_is_not_a_multiple_of_8_are_refused() -> None:
    message = r"^E8P needs the input size to be a multiple of 8, got n=12$"
    for call in (lambda: e8p_quantize_rtn(torch.zeros(4, 12)), lambda: e8p_ldlq(torch.zeros(4, 12), torch.eye(12)),
                 lambda: e8p_fit_scales(torch.zeros(4, 12)), lambda: e8p_bits_per_parameter(4, 12)):
        with pytest.raises(ColaError, match=message):
            call()


def test_bits_per_parameter() -> None:
    assert e8p_bits_per_parameter(64, 128) == 2 + 16 / 128 == 2.125
    assert e8p_bits_per_parameter(3, 8) == 4.0                       # 16 code bits + 16 scale bits per 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_follows_the_input_device(book) -> None:
    x = torch.randn(5000, 8, generator=torch.Generator().manual_seed(5)) * 1.2
    codes = e8p_encode(x.cuda())
    assert codes.device.type == "cuda"
    assert (codes.cpu() == e8p_encode(x)).float().mean().item() > 0.999
    assert torch.equal(e8p_decode(CODES.cuda()).cpu(), book)
    W, H = problem(seed=6)
    q = e8p_ldlq(W.cuda(), quant.hinv_upper(quant.damped_cholesky(H, 0.01)).cuda())
    assert q.values.device.type == "cuda" and q.codes.device.type == "cuda"
    cpu = e8p_ldlq(W, quant.hinv_upper(quant.damped_cholesky(H, 0.01)))
    assert hessian_error(W, q.values.cpu(), H) == pytest.approx(hessian_error(W, cpu.values, H), rel=0.02)
