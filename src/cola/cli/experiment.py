"""`cola experiment`: run a grid of calibration strategies x compression methods x seeds, or rebuild its
report. The grid's settings come from its YAML file (cola.experiment.config)."""

from __future__ import annotations

import argparse

from cola.cli.common import add_quiet
from cola.errors import ColaError


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG.yaml", help="the grid (see experiments/smollm2_cpu.yaml)")
    parser.add_argument("--work_dir", help="where cells, models and records go (default outputs/experiments/NAME); "
                        "running again resumes: finished cells are skipped")
    parser.add_argument("--report_dir", help="where results.csv, report.md and plots/ go (default: --work_dir)")
    parser.add_argument("--data_dir", help="overrides the config's data_dir (default: the config's)")
    parser.add_argument("--report_only", action="store_true", help="rebuild the report from finished cells only")
    parser.add_argument("--include_results", nargs="+", metavar="RESULTS.csv",
                        help="add to the report the cells of other runs' results.csv files (the grid run in parts "
                             "on other machines, or a lost work directory) that --work_dir lacks; retention is "
                             "recomputed against --work_dir's dense evaluation (default: none)")
    parser.add_argument("--strategies", nargs="+", metavar="NAME",
                        help="run only these strategies of the grid (default: all)")
    parser.add_argument("--methods", nargs="+", metavar="LABEL",
                        help="run only these method labels of the grid (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="run only these seeds of the grid (default: all)")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="load models whose code comes from the hub (the config's trust_remote_code; off by "
                             "default: such code runs on this machine)")
    parser.add_argument("--confirm_run_unsafe_code", action="store_true",
                        help="let evaluation tasks execute code the model wrote (the config's "
                             "confirm_run_unsafe_code; off by default)")
    add_quiet(parser)


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
             for name in ("work_dir", "report_dir", "data_dir", "include_results", "strategies", "methods",
                          "seeds")
             if (value := getattr(args, name))] + [f"--{name}" for name in switches]
    flags += ["--report_only"] if args.report_only else []  # the report says how to make it again, not the grid
    command = " ".join(["cola experiment", args.config, *flags])
    if args.report_only:
        experiment = Experiment(config, work_dir, quiet=args.quiet)
        if not args.include_results and not experiment.records():  # an empty report is a mistaken work dir
            raise ColaError(f"--report_only: {work_dir} holds no cells of {args.config} (finished or failed): "
                            "name the work directory the grid ran in (--work_dir), add another run's results "
                            "(--include_results), or run the grid first (drop --report_only)")
        paths = write_report(experiment, args.report_dir or work_dir, command=command,
                             include=args.include_results or ())
        print(f"report: {paths['report']}  results: {paths['results_csv']}")
        return 0
    summary = run_experiment(config, work_dir, report_dir=args.report_dir, quiet=args.quiet, command=command,
                             only=only, include=args.include_results or ())
    busy = f", {summary['busy']} running in another process" if summary["busy"] else ""
    print(f"cells: {summary['ok']} run, {summary['skipped']} already finished, {summary['failed']} failed{busy} "
          f"({summary['seconds']:.0f} s); report: {summary['report']}  results: {summary['results_csv']}")
    return 1 if summary["failed"] else 0
