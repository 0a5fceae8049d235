"""First-order Taylor importance of coupled structures (LLM-Pruner, Ma et al., NeurIPS 2023, §3.2).

Removing weights W from the model changes the calibration loss L by about |(∂L/∂W)ᵀ W| (the first-order term of
its Taylor expansion around the trained weights). LLM-Pruner scores a group of coupled weights two ways:

- element-wise (the paper's "Element¹", its reference code's `param_first`): every weight w on its own,
  |w · ∂L/∂w|, summed over the group's weights;
- vector-wise (the paper's "Vector"): every weight vector (a row of an input projection, a column of the output
  projection) as one, |Σ w · ∂L/∂w| over the vector, summed over the group's vectors.

∂L/∂W is the gradient of the mean language-modelling loss over *every* token of the calibration set. It is
accumulated batch by batch (each batch's mean loss weighted by its share of the tokens), with gradients kept only
for the weights scored, and each block's activations recomputed in the backward pass (gradient checkpointing), so
memory is one batch's block inputs, one block's activations and 1,024 positions' logits (`next_token_loss_sum`),
plus one gradient per scored weight.

The pass may run in another dtype than the model's own (`computing_in`: bfloat16 by default, `--compute_dtype`),
with the gradients summed in float32 and the scores taken on the model's own weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from cola.compress.calibration import CalibrationSet
from cola.compress.llm_pruner.config import IMPORTANCE
from cola.compress.llm_pruner.structures import BlockStructures
from cola.progress import progress_bar



def scored_weights(structures: Sequence[BlockStructures]) -> list[str]:
    """The qualified names of the Linears whose weights the scores read."""
    names: list[str] = []
    for block in structures:
        names += [block.attention.q, *block.attention.kv, block.attention.o, *block.mlp.inputs, block.mlp.output]
    return names


@contextmanager
def computing_in(model: torch.nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """Within the block, the model's floating-point parameters hold copies cast to `dtype` (None: unchanged); on
    exit each gets its own tensor back, unchanged, whatever the block did to the copies. The Parameter objects stay
    the same ones throughout, so modules wrapped around them (peft's adapters) keep pointing at them.

    Memory: the cast copies beside the model's own weights (half of them for float32 → bfloat16)."""
    originals: dict[torch.nn.Parameter, torch.Tensor] = {}
    try:
        if dtype is not None:
            for p in model.parameters():
                if p.is_floating_point() and p.dtype != dtype:
                    originals[p] = p.data
                    p.data = p.data.to(dtype)
        yield
    finally:
        for p, data in originals.items():
            p.data = data


def calibration_gradients(model: torch.nn.Module, calibration: CalibrationSet, names: Sequence[str], *,
                          max_batch_tokens: int, dtype: torch.dtype | None = None,
                          quiet: bool = True) -> dict[str, torch.Tensor]:
    """∂L/∂W of the Linears `names` (each the shape of its weight, float32), L the mean next-token loss over every
    predicted token of the set. Also the bias gradients, under "NAME.bias", for Linears that have a bias. The
    forward and backward passes run with the weights cast to `dtype` (None: the model's own; bfloat16 halves
    the matmul time on CPUs with native bf16), the gradients summed in float32.

    The model's parameters get requires_grad back as they were; its weights are unchanged."""
    with computing_in(model, dtype):
        return _gradients(model, calibration, names, max_batch_tokens=max_batch_tokens, quiet=quiet)


def _gradients(model: torch.nn.Module, calibration: CalibrationSet, names: Sequence[str], *, max_batch_tokens: int,
               quiet: bool) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    wanted = {f"{name}.weight": modules[name].weight for name in names}
    wanted |= {f"{name}.bias": modules[name].bias for name in names if modules[name].bias is not None}
    flags = {p: p.requires_grad for p in model.parameters()}
    grads = {key: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for key, p in wanted.items()}
    batches = calibration.batches(max_batch_tokens)
    predicted = sum(len(calibration.input_ids[i]) - 1 for batch in batches for i in batch)
    device = next(model.parameters()).device
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in wanted.values():
            p.requires_grad_(True)
        model.eval()
        checkpointed = checkpoint_blocks(model)
        for batch in progress_bar(batches, quiet=quiet, desc="Taylor importance", unit="batch"):
            ids = torch.stack([calibration.input_ids[i] for i in batch]).to(device)
            batch_grads = torch.autograd.grad(next_token_loss_sum(model, ids) / predicted, list(wanted.values()))
            for key, grad in zip(wanted, batch_grads):
                grads[key] += grad.float()
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        if checkpointed:
            model.gradient_checkpointing_disable()
        model.train(was_training)
    return grads


def next_token_loss_sum(model: torch.nn.Module, ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """The summed next-token cross-entropy (nats) of a (B, T) batch: the model's causal-LM loss times its B·(T-1)
    predicted tokens, without the (B, T, vocab) logits the model's own loss keeps for the backward pass.

    The decoder's final hidden states are taken with a hook (the model computes the logits of the last position
    only), then `chunk` positions at a time go through the output embedding (and Gemma's final logit soft-capping)
    and the loss, each chunk recomputed in the backward pass: at most (chunk, vocab) logits live at once."""
    from torch.utils.checkpoint import checkpoint

    captured: list[torch.Tensor] = []

    def grab(_module: torch.nn.Module, _args: tuple, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = model.get_decoder().register_forward_hook(grab)
    try:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    head = model.get_output_embeddings()
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    hidden = captured[0][:, :-1].reshape(-1, captured[0].shape[-1])
    labels = ids[:, 1:].reshape(-1)

    def loss(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = head(h).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return torch.nn.functional.cross_entropy(logits, y, reduction="sum")

    return sum(checkpoint(loss, hidden[i:i + chunk], labels[i:i + chunk], use_reentrant=False)
               for i in range(0, len(labels), chunk))


def checkpoint_blocks(model: torch.nn.Module) -> bool:
    """Recompute each decoder block's activations in the backward pass instead of keeping them (transformers'
    gradient checkpointing, which runs only on a block in training mode: the blocks alone are put in it, their
    attention and dropout stay in eval mode). Whether it could be turned on."""
    from cola.models import find_decoder_layers

    if not getattr(model, "supports_gradient_checkpointing", False):
        return False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for block in find_decoder_layers(model)[1]:
        block.training = True  # this module only, not its children
    return True


def _contributions(product: torch.Tensor, kind: str, dim: int) -> torch.Tensor:
    """Per vector along `dim` (0: rows, 1: columns) of the (out, in) products w · ∂L/∂w of a weight: the summed
    element-wise |w g| or the vector-wise |Σ w g|."""
    reduce = 1 - dim
    return product.abs().sum(reduce) if kind == "element" else product.sum(reduce).abs()


def group_importance(model: torch.nn.Module, structures: Sequence[BlockStructures],
                     grads: dict[str, torch.Tensor], kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block, (importance of each KV group (num_kv,), importance of each MLP channel (channels,)), float32.

    A KV group sums its rows of q, k and v (and their biases' terms) and its columns of o; a channel its row of
    each input projection and its column of the output projection. `kind` is "element" or "vector" (module
    docstring)."""
    if kind not in IMPORTANCE:
        raise ValueError(f"importance {kind!r}; valid: {', '.join(IMPORTANCE)}")
    modules = dict(model.named_modules())

    def per_row(name: str) -> torch.Tensor:
        module = modules[name]
        product = module.weight.float() * grads[f"{name}.weight"]
        if module.bias is not None:  # a bias entry is its row's vector of one more weight
            product = torch.cat([product, (module.bias.float() * grads[f"{name}.bias"])[:, None]], dim=1)
        return _contributions(product, kind, 0)

    def per_column(name: str) -> torch.Tensor:
        return _contributions(modules[name].weight.float() * grads[f"{name}.weight"], kind, 1)

    scores = []
    for block in structures:
        att = block.attention
        heads = torch.zeros(att.num_kv)
        for name in (att.q, *att.kv):
            rows = per_row(name)
            heads += rows.reshape(att.num_kv, -1).sum(1).cpu()
        heads += per_column(att.o).reshape(att.num_kv, -1).sum(1).cpu()
        channels = sum(per_row(name).cpu() for name in block.mlp.inputs) + per_column(block.mlp.output).cpu()
        scores.append((heads, channels))
    return scores
