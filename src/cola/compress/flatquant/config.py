"""FlatQuant's settings (Sun et al., 2024, arXiv 2410.09426): bits of weights, activations and the KV cache, and the
block-wise training of the transforms, checked at construction."""

from __future__ import annotations

from dataclasses import dataclass

from cola.compress.base import QUANT_BITS, MethodConfig, seed_option
from cola.errors import ColaError
from cola.settings import option

ACT_BITS = (4, 8, 16)  # 16: not quantized
KV_BITS = (4, 8, 16)
INITS = ("orthogonal", "identity")
# the paper trains 15 epochs; on 2 CPU cores one epoch of SmolLM2-135M (30 blocks, 128x512 tokens) costs about an hour
# (a block's forward and backward through the fake quantizers, 32 steps of 4 samples), so the default trains a quarter
# of the set per block (8 steps), which keeps the whole run near 25 min
DEFAULT_EPOCHS = 0.25
PAPER_LR = 5e-3


@dataclass(frozen=True, kw_only=True)
class FlatQuantConfig(MethodConfig):
    """Bits and training of one FlatQuant run (the same for every layer); `seed` and `diag_alpha` are kept off the
    command line (the seed of the random orthogonal initialisation; SmoothQuant's migration strength of the
    per-channel scaling's initialisation, the paper's 0.3).

    `epochs` 0 trains nothing and uses identity transforms without clipping: plain round-to-nearest W`w_bits`
    A`a_bits` with exactly the same fake quantizers, the baseline FlatQuant is compared with.

    Raises ColaError (one line) on bits FlatQuant does not support (naming the valid choices), a negative
    `epochs` or a learning rate that is not positive.
    """

    summary_fields = ("w_bits", "a_bits", "kv_bits", "epochs", "lr", "transform_init")

    w_bits: int = option(4, help="FlatQuant: weight bits (symmetric, one float16 scale per output channel)",
                         choices=QUANT_BITS)
    a_bits: int = option(4, help="FlatQuant: activation bits of every Linear's input (symmetric, per token, "
                                 "dynamic; 16 = not quantized)", choices=ACT_BITS)
    kv_bits: int = option(16, help="FlatQuant: KV-cache bits (keys after RoPE and values, asymmetric, per head and "
                                   "token; 16 = not quantized)", choices=KV_BITS)
    epochs: float = option(DEFAULT_EPOCHS, help="FlatQuant: passes over the calibration set training each decoder "
                                                "block's transforms and clipping against the dense block's outputs, "
                                                "in steps of 4 samples; a fraction trains on that fraction of the "
                                                "samples, spread over the set (the paper: 15; the default keeps "
                                                "SmolLM2-135M near 25 min on 2 CPU cores); 0: no training, identity "
                                                "transforms and no clipping, i.e. plain RTN with the same fake "
                                                "quantization (the baseline)")
    lr: float = option(PAPER_LR, help="FlatQuant: AdamW learning rate of the transforms and per-channel scales, "
                                      "cosine-annealed to lr/1000 (the paper's 5e-3); the clipping thresholds "
                                      "train at 10x (the paper's)")
    transform_init: str = option("orthogonal", help="FlatQuant: initialisation of the trained transforms: the "
                                                    "paper's random orthogonal Kronecker factors with SmoothQuant-"
                                                    "style per-channel scales, or identity (unused with --epochs 0, "
                                                    "which is identity)", choices=INITS)
    diag_alpha: float = option(0.3, help="FlatQuant: migration strength of the SmoothQuant-style initial "
                                         "per-channel scales", cli=False)
    seed: int = seed_option()

    def check(self) -> None:
        if self.epochs < 0:
            raise ColaError(f"--epochs must be 0 (no training: plain RTN) or positive, got {self.epochs}")
        if not self.lr > 0:
            raise ColaError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.diag_alpha <= 1.0:
            raise ColaError(f"diag_alpha must lie in [0, 1], got {self.diag_alpha}")

    @property
    def trained(self) -> bool:
        """Whether transforms and clipping are trained (epochs > 0); untrained means identity and no clipping."""
        return self.epochs > 0

    @property
    def label(self) -> str:
        """'W4A4 KV16': the bits in the paper's notation."""
        return f"W{self.w_bits}A{self.a_bits} KV{self.kv_bits}"
