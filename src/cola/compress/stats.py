"""The one statistics module of the native methods: what each Linear layer saw during calibration.

For every watched layer it accumulates, over all calibration tokens x (rows of the layer input),
either the full second moment H = Σ x xᵀ (CALDERA, GPTQ-style methods) or only its diagonal, the squared
input-column norms ‖X_j‖² (Wanda, RIA). Layers that read the same input tensor (q/k/v, gate/up) share
one accumulation instead of computing it once per layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

KINDS = ("hessian", "norms")


@dataclass
class InputStats:
    """Σ x xᵀ (or its diagonal) over `tokens` calibration tokens, in float32 (float64 for the full matrix)."""

    full: bool
    tokens: int = 0
    moment: torch.Tensor | None = None

    def part(self, x: torch.Tensor) -> torch.Tensor:
        """The contribution of input rows `x` to the moment."""
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        return (x.T @ x).to(torch.float64) if self.full else x.square().sum(dim=0)

    def add(self, part: torch.Tensor, tokens: int) -> None:
        self.moment = part.clone() if self.moment is None else self.moment.add_(part)
        self.tokens += tokens

    @property
    def hessian(self) -> torch.Tensor:
        """H = XᵀX summed over tokens (float32)."""
        if not self.full:
            raise ValueError("only input norms were collected for this layer")
        return self._moment().to(torch.float32)

    @property
    def input_norms(self) -> torch.Tensor:
        """‖X_j‖₂ for every input column j (float32)."""
        diag = self._moment().diagonal() if self.full else self._moment()
        return diag.to(torch.float32).clamp_min(0).sqrt()

    def _moment(self) -> torch.Tensor:
        if self.moment is None:
            raise ValueError("this layer saw no calibration tokens")
        return self.moment


@contextmanager
def collect_input_stats(linears: dict[str, torch.nn.Linear], kind: str) -> Iterator[dict[str, InputStats]]:
    """Within the block, every forward of a layer in `linears` adds its input to that layer's InputStats."""
    if kind not in KINDS:
        raise ValueError(f"unknown statistics kind {kind!r}; valid: {', '.join(KINDS)}")
    stats = {name: InputStats(full=kind == "hessian") for name in linears}
    last: dict[str, torch.Tensor] = {}  # the input seen last and its contribution, shared by its readers

    def hook(name: str):
        def record(_module: torch.nn.Module, args: tuple) -> None:
            x = args[0].detach()
            if last.get("input") is not args[0]:
                last.update(input=args[0], part=stats[name].part(x))
            stats[name].add(last["part"], x.numel() // x.shape[-1])
        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in linears.items()]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
        last.clear()
