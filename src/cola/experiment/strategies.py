"""The named calibration-data strategies of the experiment: COLA, its ablations, random baselines and peers.

Each strategy is a set of CurateConfig fields it fixes (on top of the caller's settings), except
self-generation, which writes its own text. Every one writes a normal calibration directory (samples JSON,
HF dataset, pool parquet, manifest with tokenizer fingerprint and the strategy's name) that
`cola.compress.calibration.load_calibration` reads, and every one spends the same token budget:
num_samples sequences of sequence_length tokens (packed windows; cut texts for no_stage2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cola.api import COLA
from cola.config import CurateConfig
from cola.errors import ColaError, unknown_choice
from cola.experiment.self_generated import SELF_GENERATED, write_self_generated

_RANDOM = {"stage1": False, "stage3": False, "process.enabled": True, "selection.method": "random"}
_ALL_ON = {"stage1": True, "stage3": True, "process.enabled": True, "selection.method": "activations"}


@dataclass(frozen=True)
class Strategy:
    """What a strategy is (one line) and the config fields it fixes ("process.enabled" is a nested field)."""

    description: str
    fixed: dict[str, Any] = field(default_factory=dict)


_RECIPES = {
    "random_c4": Strategy("seeded random packed windows from one source (c4 by default), no chat template",
                          {**_RANDOM, "process.length": "pack", "process.chat_template": "off"}),
    "random_mixed": Strategy("seeded random packed windows from the whole mixed pool", _RANDOM),
    "cola": Strategy("COLA: Stage 1 mixture, Stage 2 processing, Stage 3 activation medoids", _ALL_ON),
    "no_stage1": Strategy("COLA without Stage 1: activation medoids over the mixed pool", {**_ALL_ON, "stage1": False}),
    "no_stage2": Strategy("COLA without Stage 2: texts only cut to length", {**_ALL_ON, "process.enabled": False}),
    "no_stage3": Strategy("COLA without Stage 3: a seeded random pick within Stage 1's quotas",
                          {**_ALL_ON, "stage3": False, "selection.method": "random"}),
    "moments": Strategy("cola's compression-aware Stage 3 over the mixed pool: the set whose linear-layer input "
                        "second moments best match the pool's (no Stage 1)",
                        {**_ALL_ON, "stage1": False, "selection.method": "moments"}),
    "cola_moments": Strategy("Stage 1 mixture, Stage 2 processing, Stage 3 second-moment matching within the quotas",
                             {**_ALL_ON, "selection.method": "moments"}),
    "outlier_coverage": Strategy("cola's range-aware Stage 3 over the mixed pool: the set reaching the largest share "
                                 "of the pool's per-channel linear-layer input maxima (no Stage 1)",
                                 {**_ALL_ON, "stage1": False, "selection.method": "outlier_coverage"}),
    "text_clusters": Strategy("COLA-Zero style: TF-IDF k-means over the processed mixed pool, nearest to each "
                              "centroid", {**_ALL_ON, "stage1": False, "selection.method": "text_clusters"}),
    "lexical_diversity": Strategy("ZipCal style: greedy coverage of distinct tokens over the processed mixed pool",
                                  {**_ALL_ON, "stage1": False, "selection.method": "lexical_diversity"}),
    "self_generated": Strategy("Ji et al. (ICLR 2025): the model's own sampled text from short pool prompts, the "
                               "highest-perplexity 20% dropped", _RANDOM),
}
STRATEGIES: dict[str, str] = {name: recipe.description for name, recipe in _RECIPES.items()}


def with_fields(config: CurateConfig, fixed: Mapping[str, Any]) -> CurateConfig:
    """`config` with the given fields replaced; "process.enabled" names a field of a nested config.

    Nested configs are rebuilt first and the whole replaced at once, so validation sees the final combination.
    """
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in fixed.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    top.update({head: dataclasses.replace(getattr(config, head), **values) for head, values in nested.items()})
    return dataclasses.replace(config, **top)


def matching_source(datasets: Sequence[str], wanted: str) -> str:
    """The one dataset spec whose name, spec or path is `wanted` (else whose name contains it)."""
    from cola.data.sources import parse_sources

    specs = parse_sources(datasets)
    matches = ([s for s in specs if wanted in (s.spec, s.name, s.location)]
               or [s for s in specs if wanted in s.name])
    if len(matches) != 1:
        found = "several match" if matches else "none matches"
        raise ColaError(f"random_c4 needs one dataset matching random_source {wanted!r} but {found}; datasets: "
                        f"{', '.join(s.name for s in specs)}")
    return matches[0].spec


_NOT_SETTINGS = frozenset({"datasets", "num_samples", "sequence_length"})  # a strategy's own arguments


def _frozen(value: Any) -> Any:
    """A YAML/JSON value in CurateConfig's shape: lists become tuples, a mapping a tuple of (key, value) pairs."""
    if isinstance(value, Mapping):
        return tuple((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def curation_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """CurateConfig settings with nested ones flattened to dotted names, checked against the config's fields.

    `{"process": {"chat_template": "off"}}` and `{"process.chat_template": "off"}` are the same setting; a
    nested config given as an object (a ProcessConfig) is kept whole. An unknown name is an error listing the
    valid ones.
    """
    defaults = CurateConfig()
    fields = [f.name for f in dataclasses.fields(CurateConfig) if f.name not in _NOT_SETTINGS]
    nested = {name: type(getattr(defaults, name)) for name in fields
              if dataclasses.is_dataclass(getattr(defaults, name))}
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        head, _, rest = key.partition(".")
        if head not in fields:
            raise unknown_choice("curation setting", key, fields)
        if head in nested and not rest and isinstance(value, Mapping):
            items = {f"{head}.{k}": v for k, v in value.items()}
        else:
            items = {key: value}
        for path, item in items.items():
            head, _, rest = path.partition(".")
            if rest:
                if head not in nested:
                    raise ColaError(f"curation setting {head!r} has no fields; {path!r} is not a setting")
                valid = [f.name for f in dataclasses.fields(nested[head])]
                if rest not in valid:
                    raise unknown_choice(f"{head} setting", rest, valid)
            flat[path] = item if dataclasses.is_dataclass(item) else _frozen(item)
    return flat


def strategy_config(name: str, *, datasets: Sequence[str], num_samples: int, sequence_length: int, seed: int,
                    random_source: str = "c4", **settings: Any) -> CurateConfig:
    """The validated CurateConfig of strategy `name`: the caller's settings with the strategy's fields fixed.

    Settings are CurateConfig fields, nested ones as a mapping or a dotted name (see `curation_settings`). A
    field the strategy fixes (stage1, process.enabled, ...) given with another value is an error, not
    silently overridden; a nested config given whole is the base the strategy's fields go into.
    """
    if name not in _RECIPES:
        raise unknown_choice("strategy", name, STRATEGIES)
    settings = curation_settings(settings)
    fixed = {**_RECIPES[name].fixed, "seed": seed}  # every stage seed follows (cola.config.curate.stage_seeds)
    for key, value in settings.items():
        if key in fixed and fixed[key] != value:
            raise ColaError(f"strategy {name!r} fixes {key}={fixed[key]!r}; do not pass {key}={value!r}")
    if name == "random_c4":
        datasets = (matching_source(datasets, random_source),)
    top = {k: v for k, v in settings.items() if "." not in k and k not in fixed}
    dotted = {k: v for k, v in settings.items() if "." in k}
    base = CurateConfig(datasets=tuple(datasets), num_samples=num_samples, sequence_length=sequence_length, **top)
    return with_fields(base, {**dotted, **fixed})


def check_generation(name: str, generation: Mapping[str, Any] | None) -> None:
    """Generation settings (self-generation's sampling) are an error for any strategy but self_generated."""
    if generation and name != SELF_GENERATED:
        raise ColaError(f"generation settings only apply to {SELF_GENERATED}, not to {name!r}")


def curate_strategy(name: str, *, model: Any, tokenizer: Any, datasets: Sequence[str], num_samples: int,
                    sequence_length: int, seed: int, output_dir: str | Path, random_source: str = "c4",
                    candidates_per_source: int = 1000, references: Sequence[tuple[str, str]] = (),
                    quiet: bool = True, generation: Mapping[str, Any] | None = None, label: str | None = None,
                    feature_cache: str | Path | None = None, **settings: Any) -> Path:
    """Write the calibration set of strategy `name` (see STRATEGIES) to `output_dir` and return the directory.

    `seed` seeds everything: which candidates are sampled from each source, the selection and, for
    self_generated, the prompts and the sampling. `settings` are other CurateConfig fields (e.g.
    target_capabilities, process); `generation` holds keyword arguments of
    `cola.experiment.self_generated.generate_self_calibration` (prompt_tokens, drop_fraction, temperature,
    batch_size, …) and is only valid for self_generated. `label` names this configuration of the strategy in
    the manifest (an experiment's variant); it defaults to `name`. `feature_cache`: a folder where the pool's
    activation features are kept for the next strategy curated from the same pool (`cola.feature_cache`).
    """
    check_generation(name, generation)
    config = strategy_config(name, datasets=datasets, num_samples=num_samples, sequence_length=sequence_length,
                             seed=seed, random_source=random_source, candidates_per_source=candidates_per_source,
                             references=tuple(tuple(r) for r in references), **settings)
    cola = COLA.from_config(config, model=model, tokenizer=tokenizer, output_dir=output_dir, quiet=quiet,
                            feature_cache=feature_cache,
                            manifest_extra={"strategy": name, "strategy_description": STRATEGIES[name],
                                            "strategy_label": label or name})
    if name == SELF_GENERATED:
        write_self_generated(cola, config, dict(generation or {}))
    else:
        cola.run(num_samples=num_samples, sequence_length=sequence_length)
    return Path(output_dir)
