"""`cola evaluate`: the model flags (cola.config.ModelConfig), the tasks, and the run settings made from
cola.config.EvaluateConfig."""

from __future__ import annotations

import argparse

from cola.cli.common import add_model_arguments, add_quiet, model_config
from cola.config import COMPUTE_DTYPE, EvaluateConfig, ModelConfig
from cola.errors import ColaError
from cola.settings import add_arguments, from_arguments


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `cola evaluate`."""
    from cola.evaluate.harness import LOCAL_TASKS
    from cola.evaluate.tasks import BUILTINS, DATA_DIR_ENV, KINDS

    parser.add_argument("model_positional", nargs="?", metavar="MODEL_OR_DIR", default=None,
                        help="the model, as --model (kept for earlier command lines)")
    add_model_arguments(parser, dtype=COMPUTE_DTYPE)
    parser.add_argument("--task", nargs="+", required=True, metavar="TASK",
                        help=f"built-in names ({', '.join(BUILTINS)}) or KIND[/CAPABILITY]:PATH with KIND one of "
                             f"{', '.join(KINDS)}; with --evaluator lm-eval, lm-eval's published tasks "
                             f"({', '.join(LOCAL_TASKS)} from local files under --data_dir; without one, any "
                             "lm-eval task from the hub) (required)")
    parser.add_argument("--limit", default=None, metavar="N|TASK=N,...",
                        help="first N items of each task (windows for ppl), or per task (default: all)")
    parser.add_argument("--data_dir", default=None,
                        help=f"folder of the built-in tasks' files (default: ${DATA_DIR_ENV})")
    parser.add_argument("--dense", metavar="RESULTS.json",
                        help="`cola evaluate --output` of the dense model: adds retention (default: none)")
    parser.add_argument("--output", metavar="FILE.json", help="write every figure to this JSON file; with --evaluator "
                                                             "lm-eval, lm-eval's own results go beside it in "
                                                             "FILE.lm_eval.json (default: none)")
    add_arguments(parser, EvaluateConfig)
    add_quiet(parser)


def evaluated_model(args: argparse.Namespace) -> str:
    """--model, or the positional MODEL_OR_DIR of earlier command lines; two different models is an error."""
    if args.model_positional is None:
        return args.model
    if args.model not in (ModelConfig().model, args.model_positional):
        raise ColaError(f"two models given: MODEL_OR_DIR {args.model_positional!r} and --model {args.model!r}; "
                        "give one")
    return args.model_positional


def run_evaluate(args: argparse.Namespace) -> int:
    from cola.evaluate import evaluation_report, format_table
    from cola.evaluate.runner import (check_dense, check_output_file, load_for_evaluation, parse_limit,
                                      plan_evaluation, read_dense_report)
    from cola.atomic import write_json, write_text
    from cola.models import resolve_device

    model = model_config(args)
    name = evaluated_model(args)
    config = from_arguments(EvaluateConfig, args)
    limit = parse_limit(args.limit) if args.limit is not None else None
    settings = {"window": config.window, "batch_tokens": config.batch_tokens, "batch_size": config.batch_size,
                "max_new_tokens": config.max_new_tokens, "evaluator": config.evaluator,
                "num_fewshot": config.num_fewshot}
    options = {**settings, "confirm_run_unsafe_code": config.confirm_run_unsafe_code}
    plan = plan_evaluation(args.task, limit=limit, data_dir=args.data_dir, read_files=False, **options)
    dense = read_dense_report(args.dense) if args.dense else None
    if dense is not None:
        check_dense(dense, plan, args.dense)
    output = check_output_file(args.output) if args.output else None
    if not plan.lm_eval:  # every task file read and checked before the model loads
        plan = plan_evaluation(args.task, limit=limit, data_dir=args.data_dir, quiet=args.quiet, **options)
    device = resolve_device(model.device) if model.device_map is None else f"device_map {model.device_map}"
    loaded, tokenizer = load_for_evaluation(name, dtype=model.dtype, device=model.device, quiet=args.quiet,
                                            trust_remote_code=model.trust_remote_code,
                                            caldera_forward=config.caldera_forward, **model.sharding)
    harness = plan.run_lm_eval(loaded, tokenizer) if plan.lm_eval else None
    results = harness.results if harness is not None else plan.run(loaded, tokenizer)
    report = evaluation_report(name, results, dtype=model.dtype, device=device, limit=limit, dense=dense,
                               **settings)
    print(format_table(report))
    if output is not None:
        try:
            write_json(output, report)
            if harness is not None:
                from cola.evaluate.harness import raw_results_path

                write_text(raw_results_path(output), harness.raw_json())
                print(f"lm-eval's own results: {raw_results_path(output)}")
        except OSError as exc:
            raise ColaError(f"cannot write --output {args.output}: {exc}") from None
    return 0
