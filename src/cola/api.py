"""class COLA: one curation run as named steps in data-flow order (the seed's Python interface).

    load (`prepare_inputs`: the sources, Stage 1's reference sets; everything checked before the model works)
    -> process (Stage 2: format, filter, pack; the reference probes made the same way)      -> `Pool`
    -> embed (the pool's activation features and the probes'; only when a step needs them)  -> `PoolFeatures`
    -> plan mixture (Stage 1: coverage scores -> per-dataset quotas)                        -> `MixturePlan`
    -> select (Stage 3: a selection method within the quotas)                               -> `Selection`
    -> export (`cola.export`: samples, HF dataset, pool table, manifest, written as one set)

Stage 1 runs after Stage 2 on purpose: it scores the processed samples' activations, the same features Stage 3
then clusters. Each step reads only what the previous ones returned. By default a general run has no Stage 1 and
a random Stage 3, so embed and plan mixture do nothing (`CurateConfig.stage1`, `SelectionConfig.method`: no
selection kept more than a random pick on the measured models, docs/results/selection_*).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cola.config import LENGTH_MODES, SELECTION_METHODS, SKETCH_SELECTION_METHODS, CurateConfig, ModelConfig
from cola.data.memory import specs_of
from cola.data.sources import Source
from cola.errors import ColaError, unknown_choice
from cola.output_dir import check_folder, default_work_dir
from cola.progress import progress_bar
from cola.export import Manifest, PoolTable, SampleRecord, model_record, write_outputs
from cola.inputs import RunInputs as RunInputs, check_output_dir as check_output_dir, prepare_inputs
from cola.pool import Pool as Pool, PoolFeatures as PoolFeatures
from cola.schema import convert

if TYPE_CHECKING:
    from cola.activations import Extraction
    from cola.stages.mixture import MixturePlan
    from cola.stages.select import Selection

log = logging.getLogger(__name__)


def stages_run(config: CurateConfig) -> dict[str, Any]:
    """What each stage did in this run, so nobody mistakes a partly curated set for a fully curated one."""
    return {"stage1_dataset_selection": ("coverage scores and per-dataset quotas" if config.stage1
                                         else "off: the named datasets selected as one pool"),
            "stage2_processing": (("format, reasoning generation, " if config.process.generate_reasoning
                                   else "format, ") + f"quality filters, length {config.process.length}: "
                                  + LENGTH_MODES[config.process.length]
                                  if config.process.enabled else "off: texts cut to sequence_length"),
            "stage3_activation_selection": SELECTION_METHODS[config.selection_method],
            "selection_method": config.selection_method}


class COLA:
    """Curate a calibration set for compressing `model`.

    >>> cola = COLA(model=model, tokenizer=tokenizer, available_datasets=["gsm8k", "c4"],
    ...             target_capabilities=["math", "general"], output_dir="out")
    >>> samples = cola.run(num_samples=128, sequence_length=2048)
    """

    def __init__(self, *, model: Any = None, tokenizer: Any = None, available_datasets: Any = ("embedded",),
                 target_capabilities: str | Sequence[str] | None = None, output_dir: str | Path = "cola_output",
                 model_name_or_path: str | None = None, quiet: bool = False,
                 timings: dict[str, float] | None = None, manifest_extra: dict[str, Any] | None = None,
                 feature_cache: str | Path | None = None, work_dir: str | Path | None = None,
                 model_config: ModelConfig | None = None, **settings: Any) -> None:
        """`settings` are any other CurateConfig fields (deployment_type, process, selection, stage1, …);
        `manifest_extra` entries are added to the manifest (e.g. the experiment strategy that asked for it);
        `feature_cache` is a folder where the pool's activation features are kept and reused by later runs with
        the same model, pool and settings (`cola.feature_cache`; None: none kept beyond the run).
        `work_dir` holds what a run keeps while it works (without a feature cache, the pool's features, chunk by
        chunk, so that a killed run, run again, resumes); default: `.NAME.cola-work` beside output_dir NAME,
        removed when the run succeeds (a folder given here is kept). `model_config`: how `model` was loaded, so
        that `executor="ray"` workers load their own replicas (without it `model` is shipped to them).

        `available_datasets`: one dataset or a list of them, each a name, a path or in-memory data — a
        `datasets.Dataset` or `IterableDataset`, a list of texts or of dicts, a `(data, "math")` pair or
        `cola.InMemory(data, capability=..., fields=...)` (`cola.data.memory`: written once to a content-named
        file in cola's cache and read from there like any file).

        Every argument is checked here (ColaError naming it): `target_capabilities` takes one name or a list of
        names, settings take their CurateConfig types
        (`selection` a SelectionConfig, `process` a ProcessConfig, …; a bool is not a number).
        """
        valid = {f.name for f in dataclasses.fields(CurateConfig)} - {"datasets", "target_capabilities"}
        unknown = sorted(set(settings) - valid)
        if unknown:
            raise unknown_choice("COLA setting", unknown[0], valid)
        if isinstance(model, (str, Path)):
            raise ColaError(f"model must be a loaded causal language model, got the name {str(model)!r}: load it "
                            f"first, model, tokenizer = cola.models.load_model({str(model)!r})")
        if not callable(model) or not callable(getattr(model, "parameters", None)):
            raise ColaError(f"model must be a loaded causal language model (a torch module, e.g. from "
                            f"cola.models.load_model), got {type(model).__name__} {model!r:.60}")
        if not callable(tokenizer) or not callable(getattr(tokenizer, "get_vocab", None)):
            raise ColaError(f"tokenizer must be the model's loaded tokenizer (a transformers tokenizer), got "
                            f"{type(tokenizer).__name__} {tokenizer!r:.60}")
        def check(value: Any, hint: Any, name: str) -> Any:
            return convert(value, hint, name, source="COLA", python=True)

        model_name_or_path = check(model_name_or_path, str | None, "model_name_or_path")
        quiet = check(quiet, bool, "quiet")
        timings = check(timings, dict[str, float] | None, "timings")
        manifest_extra = check(manifest_extra, dict[str, Any] | None, "manifest_extra")
        self.feature_cache = check(feature_cache, Path | str | None, "feature_cache")
        work_dir = check(work_dir, Path | str | None, "work_dir")
        self.model_config = None if model_config is None else check(model_config, ModelConfig, "model_config")
        self._model_key: str | None = None
        self.model = model
        self.tokenizer = tokenizer
        datasets = specs_of(available_datasets)  # in-memory data becomes a content-named file in cola's cache
        targets = check(target_capabilities, tuple[str, ...] | None, "target_capabilities")
        # One validated settings object; run() only fills in num_samples and sequence_length.
        self.settings = CurateConfig(datasets=datasets, target_capabilities=targets or None, **settings)
        self.output_dir = check_output_dir(output_dir)
        check_folder(self.feature_cache, "feature_cache")
        check_folder(work_dir, "work_dir")
        self.keep_work_dir = work_dir is not None
        self.work_dir = Path(work_dir) if work_dir is not None else default_work_dir(self.output_dir)
        self.model_name_or_path = model_name_or_path or getattr(model, "name_or_path", type(model).__name__)
        self.quiet = quiet
        self.plots_report: list[str] = []  # the last run's figures drawn, and those not drawn with the reason
        self.timings = dict(timings or {})
        self.manifest_extra = dict(manifest_extra or {})

    @classmethod
    def from_config(cls, config: CurateConfig, *, model: Any, tokenizer: Any, output_dir: str | Path,
                    **kwargs: Any) -> COLA:
        """A COLA whose settings are those of `config` (num_samples and sequence_length go to run())."""
        convert(config, CurateConfig, "config", source="COLA.from_config", python=True)
        settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        return cls(model=model, tokenizer=tokenizer, output_dir=output_dir,
                   available_datasets=settings.pop("datasets"),
                   target_capabilities=settings.pop("target_capabilities"), **settings, **kwargs)

    def config(self, num_samples: int, sequence_length: int) -> CurateConfig:
        """The validated settings of a run (raises ColaError on bad values)."""
        return dataclasses.replace(self.settings, num_samples=num_samples, sequence_length=sequence_length)

    @staticmethod
    def load(config: CurateConfig, output_dir: str | os.PathLike[str]) -> RunInputs:
        """The load step (`cola.inputs.prepare_inputs`): sources and reference sets, everything checked."""
        return prepare_inputs(config, output_dir)

    def run(self, num_samples: int = 128, sequence_length: int = 2048, *,
            inputs: RunInputs | None = None, plots: bool = False) -> list[dict[str, Any]]:
        """Curate `num_samples` calibration samples, write them to `output_dir`, and return them; with `plots`,
        draw the run's figures into output_dir/cola_plots (`cola.plots`; what was drawn or skipped, and why, is in
        `plots_report`).

        Everything the run reads is resolved and checked first (`prepare_inputs`; the CLI does it before it
        loads the model and passes the result as `inputs`), then what the model decides (context length,
        layer indices), and only then does Stage 2 start. A failed run writes nothing. The steps, in data-flow
        order: load, process, embed, plan_mixture, select, export (see the module docstring).
        """
        config = self.config(num_samples, sequence_length)
        plots = convert(plots, bool, "plots", source="COLA.run", python=True)
        if inputs is None:
            inputs = self.load(config, self.output_dir)
        elif (inputs.config, inputs.output_dir) != (config, self.output_dir):
            raise ColaError("run(inputs=...) was prepared for other settings or another output_dir: call "
                            "prepare_inputs with this run's config and output_dir")
        self._check_model(config)
        timings = dict(inputs.timings)
        try:
            pool = self.process(inputs.sources, config, timings, references=inputs.references)
            features = self.embed(pool, config, timings)
            plan = self.plan_mixture(pool, features, inputs, config, timings)
            selection = self.select(pool, features, plan, config)
            samples = self.export(pool, plan, selection, config, timings)
        except BaseException:  # a failed run keeps its finished feature chunks (to resume), and nothing else
            if not self.keep_work_dir and not self.work_features.exists():
                shutil.rmtree(self.work_dir, ignore_errors=True)
            raise
        self.plots_report = []
        if plots:
            from cola.plots import write_plots

            written, skipped = write_plots(self.output_dir, config.seed)
            self.plots_report = [f"drew {p}" for p in written] + [f"not drawn: {reason}" for reason in skipped]
            for line in self.plots_report:
                log.debug(line)  # `cola curate` prints them; Python callers have plots_report
        return samples

    def process(self, sources: Sequence[Source], config: CurateConfig, timings: dict[str, float], *,
                references: dict[str, Source] | None = None, check_size: bool = True) -> Pool:
        """Stage 2, or (ablation) only each text cut to the sequence length; then each of Stage 1's reference
        sets formatted and cut as Stage 2 formats and cuts (its probes). Seconds are added to `timings`.

        With `check_size`, a pool smaller than num_samples is a ColaError saying where the candidates went.
        """
        from cola.stages.process import process_sources, reference_probes, truncate_to_length

        start = time.perf_counter()
        if config.process.enabled:
            candidates, report = process_sources(sources, self.tokenizer, config.sequence_length, config.process,
                                                 model=self.model, quiet=self.quiet, spill_dir=self.work_dir)
        else:
            candidates = []
            for index, source in enumerate(sources):
                candidates.extend(dataclasses.replace(p, source=index) for p in truncate_to_length(
                    self.tokenizer, source.texts, config.sequence_length))
            report = {"enabled": False, "note": "each text cut to at most sequence_length tokens"}
        timings["stage2_process"] = time.perf_counter() - start
        if check_size and len(candidates) < config.num_samples:
            raise ColaError(f"num_samples {config.num_samples} is larger than the pool of {len(candidates)} "
                            f"candidates after Stage 2 ({_describe_losses(sources, report)}); add datasets, raise "
                            "--candidates_per_source, or shorten --sequence_length")
        start = time.perf_counter()
        probes = {capability: tuple(reference_probes(reference, self.tokenizer, config.sequence_length))
                  for capability, reference in (references or {}).items()}
        if probes:
            timings["stage2_reference_probes"] = time.perf_counter() - start
        return Pool(sources=tuple(sources), candidates=candidates, report=report, probes=probes)

    def embed(self, pool: Pool, config: CurateConfig, timings: dict[str, float]) -> PoolFeatures:
        """The pool's activation features when Stage 1 or a model-based Stage 3 needs them (the expensive part;
        with `moments`, its moment sketches from the same pass), and with Stage 1 each capability's probes'
        features in the same projection (seconds to `timings`)."""
        from cola.activations import use_compile
        from cola.executors import executor_fill
        from cola.feature_cache import model_digest, pool_extraction, probe_cache_dir
        from cola.models import input_device
        from cola.stages.select import embed_pool

        if not config.reads_model:
            return PoolFeatures(features=None, stats=None, probes={})
        pad = self.tokenizer.pad_token_id or 0

        def extract(token_ids: list[np.ndarray], cache: str | Path, sketches: bool = False, maxima: bool = False,
                    work: bool = False, spread: bool = False) -> Extraction:  # spread: by config.executor
            # compiled or eager decided once for all the chunks, and keyed: the two round differently
            total = sum(len(ids) for ids in token_ids)
            compiled = use_compile(config.selection.compile, real_tokens=total, device=input_device(self.model),
                                   sketches=sketches or maxima)
            run = dataclasses.replace(config, selection=dataclasses.replace(config.selection,
                                                                            compile="on" if compiled else "off"))
            with progress_bar(total=total, quiet=self.quiet, desc="activations",
                              unit="tok", unit_scale=True) as bar:
                def compute(chunk: list[np.ndarray]) -> Extraction:
                    return embed_pool(self.model, chunk, run.selection, pad_token_id=pad, sketches=sketches,
                                      maxima=maxima, progress=bar)

                if self._model_key is None:
                    self._model_key = model_digest(self.model)
                fill = executor_fill(run, model=self.model, model_config=self.model_config, quiet=self.quiet,
                                     model_key=self._model_key, pad_token_id=pad, sketches=sketches, maxima=maxima,
                                     timings=timings)
                found, hits = pool_extraction(cache, self._model_key, token_ids, run.selection, pad, compute,
                                              sketches=sketches, maxima=maxima, work=work,
                                              best_effort=cache != self.feature_cache, fill=fill if spread else None,
                                              on_hit=lambda chunk: bar.update(sum(len(ids) for ids in chunk)))
            if hits:  # a chunk's seconds are then those of the run that computed it
                timings["feature_cache_hits"] = timings.get("feature_cache_hits", 0) + hits
            return found

        method = config.selection_method
        # the pool's chunks go to the feature cache, or else to this run's work folder: a killed run, run again,
        # computes only the chunks it had not finished
        found = extract(pool.token_ids, self.feature_cache or self.work_features,
                        sketches=method in SKETCH_SELECTION_METHODS, maxima=method == "outlier_coverage",
                        work=self.feature_cache is None, spread=True)
        start = time.perf_counter()
        # The probes are few and the same run after run: kept in cola's cache when no feature cache is given
        probe_cache = self.feature_cache or probe_cache_dir()
        probes = {capability: extract([p.input_ids for p in probes], cache=probe_cache).features
                  for capability, probes in pool.probes.items()} if config.stage1 else {}
        if probes:
            timings["stage1_reference_extract"] = time.perf_counter() - start
        return PoolFeatures(features=found.features, stats=found.stats, probes=probes, sketches=found.sketches)

    @property
    def work_features(self) -> Path:
        """Where a run without a feature cache keeps the pool's features chunk by chunk (in `work_dir`)."""
        return self.work_dir / "features"

    def plan_mixture(self, pool: Pool, features: PoolFeatures, inputs: RunInputs, config: CurateConfig,
                     timings: dict[str, float]) -> MixturePlan:
        """Stage 1: every dataset scored per capability on the pool's and the probes' features, label-less
        sources given the capability they match best, per-dataset quotas. With Stage 1 off: no quotas, and
        the targets `prepare_inputs` decided."""
        from cola.stages.mixture import MixturePlan, plan_mixture

        if not config.stage1:
            return MixturePlan(sources=pool.sources, targets=inputs.targets or (), quotas=None, table={}, report={})
        start = time.perf_counter()
        plan = plan_mixture(features.features, pool.token_ids, pool.names, pool.sources, pool.probes,
                            features.probes, config, vocab_size=len(self.tokenizer),
                            texts=pool.texts, quiet=self.quiet)
        timings["stage1_mixture"] = time.perf_counter() - start
        return plan

    def select(self, pool: Pool, features: PoolFeatures, plan: MixturePlan, config: CurateConfig) -> Selection:
        """Stage 3 within the plan's quotas: activation medoids, a seeded random pick or a peer method."""
        from cola.stages.select import (select_at_random, select_by_moments, select_from_features, select_from_pool,
                                        with_extraction, with_pool_features)

        method, seed, names = config.selection_method, config.selection.seed, pool.names
        if method == "activations":
            return with_extraction(select_from_features(features.features, names, config.num_samples,
                                                        config.selection, quotas=plan.quotas, quiet=self.quiet),
                                   features.stats)
        if method in SKETCH_SELECTION_METHODS:
            return with_extraction(select_by_moments(features.sketches, features.features, names,
                                                     config.num_samples, config.selection, quotas=plan.quotas),
                                   features.stats)
        if method == "random":
            selection = select_at_random(len(pool.candidates), names, config.num_samples, seed=seed,
                                         quotas=plan.quotas)
        else:
            selection = select_from_pool(method, list(pool.texts), list(pool.token_ids), names,
                                         config.num_samples, seed=seed, quotas=plan.quotas)
        if features.stats is not None:  # the pool's activations served Stage 1 alone: the pool table keeps them
            selection = dataclasses.replace(with_pool_features(selection, features.features),
                                            timings={"stage1_extract": features.stats.seconds, **selection.timings})
        return selection

    def export(self, pool: Pool, plan: MixturePlan, selection: Selection, config: CurateConfig,
               timings: dict[str, float]) -> list[dict[str, Any]]:
        """Write the selected samples, the HF dataset, the pool table and the manifest (its timings: the
        model's load, `timings`, the selection's) as one set (`cola.export`), then remove the work directory
        unless the caller named it; return the samples as calibration_samples.json holds them."""
        owner = [plan.sources[i] for i in pool.source_indices.tolist()]
        coverage = plan.report.get("coverage", {})

        def scores(source: Source) -> dict[str, float]:  # Stage 1's scores, else the capability the hints give
            if source.spec.name in coverage:
                return {cap: round(coverage[source.spec.name][cap]["score"], 6) for cap in plan.targets}
            return {cap: float(cap == source.capability) for cap in plan.targets}

        chosen = pool.take(selection.indices)
        samples = [SampleRecord(text=c.text, dataset_name=owner[i].spec.name, capability_scores=scores(owner[i]),
                                format_enhanced=c.format_enhanced, selection_index=int(i),
                                selection_method=selection.method) for i, c in zip(selection.indices, chosen)]
        table = PoolTable(dataset_name=[s.spec.name for s in owner], capability=[s.capability for s in owner],
                          num_tokens=pool.num_tokens,
                          selected=np.isin(np.arange(len(owner)), selection.indices),
                          extra={"cluster": selection.labels,
                                 "distance_to_nearest_selected": selection.nearest_distance.round(6),
                                 "feature": selection.features})
        manifest = Manifest(
            command="curate", model=model_record(self.model, self.tokenizer, self.model_name_or_path),
            seed=config.seed, settings=config.as_dict(), target_capabilities=list(plan.targets),
            stages=stages_run(config), sources=[s.describe() for s in plan.sources], stage1=plan.report,
            stage2=pool.report, num_samples=len(samples), sample_tokens=sum(len(c.input_ids) for c in chosen),
            diagnostics=selection.diagnostics, timings={**self.timings, **timings, **selection.timings},
            extra=self.manifest_extra)
        write_outputs(self.output_dir, samples=samples, input_ids=[c.input_ids for c in chosen], pool=table,
                      manifest=manifest)
        log.debug("wrote %d calibration samples to %s", len(samples), self.output_dir)  # `cola curate` prints it
        if not self.keep_work_dir:  # the set is written: the run's features and spilled pool are done with
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return [s.as_dict() for s in samples]

    def _check_model(self, config: CurateConfig) -> None:
        """What the model decides, checked before Stage 2: the context length, and the layer indices when the
        pool's activations will be extracted."""
        from cola.models import context_length

        limit = context_length(self.model)
        if limit is not None and config.sequence_length > limit:
            raise ColaError(f"sequence_length {config.sequence_length} is beyond the model's context of {limit} "
                            "tokens")
        if config.selection.layers is not None and config.reads_model:
            from cola.activations import resolve_layers
            from cola.models import find_decoder_layers

            resolve_layers(config.selection.layers, len(find_decoder_layers(self.model)[1]))


def _describe_losses(sources: Sequence[Source], stage2: dict[str, Any]) -> str:
    """Where candidates went: records per source, what each filter removed, samples per source."""
    if not stage2.get("filters"):
        return ", ".join(f"{s.spec.name}: {len(s.texts)}" for s in sources)
    removed = ", ".join(f"{name} removed {n}" for name, n in stage2["filters"]["removed"].items())
    per_source = ", ".join(f"{e['name']}: {e['records']} records -> {e['documents_after_filters']} documents -> "
                           f"{e['samples']} samples" for e in stage2["sources"])
    return f"{stage2['filters']['before']} documents, {removed}; {per_source}"
