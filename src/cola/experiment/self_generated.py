"""Self-generated calibration data (Ji et al., "Beware of Calibration Data for Pruning Large Language Models",
ICLR 2025): the model writes its own calibration text from short prompts taken from the processed pool, and the
highest-perplexity share of what it wrote is dropped. The experiment's `self_generated` strategy
(`cola.experiment.strategies`); it goes through cola's public API (`cola.inputs.load_sources`, `COLA.process`) and
writes its set with `cola.export`'s builders, like any curation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cola.api import COLA, stages_run
from cola.batching import generate_new_tokens
from cola.config import CurateConfig
from cola.errors import ColaError
from cola.models import input_device
from cola.export import Manifest, PoolTable, SampleRecord, check_curate_output, model_record, write_outputs
from cola.inputs import load_sources
from cola.models import single_threaded
from cola.progress import progress_bar
from cola.stages.packing import cut_to_length

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
SELF_GENERATED = "self_generated"


def _summary(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    return {"min": round(float(values.min()), 4), "mean": round(float(values.mean()), 4),
            "median": round(float(np.median(values)), 4), "max": round(float(values.max()), 4)}


def prompt_ids(tokenizer: Any, prompts: Sequence[str] | Sequence[Sequence[int]],
               prompt_tokens: int) -> tuple[list[list[int]], list[int]]:
    """The first `prompt_tokens` token ids of each prompt long enough to have them (equal lengths: no padding),
    and the index of each such prompt. Prompts are texts (tokenized as the model reads them, with exactly one
    BOS where it has one: `cola.tokenization.encode`) or token ids already (Stage 2's samples, which have it)."""
    from cola.tokenization import encode, model_bos_id

    texts = bool(prompts) and isinstance(prompts[0], str)
    encoded = encode(tokenizer, prompts, bos_id=model_bos_id(tokenizer)) if texts else prompts
    usable = [i for i, ids in enumerate(encoded) if len(ids) >= prompt_tokens]
    return [cut_to_length(encoded[i], prompt_tokens)[0].tolist() for i in usable], usable


def generate_self_calibration(model: torch.nn.Module, tokenizer: Any,
                              prompts: Sequence[str] | Sequence[Sequence[int]], k: int, sequence_length: int, *,
                              seed: int, prompt_tokens: int = 8,
                              drop_fraction: float = 0.2, temperature: float = 0.6, top_p: float = 0.95,
                              top_k: int = 50, repetition_penalty: float = 1.2, batch_size: int = 32,
                              quiet: bool = False) -> tuple[list[list[int]], dict[str, Any]]:
    """k self-generated sequences of exactly `sequence_length` tokens, and a report (Ji et al., ICLR 2025).

    The model continues the first `prompt_tokens` tokens of each prompt (texts or token ids; used in order,
    cycled if there are too few) with top-k / nucleus sampling and a repetition penalty; EOS is suppressed
    until the length is reached, and equal-length prompts need no padding. n = ceil(k / (1 - drop_fraction))
    sequences are generated, each is scored by its perplexity under the same model, and the n - k highest
    are dropped (generated text that even its author finds unlikely is degenerate). The kept sequences come
    back in generation order. Sampling runs under a forked RNG seeded with `seed`, so the result depends only
    on the seed and batch_size, and the caller's RNG state is untouched. The report's wall-clock figures are
    under "seconds".
    """
    import torch

    from cola.models import context_length
    from cola.stages.filters import sequence_perplexities

    if not 0 <= drop_fraction < 1:
        raise ColaError(f"drop_fraction must be in [0, 1), got {drop_fraction!r}")
    if not 1 <= prompt_tokens < sequence_length:
        raise ColaError(f"prompt_tokens must be between 1 and sequence_length - 1, got {prompt_tokens}")
    limit = context_length(model)
    if limit is not None and sequence_length > limit:
        raise ColaError(f"sequence_length {sequence_length} is beyond the model's context of {limit} tokens")
    if k < 1:
        raise ColaError(f"k must be at least 1, got {k}")
    usable, usable_index = prompt_ids(tokenizer, prompts, prompt_tokens)
    if not usable:
        raise ColaError(f"no prompt has {prompt_tokens} tokens: give longer prompts or lower prompt_tokens")
    n = math.ceil(round(k / (1 - drop_fraction), 9))
    starts = [usable[i % len(usable)] for i in range(n)]  # n prompts of P tokens: no padding
    device = input_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    new_tokens = sequence_length - prompt_tokens
    start = time.perf_counter()
    chunks: list[torch.Tensor] = []
    with (torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode(),
          single_threaded(), progress_bar(total=n, quiet=quiet, desc="self-generating", unit="seq") as bar):
        torch.manual_seed(seed)
        for begin in range(0, n, batch_size):
            batch = starts[begin : begin + batch_size]
            written = generate_new_tokens(model, batch, pad_token_id=pad, do_sample=True, temperature=temperature,
                                          top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                                          max_new_tokens=new_tokens, min_new_tokens=new_tokens)  # (B, N)
            chunks.append(torch.cat([torch.tensor(batch, dtype=torch.long), written.cpu()], dim=1))  # (B, L)
            bar.update(len(batch))
    sequences = torch.cat(chunks)  # (n, L)
    if sequences.shape[1] != sequence_length:  # generation stopped early despite min_new_tokens
        raise ColaError(f"generation returned {sequences.shape[1]} tokens instead of {sequence_length}")
    generate_seconds = time.perf_counter() - start
    ids = sequences.tolist()
    start = time.perf_counter()
    perplexity = sequence_perplexities(model, ids, batch_size=batch_size, pad_token_id=pad or 0, quiet=quiet)
    order = np.lexsort((np.arange(n), perplexity))  # lowest perplexity first; ties: generation order
    kept = np.sort(order[:k])
    dropped = np.sort(order[k:])
    report = {"generated": n, "kept": k, "dropped": n - k, "drop_fraction": drop_fraction,
              "prompt_tokens": prompt_tokens, "distinct_prompts": min(len(usable), n),
              "prompt_index": [usable_index[i % len(usable)] for i in range(n)], "batch_size": batch_size,
              "sampling": {"temperature": temperature, "top_p": top_p, "top_k": top_k,
                           "repetition_penalty": repetition_penalty},
              "perplexity_kept": _summary(perplexity[kept]), "perplexity_dropped": _summary(perplexity[dropped]),
              "kept_indices": kept.tolist(), "perplexities": perplexity.round(4).tolist(),
              "seconds": {"generate": round(generate_seconds, 3),
                          "score": round(time.perf_counter() - start, 3)}}
    log.info("self-generated %d sequences of %d tokens, kept %d (perplexity %.2f kept vs %.2f dropped)", n,
             sequence_length, k, perplexity[kept].mean(), perplexity[dropped].mean() if n > k else math.nan)
    return [ids[i] for i in kept], report


def write_self_generated(cola: COLA, config: CurateConfig, generation: dict[str, Any]) -> None:
    """The self_generated strategy: prompts from a seeded shuffle of the processed pool, the model's sampled
    continuations, the highest-perplexity ones dropped; written like any curation (pool = all generated)."""
    seed = config.seed
    check_curate_output(cola.output_dir)
    timings: dict[str, float] = {}
    pool = cola.process(load_sources(config, timings), config, timings, check_size=False)
    processed = pool.candidates
    if not processed:
        raise ColaError("self_generated needs prompts but Stage 2 left no candidate in the pool")
    order = np.random.default_rng(seed).permutation(len(processed))
    ids, report = generate_self_calibration(
        cola.model, cola.tokenizer, [processed[i].input_ids for i in order], config.num_samples,
        config.sequence_length, seed=seed, quiet=cola.quiet, **generation)
    for step, seconds in report.pop("seconds").items():
        timings[f"self_generation_{step}"] = seconds
    kept = set(report["kept_indices"])
    samples = [SampleRecord(text=cola.tokenizer.decode(seq, clean_up_tokenization_spaces=False),
                            dataset_name=SELF_GENERATED, capability_scores={}, format_enhanced=False,
                            selection_index=index, selection_method="self_generated_low_perplexity")
               for index, seq in zip(report["kept_indices"], ids)]
    generated = report["generated"]
    pool_table = PoolTable(dataset_name=[SELF_GENERATED] * generated, capability=["generated"] * generated,
                           num_tokens=[config.sequence_length] * generated,
                           selected=[i in kept for i in range(generated)],
                           extra={"perplexity": report["perplexities"],
                                  "prompt_pool_index": [int(order[i]) for i in report.pop("prompt_index")]})
    stages = {**stages_run(config), "stage3_activation_selection": "off: replaced by self-generated text",
              "selection_method": SELF_GENERATED}
    manifest = Manifest(
        command="curate_strategy", model=model_record(cola.model, cola.tokenizer, cola.model_name_or_path),
        seed=seed, settings=config.as_dict(), generation_settings=generation, stages=stages,
        sources=[s.describe() for s in pool.sources], stage2=pool.report, generation=report,
        num_samples=len(samples), sample_tokens=sum(len(x) for x in ids), timings=timings,
        extra=cola.manifest_extra)
    write_outputs(cola.output_dir, samples=samples, input_ids=[np.asarray(x, dtype=np.int32) for x in ids],
                  pool=pool_table, manifest=manifest)
