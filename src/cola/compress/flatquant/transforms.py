"""The pure math of FlatQuant (Sun et al., 2024, arXiv 2410.09426): Kronecker affine transforms, learnable clipping and
fake quantizers with a straight-through estimator, in plain torch.

Conventions (row vectors, as a Linear computes y = x Wᵀ):

* A transform of an n-wide input is P = P1 ⊗ P2 with P1 (n1×n1), P2 (n2×n2), n1·n2 = n (Sec. 3). `kron_apply(x,
  P1, P2)` reshapes x (..., n) row-major to X (..., n1, n2) and returns P1ᵀ · X · P2 reshaped back, which equals
  x · (P1 ⊗ P2) without forming the n×n matrix.
* Before P comes a learnable per-channel scaling c (n): the activation becomes x̃ = (x ⊙ c) · P, and the weight
  W' = (W / c) · P⁻ᵀ, row by row (offline), so x Wᵀ = x̃ W'ᵀ exactly (Sec. 3, "per-channel scaling"). The paper
  merges c into the preceding RMSNorm (or up_proj); here c stays an elementwise product in the online step, which is
  the same function and also serves o_proj, which has no norm before it.
* Clipping (Sec. 3, "learnable clipping thresholds"): a row's max and min are scaled by sigmoid(α_max),
  sigmoid(α_min), the logits initialised to the paper's 4 (ratio 0.982); None means no clipping (ratio 1).
* Quantizers: weights symmetric, one scale per output channel (codes in [-2^(b-1), 2^(b-1)-1], scale max|w| /
  (2^(b-1)-1), rounded to float16 as stored); activations symmetric, one scale per token, computed at run time;
  keys and values asymmetric per head and token (the paper's settings: W and A symmetric, `--k_asym --v_asym`).
  Rounding passes gradients straight through (STE).
"""

from __future__ import annotations

import math

import torch

CLIP_INIT = 4.0  # the paper's initial clipping logit: sigmoid(4) = 0.982


def kron_dims(n: int) -> tuple[int, int]:
    """(n1, n2) with n1·n2 = n and n1 ≤ n2 as close to √n as divisibility allows (576 -> (24, 24), 1536 -> (32, 48));
    a prime n gives (1, n): one dense n×n factor, still exact but with no Kronecker saving. Raises ValueError for
    n < 1."""
    if n < 1:
        raise ValueError(f"a transform needs a positive width, got {n}")
    n1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return n1, n // n1


def owned(tensor: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous float32 copy: modules built in memory and from disk then hold the same layouts, so their
    matmuls run the same kernels and give bit-identical outputs."""
    return tensor.detach().to(torch.float32).clone(memory_format=torch.contiguous_format)


def kron_apply(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """x · (left ⊗ right) for x (..., n1·n2), left (n1, n1), right (n2, n2): leftᵀ · X · right on x reshaped to
    (..., n1, n2); returns (..., n1·n2) in x's dtype. Raises RuntimeError when the widths do not match."""
    n1, n2 = left.shape[0], right.shape[0]
    shape = x.shape
    h = x.reshape(*shape[:-1], n1, n2)
    h = torch.matmul(left.T, torch.matmul(h, right))
    return h.reshape(shape)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (the straight-through estimator)."""
    return (x.round() - x).detach() + x


def clip_ratio(logits: torch.Tensor | None) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """(ratio of the max, ratio of the min) from clipping logits (..., 2) as sigmoid; (1, 1) for None."""
    if logits is None:
        return 1.0, 1.0
    ratios = torch.sigmoid(logits)
    return ratios[..., 0:1], ratios[..., 1:2]


def symmetric_max(bits: int) -> int:
    """The largest code of a symmetric `bits`-bit quantizer: 2^(bits-1) − 1 (codes span [−2^(bits-1), that])."""
    return 2 ** (bits - 1) - 1


def weight_scales(weight: torch.Tensor, bits: int, clip: torch.Tensor | None = None) -> tuple[torch.Tensor,
                                                                                            torch.Tensor]:
    """(clipped weight (m, n), scales (m, 1) float32 holding float16 values) of a symmetric per-output-channel
    quantizer: each row is clamped to [min·σ(α_min), max·σ(α_max)] (`clip` (m, 2) logits, or none), its scale is
    the clamped row's max |w| / (2^(bits-1) − 1), rounded to float16 as stored; a zero row gets scale 1. Gradients
    reach the weight and the clipping logits."""
    w = weight.to(torch.float32)
    high, low = clip_ratio(clip)
    wmax = w.amax(dim=1, keepdim=True).clamp_min(0) * high
    wmin = w.amin(dim=1, keepdim=True).clamp_max(0) * low
    w = torch.minimum(torch.maximum(w, wmin), wmax)
    absmax = torch.maximum(wmax, -wmin)
    scale = (absmax / symmetric_max(bits)).to(torch.float16).to(torch.float32)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return w, scale


def quantize_weight(weight: torch.Tensor, bits: int, clip: torch.Tensor | None = None) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """(codes (m, n) as float32 integers in [−2^(bits-1), 2^(bits-1) − 1], scales (m, 1)) of `weight` (m, n), per
    output channel and symmetric (`weight_scales`); codes · scales is the fake-quantized weight. Rounding is STE."""
    w, scale = weight_scales(weight, bits, clip)
    top = symmetric_max(bits)
    return torch.clamp(round_ste(w / scale), -top - 1, top), scale


def _clipped_range(x: torch.Tensor, clip: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x in float32, its max along the last axis with 0 included times σ(α_max), its min likewise), the two
    keeping x's shape with a last axis of 1: the range both activation quantizers share."""
    h = x.to(torch.float32)
    high, low = clip_ratio(clip)
    return (h, h.amax(dim=-1, keepdim=True).clamp_min(0) * high, h.amin(dim=-1, keepdim=True).clamp_max(0) * low)


def fake_quant_tokens(x: torch.Tensor, bits: int, clip: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric per-token fake quantization of x (..., n) along its last axis, scales computed from x itself
    (dynamic): max and min of each token (0 included) times σ(α) of `clip` (2,) logits or none, scale = max(|min|,
    max) / (2^(bits-1) − 1), zero tokens scale 1; returns x's shape in float32. `bits` 16 returns x unchanged."""
    if bits >= 16:
        return x
    h, xmax, xmin = _clipped_range(x, clip)
    top = symmetric_max(bits)
    scale = torch.maximum(xmax, -xmin) / top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.clamp(round_ste(h / scale), -top - 1, top) * scale


def fake_quant_asymmetric(x: torch.Tensor, bits: int, clip: torch.Tensor | None = None) -> torch.Tensor:
    """Asymmetric fake quantization of x (..., d) along its last axis (per head and token for keys and values of
    shape (batch, heads, tokens, head_dim)): range [min·σ(α_min), max·σ(α_max)] (0 included), scale = range /
    (2^bits − 1), zero point round(−min / scale), codes in [0, 2^bits − 1]; float32 out. `bits` 16: x unchanged."""
    if bits >= 16:
        return x
    h, xmax, xmin = _clipped_range(x, clip)
    top = 2 ** bits - 1
    flat = (xmax - xmin) <= 0
    scale = torch.where(flat, torch.full_like(xmax, 2.0 / top), (xmax - xmin) / top)
    zero = torch.round(torch.where(flat, torch.ones_like(xmin), -xmin) / scale).detach()
    codes = torch.clamp(round_ste(h / scale) + zero, 0, top)
    return (codes - zero) * scale


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random orthogonal n×n float32 matrix (QR of a Gaussian, signs fixed: Haar-distributed), the paper's
    initialisation of every transform factor."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(torch.float32).contiguous()


def smooth_scales(weight_absmax: torch.Tensor, input_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant-style per-channel scales c (n) = max|W_:,j|^(1−α) / max|x_j|^α, at least 1e-5: the paper's
    initialisation of the per-channel scaling (`--diag_init sq_style`, α = 0.3), x ⊙ c then flattening outlier
    channels. Inputs are (n) absolute maxima over the output channels and the calibration tokens."""
    return (weight_absmax.clamp_min(1e-5).pow(1 - alpha) / input_absmax.clamp_min(1e-5).pow(alpha)).clamp_min(1e-5)


class InputTransform(torch.nn.Module):
    """The online transform of one Linear input, shared by the layers reading it (q/k/v; gate/up), with that input's
    activation quantizer (Sec. 3, the method): x (..., n) -> Q_a((x ⊙ c) · (P1 ⊗ P2)).

    Parameters (float32): `left` P1 (n1, n1), `right` P2 (n2, n2) (`kron_dims`), `scale` c (n), and `act_clip`
    (2,) logits of the activation clipping or None. P1, P2 are trained directly, their inverses taken with
    torch.linalg.inv (the paper's `--direct_inv` form). `bits` ≥ 16 leaves activations unquantized.
    """

    def __init__(self, n: int, bits: int, *, left: torch.Tensor | None = None, right: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None, act_clip: torch.Tensor | None = None) -> None:
        super().__init__()
        n1, n2 = kron_dims(n)
        self.in_features, self.bits = n, bits
        self.left = torch.nn.Parameter(torch.eye(n1) if left is None else owned(left),
                                       requires_grad=False)
        self.right = torch.nn.Parameter(torch.eye(n2) if right is None else owned(right),
                                        requires_grad=False)
        self.scale = torch.nn.Parameter(torch.ones(n) if scale is None else owned(scale),
                                        requires_grad=False)
        self.act_clip = None if act_clip is None else torch.nn.Parameter(owned(act_clip),
                                                                          requires_grad=False)
        self._last: tuple[torch.Tensor, tuple, torch.Tensor] | None = None  # (input, versions, output), not state
        self._reuse = False
        if self.left.shape != (n1, n1) or self.right.shape != (n2, n2) or self.scale.shape != (n,):
            raise ValueError(f"a transform of width {n} needs factors {n1}x{n1} and {n2}x{n2} and {n} scales")

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """(x ⊙ c) · (P1 ⊗ P2) for x (..., n), in float32, before quantization."""
        return kron_apply(x.to(torch.float32) * self.scale, self.left, self.right)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The transformed input, fake-quantized per token (`fake_quant_tokens`): (..., n) float32.

        While training (`reuse(True)`), the layers sharing the transform call it on the same tensor one after another
        (q, k, v): the result for the last input is kept and returned again while that tensor, the parameters and the
        grad mode are unchanged, so the shared input is transformed and quantized once per forward."""
        if not self._reuse:
            return fake_quant_tokens(self.transform(x), self.bits, self.act_clip)
        key = (x._version, torch.is_grad_enabled(), *(p._version for p in self.parameters()))
        if self._last is not None and self._last[0] is x and self._last[1] == key:
            return self._last[2]
        out = fake_quant_tokens(self.transform(x), self.bits, self.act_clip)
        self._last = (x, key, out)
        return out

    def reuse(self, enabled: bool) -> None:
        """Keep (enabled) or stop keeping and drop the result for the last input (see `forward`)."""
        self._reuse, self._last = enabled, None

    def weight_to_transformed(self, weight: torch.Tensor) -> torch.Tensor:
        """W' = (W / c) · P⁻ᵀ for W (m, n): the weight that reads the transformed input, in W's dtype (float64 for an
        exact offline merge, float32 while training; differentiable)."""
        dtype = weight.dtype
        left_inv = torch.linalg.inv(self.left.to(dtype)).T
        right_inv = torch.linalg.inv(self.right.to(dtype)).T
        return kron_apply(weight / self.scale.to(dtype), left_inv, right_inv)

    def weight_to_original(self, weight: torch.Tensor) -> torch.Tensor:
        """W = (W' · Pᵀ) ⊙ c for W' (m, n): a transformed weight mapped back to read the original input (the inverse of
        `weight_to_transformed`), in W's dtype."""
        dtype = weight.dtype
        return kron_apply(weight, self.left.T.to(dtype), self.right.T.to(dtype)) * self.scale.to(dtype)

    def trainable(self, clipping: bool) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """Turn on training: ([P1, P2, c], [activation clipping logits, created at the paper's 4 if `clipping` and
        absent and the activation is quantized])."""
        if clipping and self.act_clip is None and self.bits < 16:
            self.act_clip = torch.nn.Parameter(torch.full((2,), CLIP_INIT, device=self.scale.device))
        main = [self.left, self.right, self.scale]
        clips = [self.act_clip] if self.act_clip is not None else []
        for p in main + clips:
            p.requires_grad_(True)
        return main, clips

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, kron={tuple(self.left.shape)}x{tuple(self.right.shape)}, "
                f"bits={self.bits}, clip={self.act_clip is not None}")


class KVQuantizer(torch.nn.Module):
    """Fake quantization of one attention layer's keys (after RoPE) and values, asymmetric per head and token, with
    the paper's per-head transforms (Sec. 3, P_h): q · P_k⁻ᵀ and k · P_k (so q kᵀ is unchanged), v · P_v with the
    attention output multiplied by P_v⁻¹ (the paper merges P_v into v_proj and o_proj; here it stays online).

    Parameters (float32): `k_transform`, `v_transform` (head_dim, head_dim), `k_clip`, `v_clip` (2,) logits or None.
    Queries, keys and values are (batch, heads, tokens, head_dim).
    """

    def __init__(self, head_dim: int, bits: int, *, k_transform: torch.Tensor | None = None,
                 v_transform: torch.Tensor | None = None, k_clip: torch.Tensor | None = None,
                 v_clip: torch.Tensor | None = None) -> None:
        super().__init__()
        self.head_dim, self.bits = head_dim, bits

        def param(value: torch.Tensor | None, default: torch.Tensor | None) -> torch.nn.Parameter | None:
            value = default if value is None else value
            return None if value is None else torch.nn.Parameter(owned(value), requires_grad=False)

        self.k_transform = param(k_transform, torch.eye(head_dim))
        self.v_transform = param(v_transform, torch.eye(head_dim))
        self.k_clip, self.v_clip = param(k_clip, None), param(v_clip, None)

    def queries_keys(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q · P_k⁻ᵀ, Q_kv(k · P_k)) in float32."""
        p = self.k_transform
        q = torch.matmul(q.to(torch.float32), torch.linalg.inv(p).T)
        return q, fake_quant_asymmetric(torch.matmul(k.to(torch.float32), p), self.bits, self.k_clip)

    def values(self, v: torch.Tensor) -> torch.Tensor:
        """Q_kv(v · P_v) in float32."""
        return fake_quant_asymmetric(torch.matmul(v.to(torch.float32), self.v_transform), self.bits, self.v_clip)

    def output(self, out: torch.Tensor) -> torch.Tensor:
        """The attention output (..., head_dim) mapped back: out · P_v⁻¹, float32."""
        return torch.matmul(out.to(torch.float32), torch.linalg.inv(self.v_transform))

    def trainable(self, clipping: bool) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """Turn on training: ([P_k, P_v], [clipping logits of keys and values, created at the paper's 4 if absent and
        `clipping`])."""
        if clipping:
            device = self.k_transform.device
            for key in ("k_clip", "v_clip"):
                if getattr(self, key) is None:
                    setattr(self, key, torch.nn.Parameter(torch.full((2,), CLIP_INIT, device=device)))
        main = [self.k_transform, self.v_transform]
        clips = [p for p in (self.k_clip, self.v_clip) if p is not None]
        for p in main + clips:
            p.requires_grad_(True)
        return main, clips

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, bits={self.bits}, clip={self.k_clip is not None}"
