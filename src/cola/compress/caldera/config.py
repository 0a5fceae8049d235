"""CALDERA's settings: bits, rank and iterations of one run (the same for every layer), checked at construction."""

from __future__ import annotations

from dataclasses import dataclass

from cola.compress.base import QUANT_BITS, QUANTIZERS, MethodConfig, at_least_one, group_size_option, resolve_group_size
from cola.errors import ColaError
from cola.settings import option

LR_BITS = (*QUANT_BITS, 16)


@dataclass(frozen=True, kw_only=True)
class CalderaConfig(MethodConfig):
    """Bits, rank and iterations of one CALDERA run (the same for every layer); `damp` and `seed` are kept off
    the command line (a fraction of the mean Hessian diagonal; the seed of the randomized SVD and rotation)."""

    q_bits: int = option(2, help="CALDERA: bits of the backbone Q", choices=QUANT_BITS)
    lr_bits: int = option(4, help="CALDERA: bits of the low-rank factors L and R (16 = float16)", choices=LR_BITS)
    rank: int = option(16, help="CALDERA: rank of L R")
    iters: int = option(10, help="CALDERA: outer alternating-minimization iterations")
    group_size: int | None = group_size_option()
    quantizer: str = option("uniform", help="CALDERA: quantizer of Q", choices=QUANTIZERS)
    hadamard: bool = option(False, help="CALDERA: randomized Hadamard incoherence processing")
    hessian_cache: str | None = option(None, help="CALDERA: a directory for the dense model's Hessians on this "
                                              "calibration set: read when it holds them (no statistics pass), "
                                              "else computed and saved there for later runs with other ranks or "
                                              "bits",
                                       shown="none: each block calibrated on the compressed blocks before it")
    damp: float = option(0.01, help="CALDERA: Hessian damping, a fraction of its mean diagonal", cli=False)
    seed: int = option(0, help="CALDERA: seed of the randomized SVD and of the Hadamard rotation", cli=False)

    def check(self) -> None:
        at_least_one(self, "rank", "iters", "group_size")
        if not self.damp > 0:
            raise ColaError(f"damp must be positive (a fraction of the mean Hessian diagonal), got {self.damp}")


def check_layer(config: CalderaConfig, out_features: int, in_features: int) -> None:
    """Refuse (ColaError, one line) a rank larger than an out_features x in_features layer allows, or a group
    size that does not divide its input columns."""
    if config.rank > min(out_features, in_features):
        raise ColaError(f"rank {config.rank} is larger than layer {out_features}x{in_features} allows "
                        f"(min(out,in)={min(out_features, in_features)})")
    if config.group_size is not None:
        resolve_group_size([in_features], config.group_size)
