"""The RIA method (Zhang et al., ICLR 2024): native pruning by relative importance x activation norm^alpha.

Run by the one sequential driver (`cola.compress.driver`) with per-column input norms; the scores and masks
are in `cola.compress.pruning`. The pruned model is saved as a plain dense checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cola.compress.base import PruningConfig, PruningMethod, save_dense
from cola.errors import ColaError
from cola.settings import option

if TYPE_CHECKING:
    import torch

    from cola.compress.calibration import CalibrationSet


@dataclass(frozen=True, kw_only=True)
class RIAConfig(PruningConfig):
    alpha: float = option(0.5, help="RIA: exponent of the input-activation norm")

    def check(self) -> None:
        super().check()
        if self.alpha < 0:
            raise ColaError(f"--alpha must be >= 0, got {self.alpha}")


class RIA(PruningMethod):
    name = "ria"
    backend = "native"
    config = RIAConfig
    description = "RIA pruning by relative importance x activation norm^alpha (Zhang et al., ICLR 2024)"

    def run(self, model: torch.nn.Module, calibration: CalibrationSet | None, config: RIAConfig, *,
            tokenizer: Any, output_dir: Path, quiet: bool, max_batch_tokens: int) -> dict[str, Any]:
        from cola.compress.driver import compress_sequentially
        from cola.compress.pruning import ria_prune_layer

        def prune(_name: str, linear: torch.nn.Linear, stats: Any) -> None:
            ria_prune_layer(linear, stats, sparsity=config.sparsity, pattern=config.pattern, alpha=config.alpha)

        compress_sequentially(model, calibration, prune, stats_kind="norms", quiet=quiet,
                              max_batch_tokens=max_batch_tokens)
        save_dense(model, tokenizer, output_dir)
        return {}
