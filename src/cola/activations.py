"""The one activation-extraction engine: per-sample, per-layer pooled hidden states, projected on the fly.

For each candidate the uncompressed model runs up to the deepest chosen decoder layer only (a hook stops
the forward there, so neither the layers above nor the LM head are computed). Each chosen layer's output
is pooled over real tokens (attention mask): their mean by default, or the last real token's state, which
in a causal model is the only one that has seen the whole sample. It is then L2-normalised and multiplied
by that layer's slice of one Gaussian projection, so only a (N, projection_dim) matrix is ever held.
Candidates are batched by length (sorted, with a token budget per batch), so almost no padding is computed;
right padding plus a causal mask leaves every real token's hidden state as it is without padding, which is
why the forward is given no attention mask at all (the padding mask only serves the pooling).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cola.batching import length_batches, pad_batch
from cola.config import COMPILE_MODES, POOLINGS
from cola.errors import ColaError, unknown_choice
from cola.models import config_int, find_decoder_layers, input_device
from cola.moments import MomentSketches, Site, site_maps, sketch_tokens, triangle_size
from cola.progress import progress_bar

log = logging.getLogger(__name__)


# "auto" compiles from this many real tokens on: on a 2-core AMD EPYC in bf16 compiling SmolLM2-135M's blocks took
# about 40 s more than an eager pass of 24.6k tokens, and the compiled pass ran about 1.4x as fast as eager.
COMPILE_MIN_TOKENS = 100_000


def use_compile(mode: str, *, real_tokens: int, device: torch.device, sketches: bool) -> bool:
    """Whether extraction compiles the decoder blocks: `mode` is one of COMPILE_MODES. Never with sketches (their
    hooks sit inside the blocks, on every linear layer, and write numpy arrays); "auto" only on a CPU and for
    at least COMPILE_MIN_TOKENS real tokens, where the fused element-wise work repays the compile time."""
    if mode not in COMPILE_MODES:
        raise unknown_choice("compile", mode, COMPILE_MODES)
    if mode == "off" or sketches:
        return False
    return mode == "on" or (torch.device(device).type == "cpu" and real_tokens >= COMPILE_MIN_TOKENS)


def compile_blocks(blocks: Sequence[torch.nn.Module]) -> list[torch.nn.Module]:
    """Each block's forward replaced by its torch.compile (dynamic shapes, so the varying batch shapes share one
    graph); the hooks on the blocks stay eager, outside. Returns the blocks changed, for `restore_blocks`."""
    changed = []
    for block in blocks:
        if "forward" not in vars(block):  # not already replaced by someone else
            block.forward = torch.compile(block.forward, dynamic=True)
            changed.append(block)
    return changed


def restore_blocks(blocks: Sequence[torch.nn.Module]) -> None:
    """Undo `compile_blocks`: the class's own forward again."""
    for block in blocks:
        vars(block).pop("forward", None)


class _StopForward(Exception):
    """Raised by the deepest hook: nothing above the last chosen layer needs computing."""


class _NeverReached(RuntimeError):
    """The forward returned without reaching the deepest chosen layer."""


@dataclass(frozen=True)
class ExtractionStats:
    """What the extraction computed: real tokens, padded slots, wall time, and whether the decoder blocks ran
    compiled (torch.compile; False where compiling failed and the pass ran eager)."""

    real_tokens: int
    computed_tokens: int
    seconds: float
    batches: int
    compiled: bool = False

    @property
    def tokens_per_second(self) -> float:
        """Useful (real, unpadded) tokens per second."""
        return self.real_tokens / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict[str, float | int]:
        return {"real_tokens": self.real_tokens, "computed_tokens": self.computed_tokens,
                "padding_fraction": round(1 - self.real_tokens / max(self.computed_tokens, 1), 6),
                "seconds": round(self.seconds, 3), "useful_tokens_per_second": round(self.tokens_per_second, 1),
                "batches": self.batches, "compiled": self.compiled}


def resolve_layers(layers: Sequence[int] | None, num_layers: int) -> tuple[int, ...]:
    """Chosen layer indices, sorted and de-duplicated; None means all; negative indices count from the end."""
    if layers is None:
        return tuple(range(num_layers))
    resolved = set()
    for index in layers:
        if not -num_layers <= index < num_layers:
            raise ColaError(f"unknown layer index {index}: the model has {num_layers} decoder layers "
                            f"(valid: 0..{num_layers - 1}, or -{num_layers}..-1)")
        resolved.add(index % num_layers)
    if not resolved:
        raise ColaError("--layers is empty: name at least one decoder layer")
    return tuple(sorted(resolved))


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only. hidden (B, T, H), mask (B, T) of 0/1 -> (B, H) in float32.

    The 0/1 weights multiply in the hidden states' own dtype (exact) and the sum accumulates in float32, so no
    float32 copy of the (B, T, H) states is made: one pass over them per chosen layer instead of three.
    """
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    count = mask.sum(dim=1, keepdim=True).to(torch.float32).clamp_min(1.0)  # (B, 1)
    return (hidden * weights).sum(dim=1, dtype=torch.float32) / count


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sample, (B, T, H) -> (B, H) in float32, from real tokens only (right padding)."""
    if pooling == "mean":
        return masked_mean(hidden, mask)
    if pooling == "last":
        last = mask.sum(dim=1).clamp_min(1) - 1  # (B,) index of each row's last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].to(torch.float32)
    raise unknown_choice("pooling", pooling, POOLINGS)


@dataclass(frozen=True)
class Extraction:
    """What one pass over the sequences gave: projected features, moment sketches if asked for, the cost."""

    features: np.ndarray               # (N, projection_dim)
    stats: ExtractionStats
    sketches: MomentSketches | None    # per-candidate second-moment sketches of the linear layers' inputs


def extract_features(
    model: torch.nn.Module,
    token_ids: Sequence[Sequence[int]],
    *,
    layers: Sequence[int] | None,
    projection_dim: int,
    seed: int,
    batch_size: int = 32,
    batch_tokens: int = 16384,
    pad_token_id: int = 0,
    pooling: str = "mean",
    sketch_dim: int | None = None,
    channel_maxima: bool = False,
    compile: str = "off",
    quiet: bool = False,
    progress: Any = None,
) -> Extraction:
    """One forward pass over the sequences: (N, projection_dim) projected activation features and, given
    `sketch_dim` m, the second-moment sketches of every linear layer's input in the chosen layers
    (`cola.moments`), from the same forward; with `channel_maxima` as well, each candidate's per-channel max|x|
    of those inputs (`MomentSketches.maxima`, N x the sum of the inputs' widths float32, for range coverage).

    Feature = sum over chosen layers l of normalize(pool(h_l)) @ R_l / sqrt(#layers), where R is one
    seeded Gaussian projection of the concatenated per-layer vectors, split per layer; `pooling` is one of
    POOLINGS. `progress`: a tqdm bar to advance by each batch's real tokens (a caller running several
    extractions under one bar); None: a bar of this call's own, which `quiet` silences. `compile` (COMPILE_MODES,
    `use_compile`): run the chosen blocks through torch.compile for this call; if the first compiled batch fails,
    the blocks go back to eager and the batch is run again.
    Raises ColaError for an empty sequence, an unknown pooling or layer index.
    """
    from cola.cluster import gaussian_projection

    if any(len(ids) == 0 for ids in token_ids):
        raise ColaError("a candidate has no tokens; drop empty texts before extraction")
    if pooling not in POOLINGS:
        raise unknown_choice("pooling", pooling, POOLINGS)
    _, blocks = find_decoder_layers(model)
    chosen = resolve_layers(layers, len(blocks))
    hidden_size = _hidden_size(model)
    device = input_device(model)
    # One projection of the concatenation (L*H, P), used per layer as (L, H, P) slices.
    projection = gaussian_projection(len(chosen) * hidden_size, projection_dim, seed)
    projection = projection.view(len(chosen), hidden_size, projection_dim).to(device)
    scale = 1.0 / len(chosen) ** 0.5
    features = np.zeros((len(token_ids), projection_dim), dtype=np.float32)
    state: dict[str, torch.Tensor] = {}

    def make_hook(slot: int, is_last: bool):
        def hook(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor | tuple) -> None:
            hidden = output[0] if isinstance(output, tuple) else output  # (B, T, H)
            # a sharded model (device_map) runs each block on its own device: the block's output is pooled there
            pooled = torch.nn.functional.normalize(pool(hidden, state["mask"].to(hidden.device), pooling), dim=-1)
            state["acc"] += pooled.to(device) @ projection[slot]  # (B, H) @ (H, P)
            if is_last:
                raise _StopForward
        return hook

    sketcher, handles = None, []
    if channel_maxima and sketch_dim is None:
        raise ColaError("channel maxima are read with the moment sketches: give sketch_dim too")
    if sketch_dim is not None:  # first: it raises, having hooked nothing, when there is no linear layer
        sketcher = _Sketcher(len(token_ids), sketch_dim, seed, state, maxima=channel_maxima)
        handles = sketcher.attach(blocks, chosen)
    handles += [blocks[layer].register_forward_hook(make_hook(slot, layer == chosen[-1]))
                for slot, layer in enumerate(chosen)]
    lengths = [len(ids) for ids in token_ids]
    compiled = (compile_blocks(blocks[: chosen[-1] + 1])
                if use_compile(compile, real_tokens=sum(lengths), device=device, sketches=sketcher is not None) else [])
    batches = length_batches(lengths, max_batch_size=batch_size, max_batch_tokens=batch_tokens)
    computed = 0
    start = time.perf_counter()
    bar = progress if progress is not None else progress_bar(total=sum(lengths), quiet=quiet, desc="activations",
                                                             unit="tok", unit_scale=True)
    try:
        with torch.inference_mode():
            for batch in batches:
                # right padding: real tokens never see the pads
                ids, mask = pad_batch([token_ids[i] for i in batch], pad_token_id)  # (B, T) each
                state["mask"] = mask.to(device)
                state["acc"] = torch.zeros(len(batch), projection_dim, device=device)
                state["rows"] = batch
                try:
                    _forward(model, ids.to(device))
                except _NeverReached:
                    raise
                except Exception as error:  # noqa: BLE001 - whatever torch.compile raised: run eager instead
                    if not compiled or computed:
                        raise
                    log.warning("activations: torch.compile of the decoder blocks failed (%s: %s); running eager",
                                type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                    restore_blocks(compiled)
                    compiled = []
                    state["acc"].zero_()
                    _forward(model, ids.to(device))
                features[batch] = (state["acc"] * scale).float().cpu().numpy()
                if sketcher is not None:
                    sketcher.end_batch()
                computed += ids.numel()
                bar.update(sum(lengths[i] for i in batch))
    finally:
        restore_blocks(compiled)
        for handle in handles:
            handle.remove()
        if progress is None:
            bar.close()
    stats = ExtractionStats(real_tokens=sum(lengths), computed_tokens=computed,
                            seconds=time.perf_counter() - start, batches=len(batches), compiled=bool(compiled))
    log.info("activations: %d candidates, %d tokens, %.0f useful tokens/s, %.1f%% padding", len(token_ids),
             stats.real_tokens, stats.tokens_per_second, 100 * (1 - stats.real_tokens / max(computed, 1)))
    sketches = sketcher.result(lengths) if sketcher is not None else None
    return Extraction(features=features, stats=stats, sketches=sketches)


def _forward(model: torch.nn.Module, ids: torch.Tensor) -> None:
    """The forward up to the deepest chosen layer, whose hook stops it (RuntimeError if it never got there)."""
    try:
        # No attention mask on purpose: with right padding and causal attention no real token sees a pad, so the
        # real tokens' states are the same without it (the pads' own are never pooled). The model then builds only
        # its causal mask, and SDPA runs its causal kernel, which skips the blocks above the diagonal, instead of
        # reading a padding mask of B x T x T.
        model(input_ids=ids, use_cache=False)
    except _StopForward:
        return
    raise _NeverReached("the forward pass never reached the deepest chosen layer")


def _hidden_size(model: torch.nn.Module) -> int:
    size = config_int(model, "hidden_size", "n_embd", "d_model")
    if size is None:
        raise ColaError(f"cannot tell the hidden size of {type(model).__name__} from its config")
    return size


class _Sketcher:
    """Forward pre-hooks on every nn.Linear of the chosen decoder layers, writing each candidate's moment
    sketches (`cola.moments.sketch_tokens`). Linears called one after another on the same tensor (q/k/v,
    gate/up) are one site. A site's maps are seeded by the run's seed and the site's number (`site_maps`).
    With `maxima`, also each candidate's per-channel max|x| over its real tokens, per site."""

    def __init__(self, num_candidates: int, sketch_dim: int, seed: int, state: dict, *, maxima: bool = False) -> None:
        if sketch_dim < 1:
            raise ColaError(f"sketch_dim must be at least 1, got {sketch_dim}")
        self.m, self.seed, self.state, self.n = sketch_dim, seed, state, num_candidates
        self.sites: list[Site] = []
        self.columns: list[np.ndarray] = []                  # per site (N, m(m+1)/2 + 2m)
        self.maps: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.maxima: list[np.ndarray] | None = [] if maxima else None  # per site (N, d)
        self.site = -1                                       # the current site's number in this batch
        self.last: torch.Tensor | None = None               # the input the previous linear read
        self.first_batch = True

    def attach(self, blocks: torch.nn.ModuleList, chosen: Sequence[int]) -> list:
        """Hook every linear layer (torch Linear, or transformers' Conv1D as GPT-2 has) of the chosen blocks;
        raises ColaError if there is none."""
        from transformers.pytorch_utils import Conv1D

        handles = []
        for layer in chosen:
            for name, module in blocks[layer].named_modules():
                if isinstance(module, (torch.nn.Linear, Conv1D)):
                    handles.append(module.register_forward_pre_hook(self._hook(layer, name)))
        if not handles:
            raise ColaError(f"moments selection found no linear layer in the chosen decoder layers of "
                            f"{type(blocks[chosen[0]]).__name__}; use --selection_method activations")
        return handles

    def _hook(self, layer: int, name: str):
        def hook(_module: torch.nn.Module, inputs: tuple) -> None:
            x = inputs[0]  # (B, T, d)
            if x is self.last:  # another reader of the same input (k/v after q, up after gate)
                if self.first_batch:
                    site = self.sites[self.site]
                    self.sites[self.site] = Site(site.layer, site.modules + (name,), site.width)
                return
            self.last = x
            self.site += 1
            if self.first_batch:
                self.sites.append(Site(layer, (name,), x.shape[-1]))
                self.columns.append(np.zeros((self.n, triangle_size(self.m) + 2 * self.m), dtype=np.float32))
                self.maps.append(site_maps(x.shape[-1], self.m, self.seed * 1_000_003 + 2 * self.site + 1))
                if self.maxima is not None:
                    self.maxima.append(np.zeros((self.n, x.shape[-1]), dtype=np.float32))
            if self.site >= len(self.sites):
                raise RuntimeError("the model read more linear-layer inputs in this batch than in the first one")
            mask = self.state["mask"].to(x.device)  # a sharded model's block runs on its own device
            sketch = sketch_tokens(x, mask, *self.maps[self.site])
            self.columns[self.site][self.state["rows"]] = sketch.cpu().numpy()
            if self.maxima is not None:  # |x| >= 0, so zeroing the padding leaves every real token's max
                real = x.abs().to(torch.float32) * mask.to(torch.float32).unsqueeze(-1)
                self.maxima[self.site][self.state["rows"]] = real.amax(dim=1).cpu().numpy()
        return hook

    def end_batch(self) -> None:
        self.first_batch, self.site, self.last = False, -1, None

    def result(self, lengths: Sequence[int]) -> MomentSketches:
        values = np.concatenate(self.columns, axis=1) if self.columns else np.zeros((self.n, 0), np.float32)
        maxima = None
        if self.maxima is not None:
            maxima = np.concatenate(self.maxima, axis=1) if self.maxima else np.zeros((self.n, 0), np.float32)
        return MomentSketches(values=values, tokens=np.asarray(lengths, dtype=np.int64), sites=tuple(self.sites),
                              sketch_dim=self.m, maxima=maxima)
