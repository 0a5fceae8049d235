"""CALDERA's settings: bits, rank and iterations of one run (the same for every layer), checked at construction."""

from __future__ import annotations

from dataclasses import dataclass

from cola.compress.base import (QUANT_BITS, QUANTIZERS, MethodConfig, at_least_one, group_size_option, in_unit_interval,
                                resolve_group_size, seed_option)
from cola.errors import ColaError
from cola.settings import option

LR_BITS = (*QUANT_BITS, 16)
CALDERA_QUANTIZERS = (*QUANTIZERS, "e8p")  # e8p: cola.compress.caldera.lattice, for Q
# --preset -> (rank, float16 components), with every other setting at its default (E8P Q, rotation, L and R at 4
# bits except the float16 components, fine-tuned 16 steps): the name is its bits per parameter on SmolLM2-135M,
# each measured in the README's table; 2.4 is the best of the rank/float16 splits measured at <= 2.4 bits
PRESETS = {"2.1": (4, 1), "2.2": (8, 2), "2.4": (24, 2)}
DEFAULT_PRESET = "2.4"
FINETUNE_STEPS = 16  # the default where a float16 component (or the signs) can be trained


@dataclass(frozen=True, kw_only=True)
class CalderaConfig(MethodConfig):
    """Bits, rank and iterations of one CALDERA run (the same for every layer); `damp` and `seed` are kept off
    the command line (a fraction of the mean Hessian diagonal; the seed of the randomized SVD and rotation).

    The defaults are the 2.4 preset (2.39 bits/param on SmolLM2-135M): E8P lattice Q, randomized Hadamard
    rotation, rank 24 with L and R at 4 bits except their last 2 components, kept in float16 and fine-tuned for
    16 steps per block. Fields left None are filled at construction by these rules: `rank` and `finetune_rank`
    from `preset` (the defaults: 2.4) where the rank is not given, `quantizer` e8p where Q has 2 bits and no group
    size (else uniform), `finetune_rank` a quarter of a given rank rounded up (0 with `finetune_steps` 0),
    `finetune_steps` 16 where something can be trained (else 0).

    Raises ColaError (one line) on a value out of range, a combination that cannot run, or a `rank` or
    `finetune_rank` contradicting the `preset` given.
    """

    summary_fields = ("preset", "quantizer", "q_bits", "rank", "lr_bits", "finetune_rank", "finetune_steps",
                      "hadamard", "iters", "hessian_cache")

    preset: str | None = option(None, help="CALDERA: a measured setting by its bits per parameter on SmolLM2-135M "
                                           "(the rank and the float16 components; every other flag at its "
                                           "default); the defaults are 2.4",
                                choices={name: f"rank {rank}, {float16} in float16"
                                         for name, (rank, float16) in PRESETS.items()},
                                shown="none, the defaults being 2.4")
    q_bits: int = option(2, help="CALDERA: bits of the backbone Q (e8p: 2)", choices=QUANT_BITS)
    lr_bits: int = option(4, help="CALDERA: bits of the low-rank factors L and R (16 = float16)", choices=LR_BITS)
    rank: int | None = option(None, help="CALDERA: rank of L R (0: Q alone, QuIP#-style)", shown="24, or --preset's")
    iters: int = option(5, help="CALDERA: outer alternating-minimization iterations")
    group_size: int | None = group_size_option()
    quantizer: str | None = option(None, help="CALDERA: quantizer of Q (e8p: QuIP#'s E8 lattice codebook, 2 bits; L "
                                              "and R then use uniform)", choices=CALDERA_QUANTIZERS,
                                   shown="e8p with --q_bits 2 and no --group_size, else uniform")
    hadamard: bool = option(True, help="CALDERA: randomized Hadamard incoherence processing")
    hessian_cache: str | None = option(None, help="CALDERA: a directory for the dense model's Hessians on this "
                                              "calibration set: read when it holds them (no statistics pass), "
                                              "else computed and saved there for later runs with other ranks or "
                                              "bits (default: none, each block calibrated on the compressed "
                                              "blocks before it)")
    finetune_rank: int | None = option(None, help="CALDERA: components of L and R kept in float16 instead of "
                                                  "--lr_bits codes (the last ones; all of them with --lr_bits 16): "
                                                  "what --finetune_steps trains",
                                       shown="2, or --preset's; a quarter of a --rank given; 0 with "
                                             "--finetune_steps 0")
    finetune_steps: int | None = option(None, help="CALDERA: optimizer steps per decoder block fitting the float16 "
                                                   "components (and with --finetune_signs the rotation's signs) to "
                                                   "the dense block's outputs on the calibration set; 0: no "
                                                   "fine-tuning", shown=f"{FINETUNE_STEPS} where there is something "
                                                                        "to train, else 0")
    finetune_lr: float = option(1e-3, help="CALDERA: Adam learning rate of the fine-tuning")
    finetune_holdout: float = option(0.125, help="CALDERA: fraction of the calibration samples held out of the "
                                                 "fine-tuning to pick its best step (at least one sample)")
    finetune_signs: bool = option(False, help="CALDERA: also train the Hadamard rotation's sign vectors (stored as "
                                              "float16 scales; needs --hadamard)")
    damp: float = option(0.01, help="CALDERA: Hessian damping, a fraction of its mean diagonal", cli=False)
    seed: int = seed_option()

    def __post_init__(self) -> None:
        """Fill the fields left None by the rules above (frozen: set once, during construction), then check."""
        def fill(name: str, value: object) -> None:
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

        rank, float16 = PRESETS.get(self.preset or DEFAULT_PRESET, PRESETS[DEFAULT_PRESET])
        if self.preset in PRESETS:
            for name, value, given in (("rank", rank, self.rank), ("finetune_rank", float16, self.finetune_rank)):
                if given not in (None, value) and not (name == "finetune_rank" and given == 0 == self.finetune_steps):
                    raise ColaError(f"--preset {self.preset} is rank {rank} with {float16} float16 components; "
                                    f"--{name} {given} contradicts it: give one of them")
        from_preset = self.rank is None
        fill("rank", rank)
        fill("quantizer", "e8p" if self.q_bits == 2 and self.group_size is None else "uniform")
        if isinstance(self.rank, int):
            components = float16 if from_preset else -(-self.rank // 4)  # the preset's, or a quarter of the rank
            fill("finetune_rank", components if self.rank > 0 and self.finetune_steps != 0 else 0)
            trainable = self.rank if self.lr_bits == 16 else self.finetune_rank
            fill("finetune_steps", FINETUNE_STEPS if trainable or (self.finetune_signs and self.hadamard) else 0)
        super().__post_init__()

    def check(self) -> None:
        at_least_one(self, "iters", "group_size")
        for name in ("rank", "finetune_rank", "finetune_steps"):
            if getattr(self, name) < 0:
                raise ColaError(f"--{name} must be 0 or a positive integer, got {getattr(self, name)}")
        if not self.damp > 0:
            raise ColaError(f"damp must be positive (a fraction of the mean Hessian diagonal), got {self.damp}")
        if self.quantizer == "e8p":
            if self.q_bits != 2:
                raise ColaError(f"--quantizer e8p codes 8 weights in 16 bits (2 bits per weight); --q_bits must be 2, "
                                f"got {self.q_bits}")
            if self.group_size is not None:
                raise ColaError("--quantizer e8p keeps one scale per row; drop --group_size")
        if self.finetune_rank > self.rank:
            raise ColaError(f"--finetune_rank {self.finetune_rank} is larger than --rank {self.rank}")
        if self.finetune_signs and not self.hadamard:
            raise ColaError("--finetune_signs trains the Hadamard rotation's signs; it needs --hadamard")
        if self.finetune_steps > 0 and self.float16_rank == 0 and not self.finetune_signs:
            raise ColaError("--finetune_steps has nothing to train: give --finetune_rank (float16 components of L and "
                            "R), --lr_bits 16 or --finetune_signs")
        if not self.finetune_lr > 0:
            raise ColaError(f"--finetune_lr must be positive, got {self.finetune_lr}")
        in_unit_interval("finetune_holdout", self.finetune_holdout)

    @property
    def float16_rank(self) -> int:
        """How many components of L and R are stored in float16 (the last ones): all with lr_bits 16."""
        return self.rank if self.lr_bits == 16 else self.finetune_rank

    @property
    def lr_quantizer(self) -> str:
        """The quantizer of L's and R's codes: the config's, except uniform under e8p (a lattice for Q only)."""
        return "uniform" if self.quantizer == "e8p" else self.quantizer


def check_layer(config: CalderaConfig, out_features: int, in_features: int) -> None:
    """Refuse (ColaError, one line) a rank larger than an out_features x in_features layer allows, a group size
    that does not divide its input columns, or e8p on input columns that are not a multiple of 8."""
    if config.rank > min(out_features, in_features):
        raise ColaError(f"rank {config.rank} is larger than layer {out_features}x{in_features} allows "
                        f"(min(out,in)={min(out_features, in_features)})")
    if config.group_size is not None:
        resolve_group_size([in_features], config.group_size)
    if config.quantizer == "e8p" and in_features % 8:
        raise ColaError(f"--quantizer e8p codes groups of 8 input columns, but a {out_features}x{in_features} layer "
                        f"has {in_features} (not a multiple of 8); use --quantizer uniform or nf")
