"""The load step of a curation run: resolve and check everything it reads, before any model work (fail fast).

`prepare_inputs` checks the output directory (creating nothing), parses the dataset specs, checks the side
models a run will load, samples each source's candidates and reads Stage 1's reference sets; `cola.api.COLA.run`
takes the result (`RunInputs`) and the CLI makes it before it loads the model.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cola.config import CurateConfig
from cola.data.sources import Source, SourceSpec, load_source, parse_sources
from cola.errors import ColaError, unknown_choice
from cola.export import check_curate_output, output_directory


def check_output_dir(output_dir: str | os.PathLike[str]) -> Path:
    """The output directory as a Path, checked without creating anything (a failed run must leave none).

    Errors (`cola.export.check_curate_output`): an empty name (which would mean the current directory), a path
    that is a file, the current directory itself, a directory holding files that are not a curate output, a
    nearest existing ancestor that is a file or not writable. The directory is made when the outputs are written.
    """
    if not isinstance(output_dir, (str, os.PathLike)):
        raise ColaError(f"output_dir must be a directory path (a string or a Path), got "
                        f"{type(output_dir).__name__} {output_dir!r}")
    path = output_directory(output_dir, "output_dir")
    check_curate_output(path)
    return path


@dataclass(frozen=True)
class RunInputs:
    """What a curation run reads, resolved and checked before any model work (`prepare_inputs`)."""

    config: CurateConfig
    output_dir: Path
    sources: tuple[Source, ...]      # each dataset's sampled candidates
    references: dict[str, Source]    # Stage 1: probed capability -> its reference set (empty with Stage 1 off)
    targets: tuple[str, ...] | None  # known now (given, or Stage 1 off); None: Stage 1 decides them
    timings: dict[str, float]        # seconds: load_sources, load_references


def source_specs(config: CurateConfig) -> list[SourceSpec]:
    """The parsed dataset specs; with a field mapping, its fields are the text fields of every file or hub
    source that names none."""
    specs = parse_sources(config.datasets)
    mapping = config.process.field_mapping
    if mapping:
        specs = [dataclasses.replace(s, fields=tuple(f for _, f in mapping))
                 if s.kind != "embedded" and s.fields is None else s for s in specs]
    return specs

def load_sources(config: CurateConfig, timings: dict[str, float], *,
                 specs: list[SourceSpec] | None = None) -> list[Source]:
    """Each dataset's seeded sample of at most candidates_per_source texts (seconds added to `timings`)."""
    start = time.perf_counter()
    sources = [load_source(spec, max_candidates=config.candidates_per_source, seed=config.seeds.candidates)
               for spec in (source_specs(config) if specs is None else specs)]
    timings["load_sources"] = time.perf_counter() - start
    return sources


def prepare_inputs(config: CurateConfig, output_dir: str | os.PathLike[str]) -> RunInputs:
    """Resolve and check everything a run reads, before any model loads or computes (fail fast).

    In order: the output directory (not created), the dataset specs, Stage 1's reference specs for the given
    targets, the sentence embedder and reasoning model named, the executor (Ray installed, its address
    answering), the sources (a hub source first checks that the hub is reachable), then the reference sets of
    every capability Stage 1 will probe (a hub reference the hub cannot serve names `--reference
    CAPABILITY=PATH`). Raises ColaError on the first problem; writes nothing.
    """
    from cola.stages.mixture import load_references, probed_capabilities, reference_spec

    path = check_output_dir(output_dir)
    specs = source_specs(config)
    if config.stage1:
        for capability in (*(config.target_capabilities or ()), config.targeted_capability):
            if capability:  # a capability without any reference set fails before reading any source
                reference_spec(capability, config)
    _check_side_models(config)
    timings: dict[str, float] = {}
    sources = tuple(load_sources(config, timings, specs=specs))
    if not config.stage1:
        return RunInputs(config=config, output_dir=path, sources=sources, references={},
                         targets=targets_without_stage1(config, sources), timings=timings)
    start = time.perf_counter()
    references = load_references(config, probed_capabilities(config, sources), sources)
    timings["load_references"] = time.perf_counter() - start
    return RunInputs(config=config, output_dir=path, sources=sources, references=references,
                     targets=config.target_capabilities, timings=timings)


def _check_side_models(config: CurateConfig) -> None:
    """The optional models a run loads later (Stage 1's sentence embedder, Stage 2's reasoning model) exist or
    can be fetched, and the executor can run: checked now, not after the pool is processed."""
    from cola.embedder import check_embedder
    from cola.executors import check_executor
    from cola.models import resolve_model_path

    check_executor(config)  # Ray installed, its address answering
    if config.semantic_embedder:
        check_embedder(config.semantic_embedder)
    if config.process.enabled and config.process.generate_reasoning and config.process.reasoning_model:
        try:
            resolve_model_path(config.process.reasoning_model, quiet=True)
        except ColaError as exc:
            raise ColaError(f"--reasoning_model {config.process.reasoning_model}: {exc}") from exc


def targets_without_stage1(config: CurateConfig, sources: Sequence[Source]) -> tuple[str, ...]:
    """With Stage 1 off nothing scores the sources, so capabilities are the hints alone (a label, the catalog,
    the embedded part, else "general"): the targets are as given, each carried by some source, else theirs."""
    present = tuple(dict.fromkeys(s.capability for s in sources))
    if config.target_capabilities is None:
        return present
    unserved = [c for c in config.target_capabilities if c not in present]
    if len(unserved) == 1:
        raise ColaError(f"{unknown_choice('target capability (no dataset serves it)', unserved[0], present)}. "
                        f"Stage 1 is off, so capabilities come only from labels and the catalog: label a "
                        f"source SOURCE@{unserved[0]}")
    if unserved:
        raise ColaError(f"no dataset serves the target capabilities {', '.join(map(repr, unserved))} (the datasets "
                        f"carry {', '.join(present)}). Stage 1 is off, so capabilities come only from labels and "
                        f"the catalog: label sources SOURCE@CAPABILITY")
    return config.target_capabilities
