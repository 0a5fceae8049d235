"""The experiment grid's settings: a strict YAML file.

An unknown key is an error that lists the valid ones; every value, nested ones included, is checked against
its field's type hint (`cola.schema`), so `seeds: "0, 1"` is a one-line error naming `seeds`, the expected
type and the value; method options are checked against the types of the methods' configs
(`compress.methods.option_hint`), a variant's settings against CurateConfig's fields, its generation settings
against those of `generate_self_calibration`. The calibration, evaluation and plots sections and a variant's curation
settings are built by the one strict loader, `cola.settings.build`. `calibration.settings` are curation settings
every strategy gets (a variant's own override them, key by key); neither may set a seed (each cell's seed, one
of `seeds`, seeds every stage: `cola.config.stage_seeds`) nor a key the calibration section owns. Labels (the name,
strategies, variants, methods) name folders and files in the work directory, so each must be a plain name
(`store.plain_name`).

```yaml
name: smollm2_cpu
model: embedded
data_dir: ../../shared/data          # relative paths are relative to this file
seeds: [0, 1, 2]
strategies: [random_c4, random_mixed, cola, text_clusters]
baseline: random_c4                  # paired differences are taken against this strategy
compare_to: [random_mixed]           # optional: and against these
variants:                            # optional: a built-in strategy with other curation settings, by label
  cola_plain: {strategy: cola, process: {chat_template: "off"}}
  cola_n32: {strategy: cola, num_samples: 32}   # a variant may also set its own calibration set size
calibration: {num_samples: 128, sequence_length: 512, candidates_per_source: 300,
              datasets: [c4/c4_en_train_first1000.jsonl, gsm8k/train.jsonl],
              settings: {process.chat_template: "off"}}  # optional: every strategy's curation settings
methods:
  wanda50: {method: wanda, sparsity: 0.5}
evaluation: {tasks: [wikitext2, hellaswag], limits: {hellaswag: 500}}
trust_remote_code: false             # load models whose code comes from the hub (also --trust_remote_code)
confirm_run_unsafe_code: false       # let tasks run model-written code (also --confirm_run_unsafe_code)
```
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cola.errors import ColaError, unknown_choice
from cola.experiment.store import plain_name
from cola.io import read_mapping
from cola.schema import convert, convert_fields
from cola.settings import build

SOURCE = "experiment config"


@dataclass(frozen=True, kw_only=True)
class CalibrationSettings:
    """What every strategy curates from: the same pools, sample count and length."""

    num_samples: int = 128
    sequence_length: int = 512
    candidates_per_source: int = 300
    datasets: tuple[str, ...] = ()          # file paths (relative to data_dir) or dataset names
    references: dict[str, str] = dataclasses.field(default_factory=dict)  # capability -> probe file
    random_source: str = "c4"               # the one source `random_c4` draws from
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # CurateConfig settings of every strategy

    def __post_init__(self) -> None:
        _at_least(1, num_samples=self.num_samples, sequence_length=self.sequence_length,
                  candidates_per_source=self.candidates_per_source, where="calibration")


@dataclass(frozen=True, kw_only=True)
class MethodSettings:
    """One compression column of the grid: a `cola compress` method and its options."""

    label: str
    method: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class VariantSettings:
    """A built-in strategy run with other curation settings (CurateConfig fields), named by its own label."""

    label: str
    strategy: str
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    generation: dict[str, Any] = dataclasses.field(default_factory=dict)  # self_generated's sampling
    num_samples: int | None = None          # the calibration set's size, if not the calibration section's


@dataclass(frozen=True, kw_only=True)
class EvaluationSettings:
    tasks: tuple[str, ...] = ("wikitext2",)
    limits: dict[str, int] = dataclasses.field(default_factory=dict)   # task -> items (windows for ppl)
    window: int = 512

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ColaError(f"{SOURCE}: evaluation.tasks is empty")
        _at_least(1, window=self.window, **{f"limits.{task}": n for task, n in self.limits.items()},
                  where="evaluation")


@dataclass(frozen=True, kw_only=True)
class PlotSettings:
    activation_map_strategy: str = "cola"   # whose candidate pool (with activation features) is mapped
    spectrum_module: str | None = None      # None: the middle decoder layer's mlp.down_proj


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    name: str
    model: str = "embedded"
    dtype: str = "float32"                  # compression and evaluation precision
    device: str = "cpu"
    data_dir: Path | None = None
    seeds: tuple[int, ...] = (0,)
    strategies: tuple[str, ...] = ("random_c4", "cola")
    baseline: str = "random_c4"
    compare_to: tuple[str, ...] = ()        # further strategies the report takes paired differences against
    calibration: CalibrationSettings = dataclasses.field(default_factory=CalibrationSettings)
    methods: tuple[MethodSettings, ...] = ()
    variants: tuple[VariantSettings, ...] = ()
    evaluation: EvaluationSettings = dataclasses.field(default_factory=EvaluationSettings)
    plots: PlotSettings = dataclasses.field(default_factory=PlotSettings)
    keep_models: bool = False               # keep each compressed model after it was evaluated
    isolate_cells: bool = True              # run each cell in a fresh process (a crash stays in its cell)
    trust_remote_code: bool = False         # load models (dense and compressed) with code from the hub
    confirm_run_unsafe_code: bool = False   # let evaluation tasks execute code the model wrote

    def __post_init__(self) -> None:
        from cola.compress.methods import METHODS, configure
        from cola.models import DTYPES
        from cola.experiment.strategies import STRATEGIES

        self._check_labels()
        if self.dtype not in DTYPES:
            raise unknown_choice("dtype (experiment config `dtype`)", self.dtype, DTYPES)
        if not self.seeds:
            raise ColaError("experiment config: `seeds` is empty")
        _at_least(0, **{f"seeds[{i}]": seed for i, seed in enumerate(self.seeds)}, where="")
        for key, values in (("seeds", self.seeds), ("strategies", self.strategies)):
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            if twice:
                raise ColaError(f"experiment config: `{key}` lists {', '.join(twice)} more than once")
        for variant in self.variants:
            self._check_variant(variant)
        names = [*STRATEGIES, *(v.label for v in self.variants)]
        for name in (*self.strategies, self.baseline, *self.compare_to):
            if name not in names:
                raise unknown_choice("strategy", name, names)
        for name in (n for n in self.strategies if n in STRATEGIES and self.calibration.settings):  # variants: above
            self._check_curation(name, f"experiment config: calibration.settings (strategy {name})")
        for key, name in [("baseline", self.baseline), *(("compare_to", c) for c in self.compare_to)]:
            if name not in self.strategies:
                raise ColaError(f"experiment config: {key} {name!r} is not among the strategies "
                                f"({', '.join(self.strategies)})")
        if not self.methods:
            raise ColaError("experiment config: `methods` is empty")
        for run in self.methods:
            if run.method not in METHODS:
                raise unknown_choice(f"method (in methods.{run.label})", run.method, METHODS)
            try:  # unknown or invalid options fail now, not mid-grid
                configure(run.method, run.options)
            except ColaError as exc:
                raise ColaError(f"experiment config: methods.{run.label}: {exc}") from exc

    def _check_labels(self) -> None:
        """Every label that becomes a folder or file name is a plain name; no two differ only in case (they
        would share files on macOS and Windows)."""
        plain_name(self.name, "experiment config: `name`")
        labels = {"variant label": [v.label for v in self.variants], "method label": [m.label for m in self.methods],
                  "strategy": list(self.strategies)}
        for kind, names in labels.items():
            for label in names:
                plain_name(label, f"experiment config: {kind}")
        for kind in ("method label", "variant label"):
            folded: dict[str, str] = {}
            for label in labels[kind]:
                if folded.setdefault(label.casefold(), label) != label:
                    raise ColaError(f"experiment config: {kind}s {folded[label.casefold()]!r} and {label!r} differ "
                                    "only in case; they would share files on a case-insensitive file system")

    def _check_variant(self, variant: VariantSettings) -> None:
        """Fail now, not mid-grid: the label is new, the strategy exists and its settings make a valid config."""
        from cola.experiment.strategies import STRATEGIES

        where = f"experiment config: variants.{variant.label}"
        if variant.label in STRATEGIES:
            raise ColaError(f"{where}: the label is a built-in strategy; name the variant differently")
        if variant.strategy not in STRATEGIES:
            raise unknown_choice(f"strategy (in variants.{variant.label})", variant.strategy, STRATEGIES)
        self._check_curation(variant.label, where)

    def _check_curation(self, name: str, where: str) -> None:
        """Fail now, not mid-grid: strategy or variant `name` with the settings `recipe` gives it is valid."""
        from cola.experiment.strategies import check_generation, strategy_config

        strategy, settings, generation = self.recipe(name)
        calibration = self.calibration
        try:
            check_generation(strategy, generation)
            strategy_config(strategy, datasets=calibration.datasets or ("embedded",),
                            num_samples=self.num_samples(name), sequence_length=calibration.sequence_length,
                            seed=0, random_source=calibration.random_source, **settings)
        except ColaError as exc:
            raise ColaError(f"{where}: {exc}") from exc

    def recipe(self, name: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """(built-in strategy, curation settings, generation settings) of a strategy or variant label."""
        variant = next((v for v in self.variants if v.label == name), None)
        shared = _undotted(self.calibration.settings)
        if variant is None:
            return name, shared, {}
        return variant.strategy, _merged(shared, _undotted(variant.settings)), dict(variant.generation)

    def num_samples(self, name: str) -> int:
        """The calibration set size of a strategy or variant label: the variant's own, else the calibration
        section's."""
        variant = next((v for v in self.variants if v.label == name), None)
        own = variant.num_samples if variant else None
        return self.calibration.num_samples if own is None else own

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["data_dir"] = str(self.data_dir) if self.data_dir else None
        return data


def _at_least(minimum: int, *, where: str, **values: int) -> None:
    for key, value in values.items():
        if value < minimum:
            raise ColaError(f"{SOURCE}: {where + '.' if where else ''}{key} must be at least {minimum}, got {value}")


YAML_SHAPES = {  # fields the file writes as `label: {...}` mappings, built into tuples of settings below
    "methods": dict[str, dict[str, Any]],
    "variants": Optional[dict[str, dict[str, Any]]],
}
CALIBRATION_OWNED = frozenset(f.name for f in dataclasses.fields(CalibrationSettings))


def _method(label: str, spec: dict[str, Any]) -> MethodSettings:
    """methods.LABEL: `method` and its options, each checked against the option's type (names and values are
    checked by `cola.compress.methods.configure` when the config is built)."""
    from cola.compress.methods import option_hint

    where = f"methods.{label}"
    if "method" not in spec:
        raise ColaError(f"{SOURCE}: {where} needs a `method` key")
    method = convert(spec["method"], str, f"{where}.method", source=SOURCE)
    options = {name: convert(value, option_hint(name) | None, f"{where}.{name}", source=SOURCE)
               for name, value in spec.items() if name != "method"}
    return MethodSettings(label=label, method=method, options=options)


def _variant(label: str, spec: dict[str, Any]) -> VariantSettings:
    """variants.LABEL: a built-in `strategy`, CurateConfig settings (types checked against CurateConfig's
    fields, nested ones as a mapping or a dotted name) and self_generated's `generation` settings."""
    where = f"variants.{label}"
    if "strategy" not in spec:
        raise ColaError(f"{SOURCE}: {where} needs a `strategy` key (a built-in strategy)")
    strategy = convert(spec["strategy"], str, f"{where}.strategy", source=SOURCE)
    generation = convert_fields(spec.get("generation") or {}, generation_settings(), f"{where}.generation",
                                source=SOURCE)
    settings = {k: v for k, v in spec.items() if k not in ("strategy", "generation", "num_samples")}
    num_samples = convert(spec["num_samples"], int, f"{where}.num_samples", source=SOURCE) \
        if "num_samples" in spec else None
    if num_samples is not None:
        _at_least(1, num_samples=num_samples, where=where)
    _check_curate_settings(settings, where)
    return VariantSettings(label=label, strategy=strategy, settings=settings, generation=generation,
                           num_samples=num_samples)


def _check_curate_settings(settings: Mapping[str, Any], where: str) -> None:
    """Curation settings (a variant's, or `calibration.settings`) make a valid CurateConfig, set no seed and
    no key the calibration section owns; else a one-line ColaError naming `where`."""
    from cola.config import CurateConfig

    for key in settings:
        if str(key).partition(".")[0] in CALIBRATION_OWNED:
            raise ColaError(f"{SOURCE}: {where} sets {key!r}, which the `calibration` section sets for every "
                            "strategy alike")
    for path in _seed_paths(_undotted(settings)):
        raise ColaError(f"{SOURCE}: {where} sets {path!r}: each cell's seed, one of the grid's `seeds`, seeds every "
                        "stage")
    try:  # the one strict loader; the settings go on as given (the strategy fixes some of them)
        build(CurateConfig, _undotted(settings), source=SOURCE, path=where)
    except ColaError as exc:
        if where in str(exc):
            raise
        raise ColaError(f"{SOURCE}: {where}: {exc}") from exc


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Nested settings `base` with `override`'s values put over them, key by key at every depth."""
    merged = dict(base)
    for key, value in override.items():
        inner = merged.get(key)
        merged[key] = _merged(inner, value) if isinstance(value, Mapping) and isinstance(inner, Mapping) else value
    return merged


def _seed_paths(settings: Mapping[str, Any], path: str = "") -> list[str]:
    """The dotted paths of every `seed` key in nested curation settings."""
    found = []
    for key, value in settings.items():
        name = f"{path}{key}"
        if key == "seed":
            found.append(name)
        elif isinstance(value, Mapping):
            found += _seed_paths(value, name + ".")
    return found


def _undotted(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`{"selection.layers": [2]}` as `{"selection": {"layers": [2]}}`, merged with a `selection` mapping."""
    nested: dict[str, Any] = {}
    for key, value in settings.items():
        head, dot, rest = str(key).partition(".")
        if dot:
            value = {rest: value}
        if isinstance(value, Mapping) and isinstance(nested.get(head), Mapping):
            value = {**nested[head], **value}
        nested[head if dot else key] = value
    return nested


def generation_settings() -> type:
    """self_generated's settings as a dataclass for the type check: the keyword-only parameters of
    `generate_self_calibration` that the strategy leaves to the user, each typed as its default."""
    from cola.experiment.self_generated import generate_self_calibration

    set_by_strategy = {"seed", "quiet"}
    parameters = inspect.signature(generate_self_calibration).parameters.values()
    return dataclasses.make_dataclass("GenerationSettings", [
        (p.name, type(p.default)) for p in parameters
        if p.kind is p.KEYWORD_ONLY and p.name not in set_by_strategy and p.default is not p.empty])


def _resolve(base: Path, value: str | os.PathLike[str]) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


FILE_SUFFIXES = (".jsonl", ".json", ".txt", ".parquet", ".csv", ".gz")


def _data_file(root: Path | None, base_dir: Path, spec: str) -> str:
    """A dataset entry (`PATH[@CAPABILITY][#FIELDS]` or a dataset name): a file under data_dir (or the
    config's folder) becomes an absolute path; a name stays as given. Something that looks like a file but
    exists nowhere fails now, not mid-grid."""
    cut = min((i for i in (spec.find("@"), spec.find("#")) if i > 0), default=len(spec))
    file, rest = spec[:cut], spec[cut:]
    for base in (root, base_dir):
        if base is not None and (base / file).exists():
            return str(_resolve(base, file)) + rest
    if Path(file).suffix in FILE_SUFFIXES:
        raise ColaError(f"experiment config: data file {file!r} not found under data_dir "
                        f"{root or '(not set)'} nor next to the config")
    return spec


def config_from_dict(data: dict[str, Any], *, base_dir: Path, data_dir: str | Path | None = None) -> ExperimentConfig:
    """Validate a parsed YAML mapping; relative paths are taken from `base_dir` (the config's folder).

    Raises ColaError (one line) on an unknown key, a value of the wrong type (naming its key path), a label
    that is not a plain name, an unknown strategy, method or option, or a data file that exists nowhere.
    """
    top = convert_fields(data, ExperimentConfig, "", source=SOURCE, hints=YAML_SHAPES)
    if "name" not in top:
        raise ColaError("experiment config: `name` is required (it names the work directory)")
    if data_dir is not None:
        top["data_dir"] = Path(data_dir).resolve()
    elif top.get("data_dir"):
        top["data_dir"] = _resolve(base_dir, top["data_dir"])
    root = top.get("data_dir")

    calibration = top.get("calibration", {})
    calibration["datasets"] = tuple(_data_file(root, base_dir, d) for d in calibration.get("datasets", ()))
    calibration["references"] = {cap: _data_file(root, base_dir, p)
                                 for cap, p in calibration.get("references", {}).items()}
    top["calibration"] = build(CalibrationSettings, calibration, source=SOURCE, path="calibration")
    _check_curate_settings(top["calibration"].settings, "calibration.settings")
    top["methods"] = tuple(_method(label, spec) for label, spec in top.get("methods", {}).items())
    top["variants"] = tuple(_variant(label, spec) for label, spec in (top.get("variants") or {}).items())
    top["evaluation"] = build(EvaluationSettings, top.get("evaluation", {}), source=SOURCE, path="evaluation")
    top["plots"] = build(PlotSettings, top.get("plots", {}), source=SOURCE, path="plots")
    return ExperimentConfig(**top)


def load_experiment_config(path: str | Path, *, data_dir: str | Path | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ColaError(f"experiment config {path} not found")
    data = read_mapping(path, what="experiment config", syntax="YAML", expected="a YAML mapping of settings")
    return config_from_dict(data, base_dir=path.resolve().parent, data_dir=data_dir)
