"""LLM-Pruner's settings, checked at construction; what depends on the model (the blocks) is checked in `prepare`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cola.compress.base import MethodConfig, at_least_one, in_unit_interval, seed_option
from cola.errors import ColaError
from cola.settings import option

DEFAULT_BLOCK_RANGE = "4:-2"
IMPORTANCE = ("element", "vector")  # the aggregations of `importance.group_importance`
COMPUTE_DTYPES = ("bfloat16", "float32")  # of the importance pass and the recovery (`importance.computing_in`)


def parse_block_range(text: str, count: int) -> list[int]:
    """The block indices a `START:END` range selects among `count` blocks, as a Python slice (negative indices
    count from the end, either side may be empty). Raises ColaError (one line) for a malformed range or one that
    selects no block."""
    start, colon, end = text.partition(":")
    try:
        if not colon:
            raise ValueError
        bounds = slice(int(start) if start.strip() else None, int(end) if end.strip() else None)
    except ValueError:
        raise ColaError(f"--block_range {text!r} is not START:END (e.g. {DEFAULT_BLOCK_RANGE}: all but the first 4 "
                        "and the last 2 blocks; 0: every block)") from None
    selected = list(range(count))[bounds]
    if not selected:
        raise ColaError(f"--block_range {text} selects no block of this model's {count}; pass a range within "
                        f"0:{count} (e.g. 1:-1)")
    return selected


@dataclass(frozen=True, kw_only=True)
class LLMPrunerConfig(MethodConfig):
    """One LLM-Pruner run (Ma et al., NeurIPS 2023): the share of parameters each block in `block_range` loses,
    how structures are scored, and the optional LoRA recovery.

    Raises ColaError (one line) for a ratio outside (0, 1), a malformed block range, an unknown importance or a
    non-positive recovery setting."""

    summary_fields = ("pruning_ratio", "block_range", "importance", "compute_dtype", "recovery_steps",
                      "recovery_lr", "recovery_rank", "recovery_data")

    pruning_ratio: float = option(0.2, help="LLM-Pruner: share of each pruned block's parameters removed, in (0, 1); "
                                            "whole KV head groups and MLP channels go")
    block_range: str = option(DEFAULT_BLOCK_RANGE,
                              help="LLM-Pruner: the blocks pruned, a Python slice START:END (default 4:-2 keeps the "
                                   "first 4 and the last 2, as the paper does with LLaMA-7B's blocks 4-29 of 32)")
    importance: str = option("element", help="LLM-Pruner: first-order Taylor importance summed per weight "
                                             "(element) or per weight vector (vector)", choices=IMPORTANCE)
    compute_dtype: str = option("bfloat16", help="LLM-Pruner: the dtype of the weights and activations in the "
                                                 "importance pass and the LoRA recovery (gradients summed and "
                                                 "adapters kept in float32; the saved weights keep --dtype)",
                                choices=COMPUTE_DTYPES)
    recovery_steps: int = option(0, help="LLM-Pruner: LoRA recovery steps after pruning, one batch of "
                                         "--batch_tokens each (0: none; needs peft: pip install 'cola[recovery]')")
    recovery_lr: float = option(1e-4, help="LLM-Pruner: LoRA recovery learning rate (AdamW; the paper: 1e-4)")
    recovery_rank: int = option(8, help="LLM-Pruner: LoRA rank of the recovery adapters (the paper: 8, alpha 16)")
    recovery_data: str | None = option(None, help="LLM-Pruner: a JSON or JSONL file of recovery texts (records with "
                                                  "text, or Alpaca's instruction/input/output) instead of the "
                                                  "calibration set", shown="the calibration set")
    seed: int = seed_option()

    def check(self) -> None:
        in_unit_interval("pruning_ratio", self.pruning_ratio)
        at_least_one(self, "recovery_rank")
        if self.recovery_steps < 0:
            raise ColaError(f"--recovery_steps must be >= 0, got {self.recovery_steps}")
        if not self.recovery_lr > 0:
            raise ColaError(f"--recovery_lr must be positive, got {self.recovery_lr}")
        parse_block_range(self.block_range, 10**6)  # the form; the blocks are checked against the model
        if self.recovery_data is not None and not Path(self.recovery_data).is_file():
            raise ColaError(f"--recovery_data {self.recovery_data}: no such file")
