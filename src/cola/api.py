"""class COLA: wires the stages into one curation run (the seed's Python interface)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cola.config import CurateConfig, SelectionConfig
from cola.data.sources import Source, load_source, parse_sources
from cola.errors import ColaError, unknown_choice
from cola.export import ensure_writable, library_versions, tokenizer_fingerprint, write_outputs

log = logging.getLogger(__name__)

SELECTION_METHOD = "activation_kmeans_medoid"
# What exists today; the manifest says so, so nobody mistakes a cut-to-length pool for a curated one.
STAGES_IMPLEMENTED = {"stage1_dataset_selection": False, "stage2_processing": "truncate_to_length_only",
                      "stage3_activation_selection": True}


class COLA:
    """Curate a calibration set for compressing `model`.

    >>> cola = COLA(model=model, tokenizer=tokenizer, available_datasets=["gsm8k", "c4"],
    ...             target_capabilities=["math", "general"], output_dir="out")
    >>> samples = cola.run(num_samples=128, sequence_length=2048)
    """

    def __init__(self, *, model: Any, tokenizer: Any, available_datasets: Sequence[str] = ("embedded",),
                 target_capabilities: Sequence[str] | None = None, output_dir: str | Path = "cola_output",
                 deployment_type: str = "general", targeted_capability: str | None = None,
                 candidates_per_source: int = 1000, selection: SelectionConfig | None = None,
                 model_name_or_path: str | None = None, quiet: bool = False,
                 timings: dict[str, float] | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.available_datasets = tuple(available_datasets)
        self.target_capabilities = tuple(target_capabilities) if target_capabilities else None
        self.output_dir = Path(output_dir)
        self.deployment_type = deployment_type
        self.targeted_capability = targeted_capability
        self.candidates_per_source = candidates_per_source
        self.selection = selection or SelectionConfig()
        self.model_name_or_path = model_name_or_path or getattr(model, "name_or_path", type(model).__name__)
        self.quiet = quiet
        self.timings = dict(timings or {})

    def config(self, num_samples: int, sequence_length: int) -> CurateConfig:
        """The validated settings of a run (raises ColaError on bad values)."""
        return CurateConfig(datasets=self.available_datasets, target_capabilities=self.target_capabilities,
                            num_samples=num_samples, sequence_length=sequence_length,
                            candidates_per_source=self.candidates_per_source,
                            deployment_type=self.deployment_type, targeted_capability=self.targeted_capability,
                            selection=self.selection)

    def run(self, num_samples: int = 128, sequence_length: int = 2048) -> list[dict[str, Any]]:
        """Curate `num_samples` calibration samples, write them to `output_dir`, and return them."""
        from cola.models import context_length
        from cola.stages.process import truncate_to_length
        from cola.stages.select import select_by_activations

        config = self.config(num_samples, sequence_length)
        limit = context_length(self.model)
        if limit is not None and sequence_length > limit:
            raise ColaError(f"sequence_length {sequence_length} is beyond the model's context of {limit} tokens")
        specs = parse_sources(config.datasets)
        ensure_writable(self.output_dir)
        timings = dict(self.timings)

        start = time.perf_counter()
        sources = [load_source(spec, max_candidates=config.candidates_per_source, seed=config.selection.seed)
                   for spec in specs]
        timings["load_sources"] = time.perf_counter() - start
        targets = self._target_capabilities(config, sources)
        if config.deployment_type == "targeted" or config.targeted_capability:
            log.warning("Stage 1 (dataset selection) is not implemented yet: --deployment_type %s and "
                        "--targeted_capability %s do not change the pool", config.deployment_type,
                        config.targeted_capability)

        start = time.perf_counter()
        texts = [text for source in sources for text in source.texts]
        owner = [source for source in sources for _ in source.texts]
        processed = truncate_to_length(self.tokenizer, texts, sequence_length)
        timings["process"] = time.perf_counter() - start
        if len(processed) < num_samples:
            raise ColaError(f"num_samples {num_samples} is larger than the pool of {len(processed)} candidates "
                            f"({', '.join(f'{s.spec.name}: {len(s.texts)}' for s in sources)}); "
                            "add datasets or raise --candidates_per_source")

        selection = select_by_activations(
            self.model, [p.input_ids for p in processed], [s.spec.name for s in owner], num_samples,
            config.selection, pad_token_id=self.tokenizer.pad_token_id or 0, quiet=self.quiet)
        timings.update(selection.timings)

        samples = [{"text": processed[i].text, "dataset_name": owner[i].spec.name,
                    "capability_scores": {cap: float(cap == owner[i].capability) for cap in targets},
                    "format_enhanced": False, "selection_index": int(i), "selection_method": SELECTION_METHOD}
                   for i in selection.indices]
        pool = {"pool_index": list(range(len(processed))), "dataset_name": [s.spec.name for s in owner],
                "capability": [s.capability for s in owner], "num_tokens": [len(p.input_ids) for p in processed],
                "selected": [False] * len(processed), "cluster": selection.labels.tolist(),
                "distance_to_nearest_selected": selection.nearest_distance.round(6).tolist(),
                "feature": selection.features.tolist()}
        for i in selection.indices:
            pool["selected"][i] = True
        manifest = {
            "tool": "cola", "command": "curate", "model": self.model_name_or_path,
            "model_class": type(self.model).__name__, "model_dtype": str(next(self.model.parameters()).dtype),
            "tokenizer": tokenizer_fingerprint(self.tokenizer), "seed": config.selection.seed,
            "settings": config.as_dict(), "target_capabilities": list(targets), "stages": STAGES_IMPLEMENTED,
            "sources": [s.describe() for s in sources], "num_samples": len(samples),
            "sample_tokens": sum(len(processed[i].input_ids) for i in selection.indices),
            "diagnostics": selection.diagnostics, "libraries": library_versions(),
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }
        write_outputs(self.output_dir, samples=samples, input_ids=[processed[i].input_ids for i in selection.indices],
                      pool=pool, manifest=manifest)
        log.info("wrote %d calibration samples to %s", len(samples), self.output_dir)
        return samples

    @staticmethod
    def _target_capabilities(config: CurateConfig, sources: list[Source]) -> tuple[str, ...]:
        """Target capabilities: as given, or those the sources carry; a given one no source serves is an error."""
        present = tuple(dict.fromkeys(s.capability for s in sources))
        if config.target_capabilities is None:
            return present
        for cap in config.target_capabilities:
            if cap not in present:
                raise unknown_choice("target capability (no dataset serves it)", cap, present)
        return config.target_capabilities
