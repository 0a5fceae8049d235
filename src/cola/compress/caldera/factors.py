"""What CALDERA stores of one layer (`CalderaFactors`): codes, scales, float16 factors and the rotation seed,
and how codes are bit-packed for storage."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cola.compress.caldera.config import CalderaConfig
from cola.compress.caldera.hadamard import random_hadamard, rotation_seeds, to_original_basis
from cola.compress.quant import dequantize_codes
from cola.errors import ColaError

_CODE_KEYS = ("q_codes", "l_codes", "r_codes")  # uint8 (q_codes int16 under e8p: one 16-bit code per 8 weights)
_FLOAT_KEYS = ("q_scales", "l_scales", "r_scales", "l_weight", "r_weight", "u_signs", "v_signs")  # float16
_SEED_KEY = "hadamard_seed"                                            # int64, shape (1,)


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


def _code_bits(config: CalderaConfig, key: str) -> int:
    """The bits of one code stored under `key`: Q's (16 per group of 8 weights under e8p), or the low-rank
    factors'."""
    if key == "q_codes":
        return 16 if config.quantizer == "e8p" else config.q_bits
    return config.lr_bits


@dataclass
class CalderaFactors:
    """What is stored of one layer: codes, float16 scales and factors, and the rotation seed.

    Q has one scale per row per group of input columns (codes (m, n) uint8), or under e8p one scale per row and
    one int16 code per 8 weights (codes (m, n/8)). L (m×r) = [L codes | l_weight], R (r×n) = [R codes ; r_weight]:
    the first r − f components as codes (L one scale per row, R the grouping of Q), the last f = float16_rank in
    float16 (all r with lr_bits 16; none at rank 0). With a hadamard_seed, Q + L R lives in the rotated basis:
    Ŵ = Uᵀ (Q + L R) V; u_signs (m,) / v_signs (n,), when fine-tuned, replace the seed's ±1 signs of U and V.
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
    u_signs: torch.Tensor | None = None
    v_signs: torch.Tensor | None = None
    hadamard_seed: int | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features)."""
        per_code = 8 if self.config.quantizer == "e8p" else 1
        return int(self.q_codes.shape[0]), int(self.q_codes.shape[1]) * per_code

    def q_values(self) -> torch.Tensor:
        """Dense float32 Q (m×n) in the basis it was fitted in."""
        cfg = self.config
        if cfg.quantizer == "e8p":
            from cola.compress.caldera.lattice import e8p_dequantize

            return e8p_dequantize(self.q_codes, self.q_scales)
        return dequantize_codes(self.q_codes, self.q_scales, cfg.q_bits, cfg.quantizer)

    def low_rank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense float32 L (m×r) and R (r×n): the quantized components, then the float16 ones."""
        cfg = self.config
        lefts, rights = [], []
        if self.l_codes is not None and self.l_scales is not None and self.r_codes is not None \
                and self.r_scales is not None:
            lefts.append(dequantize_codes(self.l_codes, self.l_scales, cfg.lr_bits, cfg.lr_quantizer))
            rights.append(dequantize_codes(self.r_codes, self.r_scales, cfg.lr_bits, cfg.lr_quantizer))
        if self.l_weight is not None and self.r_weight is not None:
            lefts.append(self.l_weight.to(torch.float32))
            rights.append(self.r_weight.to(torch.float32))
        if not lefts:  # rank 0
            m, n = self.shape
            device = self.q_scales.device
            return torch.zeros(m, 0, device=device), torch.zeros(0, n, device=device)
        if len(lefts) == 1:
            return lefts[0], rights[0]
        return torch.cat(lefts, dim=1), torch.cat(rights, dim=0)

    def parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dense float32 Q (m×n), L (m×r), R (r×n), in the (possibly rotated) basis they were fitted in."""
        return (self.q_values(), *self.low_rank())

    def rotations(self) -> tuple[tuple[int, torch.Tensor | None], tuple[int, torch.Tensor | None]] | None:
        """((seed of U, its fine-tuned signs or None), (seed of V, its signs or None)), or None without a rotation."""
        if self.hadamard_seed is None:
            return None
        seed_u, seed_v = rotation_seeds(self.hadamard_seed)
        return (seed_u, self.u_signs), (seed_v, self.v_signs)

    def hadamard_matrices(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(U, V) of the rotation, m×m and n×n (orthogonal unless its signs were fine-tuned), or None without one."""
        rotations = self.rotations()
        if rotations is None:
            return None
        m, n = self.shape
        (seed_u, signs_u), (seed_v, signs_v) = rotations
        return random_hadamard(m, seed_u, signs_u), random_hadamard(n, seed_v, signs_v)

    def dequantize(self) -> torch.Tensor:
        """The dense Ŵ (m×n, float32) in the original basis of the layer."""
        q, left, right = self.parts()
        w = torch.addmm(q, left, right)
        rotations = self.rotations()
        if rotations is None:
            return w
        (seed_u, signs_u), (seed_v, signs_v) = rotations
        return to_original_basis(w, seed_u, seed_v, signs_u, signs_v).contiguous()

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
        bits = self.q_codes.numel() * _code_bits(cfg, "q_codes")
        bits += sum(t.numel() for t in (self.l_codes, self.r_codes) if t is not None) * cfg.lr_bits
        bits += sum(getattr(self, k).numel() * getattr(self, k).element_size() * 8
                    for k in _FLOAT_KEYS if getattr(self, k) is not None)
        m, n = self.shape
        return bits / (m * n)

    def _bits_of(self, key: str) -> int:
        return _code_bits(self.config, key)

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """The stored tensors under `prefix` + key, ready for safetensors; codes bit-packed at their width
        (a `<key>_shape` tensor says how to unpack them), so the file holds what bits_per_parameter counts."""
        out = {}
        for key, value in self.tensors().items():
            value = value.detach().cpu().contiguous()
            if key in _CODE_KEYS and value.dtype == torch.int16:  # e8p's codes: 16 bits each already
                out[prefix + key] = value
            elif key in _CODE_KEYS:
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
            if key in found and found[key].dtype != torch.int16:  # int16 (e8p) codes are stored unpacked
                shape = tuple(tensors[prefix + key + "_shape"].tolist())
                found[key] = unpack_codes(found[key], _code_bits(config, key), shape)
        return cls.from_tensors(found, config, where=repr(prefix))

    @classmethod
    def from_tensors(cls, found: dict[str, torch.Tensor], config: CalderaConfig, where: str = "") -> CalderaFactors:
        """Factors from unpacked tensors keyed as in `tensors()`; a missing part is a one-line error."""
        found = dict(found)
        if "q_codes" not in found or "q_scales" not in found:
            raise ColaError(f"no CALDERA factors under {where}: q_codes or q_scales is missing")
        needed = ("l_weight", "r_weight") if config.float16_rank else ()
        if config.rank > config.float16_rank:
            needed += ("l_codes", "l_scales", "r_codes", "r_scales")
        missing = [k for k in needed if k not in found]
        if missing:
            raise ColaError(f"the CALDERA factors under {where} lack {', '.join(missing)} (expected for rank="
                            f"{config.rank}, lr_bits={config.lr_bits}, finetune_rank={config.finetune_rank})")
        seed = found.pop(_SEED_KEY, None)
        return cls(config=config, hadamard_seed=int(seed.reshape(-1)[0]) if seed is not None else None, **found)
