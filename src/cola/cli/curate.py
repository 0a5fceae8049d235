"""`cola curate`: its flags are made from `CurateConfig`'s fields (cola.config); this module adds the parsers
of the flags whose text has a syntax, the flags that set several fields, and the run itself."""

from __future__ import annotations

import argparse
import time

from cola.cli.common import add_model_arguments, add_quiet, model_config
from cola.config import SKETCH_SELECTION_METHODS, CurateConfig, SelectionConfig
from cola.config.curate import STAGE1, STAGE2
from cola.config.stages import SIGNALS
from cola.errors import ColaError
from cola.settings import add_arguments, from_arguments


def parse_layers(value: str) -> tuple[int, ...] | None:
    """`all`, or comma-separated indices and ranges: `0,5,-1` or `10-20`."""
    if value.strip().lower() == "all":
        return None
    layers: list[int] = []
    try:
        for part in value.split(","):
            part = part.strip()
            head, sep, tail = part.partition("-") if not part.startswith("-") else (part, "", "")
            layers.extend(range(int(head), int(tail) + 1) if sep else [int(head)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --layers {value!r}: use 'all', '0,5,-1' or '10-20'") from None
    return tuple(layers)


def parse_field_mapping(value: str) -> tuple[tuple[str, str], ...]:
    from cola.data.formatters import parse_field_mapping

    try:
        return tuple(parse_field_mapping(value).items())
    except ColaError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_reference(value: str) -> tuple[str, str]:
    capability, sep, spec = value.partition("=")
    if not sep or not capability.strip() or not spec.strip():
        raise argparse.ArgumentTypeError(f"invalid --reference {value!r}: write CAPABILITY=PATH_OR_DATASET")
    return capability.strip(), spec.strip()


def parse_capability_weights(value: str) -> tuple[tuple[str, float], ...]:
    from cola.stages.domain import parse_capability_weights

    try:
        return tuple(parse_capability_weights(value).items())
    except ColaError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_signal_weights(value: str) -> tuple[float, float, float]:
    from cola.errors import unknown_choice
    from cola.stages.domain import parse_capability_weights

    defaults = CurateConfig().domain
    weights = {"semantic": defaults.semantic_weight, "token": defaults.token_weight,
               "coverage": defaults.coverage_weight}
    try:
        given = parse_capability_weights(value, what="signal", example="semantic=0.5,token=0.25,coverage=0.25")
        for name in given:
            if name not in SIGNALS:
                raise unknown_choice("signal", name, SIGNALS)
    except ColaError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    weights.update(given)
    return weights["semantic"], weights["token"], weights["coverage"]


# Flags whose text has a syntax of its own (parsed here, since cola.config imports no stage).
PARSED = {"selection.layers": {"type": parse_layers},
          "process.field_mapping": {"type": parse_field_mapping},
          "references": {"type": parse_reference, "action": "append"},
          "capability_weights": {"type": parse_capability_weights}}


def add_curate_arguments(parser: argparse.ArgumentParser) -> None:
    """Every `CurateConfig` flag (nested stages included), the model flags, and the few flags that set several
    fields at once: --no_dedup, --signal_weights."""
    add_model_arguments(parser)
    parser.add_argument("--output_dir", required=True, help="where the calibration set and manifest go (required)")
    parser.add_argument("--work_dir", default=None,
                        help="where the run keeps the pool's features while it works, chunk by chunk, so that a "
                             "killed run, run again, resumes (default: .OUTPUT_DIR.cola-work beside the output "
                             "directory, removed when the run succeeds; a folder named here is kept)")
    parser.add_argument("--feature_cache", default=None,
                        help="a folder where the pool's activation features are kept, chunk by chunk, and reused by "
                             "later runs with the same model weights, pool and extraction settings (several "
                             "settings side by side; default: none beyond the run's work folder)")
    stage2, stage1 = parser.add_argument_group(STAGE2), parser.add_argument_group(STAGE1)
    parser.add_argument_group("ablations")
    add_arguments(parser, CurateConfig, nested=True, overrides=PARSED)
    stage2.add_argument("--no_dedup", action="store_true", help="keep exact and near duplicates")
    d = CurateConfig().domain
    stage1.add_argument(
        "--signal_weights", type=parse_signal_weights, metavar="semantic=W,token=W,coverage=W",
        default=(d.semantic_weight, d.token_weight, d.coverage_weight),
        help=f"how the three coverage signals combine (default: semantic={d.semantic_weight},"
             f"token={d.token_weight},coverage={d.coverage_weight})")
    parser.add_argument("--plots", action="store_true",
                        help="also draw the run's figures into OUTPUT_DIR/cola_plots: Stage 1's scores and quotas, the "
                             "pool's activation map with the picks, the distances to the nearest pick against a "
                             "random pick's")
    add_quiet(parser)


def curate_config(args: argparse.Namespace) -> CurateConfig:
    """The validated settings of `cola curate`, built before the model loads so typos fail at once."""
    semantic, token, coverage = args.signal_weights
    config = from_arguments(CurateConfig, args, **{
        "process.filters.dedup_exact": not args.no_dedup, "process.filters.dedup_near": not args.no_dedup,
        "domain.semantic_weight": semantic, "domain.token_weight": token, "domain.coverage_weight": coverage})
    check_unread_flags(config)
    return config


def check_unread_flags(config: CurateConfig) -> None:
    """A flag given (not its default) where this run never reads it is a ColaError naming the flag and what
    would read it, not silently dropped: Stage 1's settings with Stage 1 off (--no_stage1; all but
    --reference_size turn it on without that flag); --layers, --pooling and --projection_dim, read by Stage 1
    and the model-based Stage-3 methods; --sketch_dim, read by moments and outlier_coverage alone; --executor
    ray where the model never reads the pool. (The Python API and experiments keep such settings: an experiment
    shares them across strategies that read them and strategies that do not.)"""
    unread = () if config.stage1 else config.stage1_settings()  # the one list of Stage 1's settings
    if unread:
        raise ColaError(f"{unread[0]} is a Stage 1 setting and this run has Stage 1 off: use --stage1 (not "
                        f"--no_stage1), or drop {unread[0]}")
    if config.executor != "local" and not config.reads_model:
        raise ColaError(f"--executor {config.executor} runs the model over the pool, which this run never does "
                        f"(Stage 1 off, --selection_method {config.selection_method}): add --selection_method "
                        "activations, moments or outlier_coverage, or --stage1; or drop --executor")
    method, default = config.selection_method, SelectionConfig()
    for name in ("layers", "pooling", "projection_dim", "sketch_dim"):
        if getattr(config.selection, name) == getattr(default, name):
            continue
        if name == "sketch_dim" and method not in SKETCH_SELECTION_METHODS:
            raise ColaError(f"--sketch_dim applies to --selection_method moments or outlier_coverage, not {method!r}")
        if not config.reads_model:
            raise ColaError(f"--{name} sets how the model reads the pool, which this run never does (Stage 1 off, "
                            f"--selection_method {method}): add --selection_method activations, moments or "
                            f"outlier_coverage, or --stage1; or drop --{name}")


def run_curate(args: argparse.Namespace) -> int:
    from cola.api import COLA, prepare_inputs
    from cola.models import resolve_device, resolve_dtype
    from cola.output_dir import check_folder

    config = curate_config(args)
    model = model_config(args)
    if model.device_map is None:  # a bad device or dtype fails before anything is read (a device map: in model_config)
        resolve_dtype(model.dtype, resolve_device(model.device))
    elif config.executor == "ray":
        raise ColaError("--executor ray puts one whole replica of the model on each GPU or CPU worker: drop "
                        "--device_map (a model too big for one device is extracted locally, sharded)")
    # Sources, reference sets, hub access and the output directory are checked before the model loads.
    inputs = prepare_inputs(config, args.output_dir)
    check_folder(args.feature_cache, "--feature_cache")
    check_folder(args.work_dir, "--work_dir")
    start = time.perf_counter()
    loaded, tokenizer = model.load(quiet=args.quiet)
    cola = COLA.from_config(config, model=loaded, tokenizer=tokenizer, output_dir=inputs.output_dir,
                            model_name_or_path=model.model, quiet=args.quiet, work_dir=args.work_dir,
                            feature_cache=args.feature_cache,
                            model_config=model, timings={"load_model": time.perf_counter() - start})
    samples = cola.run(num_samples=config.num_samples, sequence_length=config.sequence_length, inputs=inputs,
                       plots=args.plots)
    from cola.export import DATASET_DIR, DATASET_PARQUET, MANIFEST_FILE, POOL_PARQUET, SAMPLES_FILE

    written = (SAMPLES_FILE, f"{DATASET_DIR}/", DATASET_PARQUET, POOL_PARQUET, MANIFEST_FILE)
    print(f"wrote {len(samples)} calibration samples to {args.output_dir} ({', '.join(written)})")
    for line in cola.plots_report:
        print(line)
    return 0
