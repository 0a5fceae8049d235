"""The experiment grid's settings: a strict YAML file (an unknown key is an error that lists the valid ones).

```yaml
name: smollm2_cpu
model: embedded
data_dir: ../../shared/data          # relative paths are relative to this file
seeds: [0, 1, 2]
strategies: [random_c4, random_mixed, cola, text_clusters]
baseline: random_c4                  # paired differences are taken against this strategy
variants:                            # optional: a built-in strategy with other curation settings, by label
  cola_plain: {strategy: cola, process: {chat_template: "off"}}
calibration: {num_samples: 128, sequence_length: 512, candidates_per_source: 300,
              datasets: [c4/c4_en_train_first1000.jsonl, gsm8k/train.jsonl]}
methods:
  wanda50: {method: wanda, sparsity: 0.5}
evaluation: {tasks: [wikitext2, hellaswag], limits: {hellaswag: 500}}
```
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola.errors import ColaError, unknown_choice


@dataclass(frozen=True, kw_only=True)
class CalibrationSettings:
    """What every strategy curates from: the same pools, sample count and length."""

    num_samples: int = 128
    sequence_length: int = 512
    candidates_per_source: int = 300
    datasets: tuple[str, ...] = ()          # file paths (relative to data_dir) or dataset names
    references: dict[str, str] = dataclasses.field(default_factory=dict)  # capability -> probe file
    random_source: str = "c4"               # the one source `random_c4` draws from


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


@dataclass(frozen=True, kw_only=True)
class EvaluationSettings:
    tasks: tuple[str, ...] = ("wikitext2",)
    limits: dict[str, int] = dataclasses.field(default_factory=dict)   # task -> items (windows for ppl)
    window: int = 512


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
    calibration: CalibrationSettings = dataclasses.field(default_factory=CalibrationSettings)
    methods: tuple[MethodSettings, ...] = ()
    variants: tuple[VariantSettings, ...] = ()
    evaluation: EvaluationSettings = dataclasses.field(default_factory=EvaluationSettings)
    plots: PlotSettings = dataclasses.field(default_factory=PlotSettings)
    keep_models: bool = False               # keep each compressed model after it was evaluated
    isolate_cells: bool = True              # run each cell in a fresh process (a crash stays in its cell)

    def __post_init__(self) -> None:
        from cola.compress.methods import METHODS, resolve_options
        from cola.strategies import STRATEGIES

        if not self.seeds:
            raise ColaError("experiment config: `seeds` is empty")
        for variant in self.variants:
            self._check_variant(variant)
        names = [*STRATEGIES, *(v.label for v in self.variants)]
        for name in (*self.strategies, self.baseline):
            if name not in names:
                raise unknown_choice("strategy", name, names)
        if self.baseline not in self.strategies:
            raise ColaError(f"experiment config: baseline {self.baseline!r} is not among the strategies "
                            f"({', '.join(self.strategies)})")
        if not self.methods:
            raise ColaError("experiment config: `methods` is empty")
        for run in self.methods:
            if run.method not in METHODS:
                raise unknown_choice(f"method (in methods.{run.label})", run.method, METHODS)
            resolve_options(run.method, dict(run.options))  # unknown or invalid options fail now, not mid-grid

    def _check_variant(self, variant: VariantSettings) -> None:
        """Fail now, not mid-grid: the label is new, the strategy exists and its settings make a valid config."""
        from cola.strategies import STRATEGIES, check_generation, strategy_config

        where = f"experiment config: variants.{variant.label}"
        if variant.label in STRATEGIES:
            raise ColaError(f"{where}: the label is a built-in strategy; name the variant differently")
        if variant.strategy not in STRATEGIES:
            raise unknown_choice(f"strategy (in variants.{variant.label})", variant.strategy, STRATEGIES)
        calibration = self.calibration
        try:
            check_generation(variant.strategy, variant.generation)
            strategy_config(variant.strategy, datasets=calibration.datasets or ("embedded",),
                            num_samples=calibration.num_samples, sequence_length=calibration.sequence_length,
                            seed=0, random_source=calibration.random_source, **variant.settings)
        except ColaError as exc:
            raise ColaError(f"{where}: {exc}") from exc

    def recipe(self, name: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """(built-in strategy, curation settings, generation settings) of a strategy or variant label."""
        variant = next((v for v in self.variants if v.label == name), None)
        return (variant.strategy, dict(variant.settings), dict(variant.generation)) if variant else (name, {}, {})

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["data_dir"] = str(self.data_dir) if self.data_dir else None
        return data


def _strict(section: str, data: Any, cls: type) -> dict[str, Any]:
    """`data` as keyword arguments of `cls`; unknown keys are an error naming the valid ones."""
    if not isinstance(data, dict):
        raise ColaError(f"experiment config: `{section}` must be a mapping, got {type(data).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in valid:
            raise unknown_choice(f"key in experiment config `{section}`", str(key), valid)
    return dict(data)


CALIBRATION_OWNED = frozenset(f.name for f in dataclasses.fields(CalibrationSettings))


def _variant(label: str, spec: Any) -> VariantSettings:
    if not isinstance(spec, dict) or "strategy" not in spec:
        raise ColaError(f"experiment config: variants.{label} needs a `strategy` key (a built-in strategy)")
    settings = {k: v for k, v in spec.items() if k not in ("strategy", "generation")}
    for key in settings:
        if key in CALIBRATION_OWNED:
            raise ColaError(f"experiment config: variants.{label} sets {key!r}, which the `calibration` section "
                            "sets for every strategy alike")
    return VariantSettings(label=label, strategy=str(spec["strategy"]), settings=settings,
                           generation=dict(spec.get("generation") or {}))


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
    """Validate a parsed YAML mapping; relative paths are taken from `base_dir` (the config's folder)."""
    top = _strict("top level", data, ExperimentConfig)
    if "name" not in top:
        raise ColaError("experiment config: `name` is required (it names the work directory)")
    if data_dir is not None:
        top["data_dir"] = Path(data_dir).resolve()
    elif top.get("data_dir"):
        top["data_dir"] = _resolve(base_dir, top["data_dir"])
    root = top.get("data_dir")

    calibration = _strict("calibration", top.get("calibration", {}), CalibrationSettings)
    calibration["datasets"] = tuple(_data_file(root, base_dir, d) for d in calibration.get("datasets", ()))
    calibration["references"] = {cap: _data_file(root, base_dir, p)
                                 for cap, p in (calibration.get("references") or {}).items()}
    top["calibration"] = CalibrationSettings(**calibration)

    methods = top.get("methods", {})
    if not isinstance(methods, dict):
        raise ColaError("experiment config: `methods` must map a label to {method: NAME, OPTION: VALUE, ...}")
    runs = []
    for label, spec in methods.items():
        if not isinstance(spec, dict) or "method" not in spec:
            raise ColaError(f"experiment config: methods.{label} needs a `method` key")
        options = {k: v for k, v in spec.items() if k != "method"}
        runs.append(MethodSettings(label=str(label), method=spec["method"], options=options))
    top["methods"] = tuple(runs)

    variants = top.get("variants") or {}
    if not isinstance(variants, dict):
        raise ColaError("experiment config: `variants` must map a label to {strategy: NAME, SETTING: VALUE, ...}")
    top["variants"] = tuple(_variant(str(label), spec) for label, spec in variants.items())

    evaluation = _strict("evaluation", top.get("evaluation", {}), EvaluationSettings)
    if "tasks" in evaluation:
        evaluation["tasks"] = tuple(evaluation["tasks"])
    top["evaluation"] = EvaluationSettings(**evaluation)
    top["plots"] = PlotSettings(**_strict("plots", top.get("plots", {}), PlotSettings))
    for key in ("seeds", "strategies"):
        if key in top:
            top[key] = tuple(top[key])
    return ExperimentConfig(**top)


def load_experiment_config(path: str | Path, *, data_dir: str | Path | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ColaError(f"experiment config {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ColaError(f"experiment config {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ColaError(f"experiment config {path} must be a YAML mapping")
    return config_from_dict(data, base_dir=path.resolve().parent, data_dir=data_dir)
