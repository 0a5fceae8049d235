"""LoRA recovery of a pruned model (LLM-Pruner §3.4), with peft, merged back before saving.

LLM-Pruner trains low-rank adapters on every projection of the pruned model (rank 8, alpha 16, dropout 0.05,
lr 1e-4 in the paper, on Alpaca-cleaned) with the language-modelling loss, then adds them into the weights: the
saved model has no adapter and the pruned shapes. Here the training texts are the calibration set (its token
ids as they are) or a JSON/JSONL file of records (`text`, or Alpaca's instruction/input/output rendered with its
prompt template), tokenized, joined with EOS and cut into windows of the calibration set's length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cola.compress.calibration import CalibrationSet
from cola.errors import ColaError
from cola.progress import progress_bar

INSTALL_HINT = "pip install 'cola[recovery]' (or pip install peft)"
ALPACA_PROMPT = ("Below is an instruction that describes a task{paired}. Write a response that appropriately "
                 "completes the request.\n\n### Instruction:\n{instruction}\n\n{input}### Response:\n{output}")


def require_peft() -> None:
    """Raise ColaError (one line, with the install hint) when peft is not importable."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ColaError(f"--recovery_steps needs peft, which is not installed: {INSTALL_HINT}") from None


def record_text(record: dict[str, Any], where: str) -> str:
    """The training text of one record: its `text`, or Alpaca's fields in Alpaca's prompt template."""
    if isinstance(record.get("text"), str):
        return record["text"]
    if isinstance(record.get("instruction"), str) and isinstance(record.get("output"), str):
        extra = record.get("input") or ""
        return ALPACA_PROMPT.format(paired=", paired with an input that provides further context" if extra else "",
                                    instruction=record["instruction"],
                                    input=f"### Input:\n{extra}\n\n" if extra else "", output=record["output"])
    raise ColaError(f"{where} has neither a text field nor instruction and output fields (Alpaca); found "
                    f"{', '.join(sorted(record)) or 'no field'}")


def recovery_windows(path: str | Path, tokenizer: Any, length: int) -> list[torch.Tensor]:
    """The records of the JSON/JSONL file `path` as token windows of `length` tokens (1-D LongTensors): every
    text tokenized, joined with EOS, cut into whole windows (the tail shorter than a window is dropped).

    Raises ColaError (one line) for a missing or unreadable file, a record without text, or too few tokens for
    one window."""
    from cola.io import read_json_records

    path = Path(path)
    if not path.is_file():
        raise ColaError(f"--recovery_data {path}: no such file")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for row, record in read_json_records(path):
        text = record_text(record, f"--recovery_data {path} record {row}")
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
    count = len(stream) // length
    if count == 0:
        raise ColaError(f"--recovery_data {path} holds {len(stream)} tokens, fewer than one window of {length}")
    return [torch.tensor(stream[i * length:(i + 1) * length]) for i in range(count)]


@dataclass
class RecoveryLog:
    """Mean training loss (nats per token) of each step, and the adapters' settings."""

    losses: list[float] = field(default_factory=list)
    samples: int = 0
    source: str = "calibration set"

    def as_dict(self) -> dict[str, Any]:
        head = self.losses[: max(1, len(self.losses) // 10)]
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return {"source": self.source, "samples": self.samples, "steps": len(self.losses), "losses": self.losses,
                "loss_first_tenth": sum(head) / len(head), "loss_last_tenth": sum(tail) / len(tail)}


def recover(model: torch.nn.Module, samples: list[torch.Tensor], targets: list[str], *, steps: int, lr: float,
            rank: int, max_batch_tokens: int, seed: int, dtype: torch.dtype | None = None,
            quiet: bool = True) -> tuple[torch.nn.Module, RecoveryLog]:
    """Train LoRA adapters (rank `rank`, alpha 2·rank, dropout 0.05) on the Linears `targets` (qualified names) for
    `steps` AdamW steps of batches of `samples` within `max_batch_tokens`, in a seeded shuffled order, lr `lr`
    with a linear warm-up over the first tenth; then merge them into the weights.

    The frozen weights and the activations are cast to `dtype` for the training (None: the model's own; mixed
    precision), the adapters kept in float32 (peft's default) and added, in float32, into the model's own weights.

    Returns (the model with merged weights and no peft wrapper, the loss log). Raises ColaError without peft."""
    require_peft()
    from cola.compress.llm_pruner.importance import computing_in

    with computing_in(model, dtype):
        peft_model, log = _train_adapters(model, samples, targets, steps=steps, lr=lr, rank=rank,
                                          max_batch_tokens=max_batch_tokens, seed=seed, quiet=quiet)
        deltas = [(layer.base_layer, layer.get_delta_weight("default")) for layer in peft_model.modules()
                  if hasattr(layer, "get_delta_weight") and hasattr(layer, "base_layer")]
        model = peft_model.unload()
    with torch.no_grad():  # the model's own weights are back: add B A · alpha / rank to each
        for layer, delta in deltas:
            layer.weight += delta.to(layer.weight.dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, log


def _train_adapters(model: torch.nn.Module, samples: list[torch.Tensor], targets: list[str], *, steps: int,
                    lr: float, rank: int, max_batch_tokens: int, seed: int, quiet: bool) -> tuple[Any, RecoveryLog]:
    from peft import LoraConfig, get_peft_model

    from cola.compress.calibration import ordered_batches
    from cola.compress.llm_pruner.importance import checkpoint_blocks, next_token_loss_sum

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    adapters = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules=list(targets),
                          bias="none")
    peft_model = get_peft_model(model, adapters)
    trained = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    device = next(model.parameters()).device
    log = RecoveryLog(samples=len(samples))
    order: list[list[int]] = []
    peft_model.train()
    checkpointed = checkpoint_blocks(peft_model.get_base_model())  # activations recomputed, as for the importance
    try:
        for _ in progress_bar(range(steps), quiet=quiet, desc="LoRA recovery", unit="step"):
            if not order:
                shuffled = torch.randperm(len(samples), generator=generator).tolist()
                order = [[shuffled[i] for i in batch]
                         for batch in ordered_batches([len(samples[i]) for i in shuffled], max_batch_tokens)]
            batch = order.pop(0)
            ids = torch.stack([samples[i] for i in batch]).to(device)
            loss = next_token_loss_sum(peft_model.get_base_model(), ids) / (ids.shape[0] * (ids.shape[1] - 1))
            if not math.isfinite(loss.item()):
                raise ColaError(f"LoRA recovery diverged (loss {loss.item()}) at step {len(log.losses) + 1}; lower "
                                "--recovery_lr")
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            log.losses.append(round(float(loss.item()), 5))
    finally:
        if checkpointed:
            peft_model.get_base_model().gradient_checkpointing_disable()
        peft_model.eval()
    return peft_model, log


def recovery_samples(calibration: CalibrationSet, data: str | None, tokenizer: Any) -> tuple[list[torch.Tensor], str]:
    """(training samples, where they came from): the calibration set, or the windows of `data`."""
    if data is None:
        return list(calibration.input_ids), "calibration set"
    return recovery_windows(data, tokenizer, calibration.sequence_length), str(data)
