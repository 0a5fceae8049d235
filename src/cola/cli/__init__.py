"""`cola curate | compress | evaluate | score | experiment | datasets`: the command line, a thin shell over typed
functions. Each subcommand's flags are made from its settings' fields (cola.config, cola.settings) in
cola/cli/<subcommand>.py; building the parser imports no torch, so `cola --help` answers at once.

User errors print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from cola.cli.common import configure_logging
from cola.cli.compress import add_compress_arguments, format_compress_summary, run_compress
from cola.cli.curate import add_curate_arguments, curate_config, run_curate
from cola.cli.datasets import run_datasets
from cola.cli.evaluate import add_evaluate_arguments, run_evaluate
from cola.cli.experiment import add_experiment_arguments, run_experiment
from cola.cli.export import add_export_arguments, run_export
from cola.cli.score import add_score_arguments, run_score
from cola.errors import ColaError, close_matches

__all__ = ["build_parser", "curate_config", "format_compress_summary", "main"]
COMMANDS = {"curate": run_curate, "compress": run_compress, "evaluate": run_evaluate, "score": run_score,
            "export": run_export, "experiment": run_experiment, "datasets": run_datasets}


class OneLineParser(argparse.ArgumentParser):
    """argparse with cola's error convention: a bad value or flag is one line naming it and where the flags are
    listed (argparse prints its whole usage block first, 27 lines for `curate`), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `cola` parser with every subcommand (torch is not imported)."""
    from cola import __version__

    parser = OneLineParser(prog="cola", description="Curate calibration data for LLM compression "
                           "(COLA, arXiv 2510.10618).")
    parser.add_argument("--version", action="version", version=f"cola {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_curate_arguments(sub.add_parser("curate", help="curate a calibration set"))
    add_compress_arguments(sub.add_parser("compress", help="compress a model with a curated calibration set"))
    add_evaluate_arguments(sub.add_parser("evaluate", help="evaluate a dense or compressed model"))
    add_score_arguments(sub.add_parser(
        "score", help="score a calibration set against reference texts per capability, without compressing"))
    add_export_arguments(sub.add_parser(
        "export", help="write a calibration set in the form a toolkit takes (llm-compressor, GPTQModel, auto-round, "
                       "text, tensors) and print the call that feeds it"))
    add_experiment_arguments(sub.add_parser(
        "experiment", help="run a grid of calibration strategies x compression methods x seeds (resumable)"))
    sub.add_parser("datasets", help="list the known datasets and the embedded offline pool")
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser.parse_args`, but a flag the subcommand lacks is reported by that subcommand, with the closest
    flags it has: `cola curate: error: unrecognized argument --sed (did you mean --seed?)`."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
        sub = subcommands.choices[args.command]
        flags = [flag for action in sub._actions for flag in action.option_strings]  # noqa: SLF001
        unknown = [e for e in extra if e.startswith("-")] or extra  # the flags, not the values after them
        close = close_matches(unknown[0], flags, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        sub.error(f"unrecognized argument{'s' if len(unknown) > 1 else ''} {' '.join(unknown)}{hint}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(build_parser(), argv)
    configure_logging(getattr(args, "quiet", False))
    try:
        return COMMANDS[args.command](args)
    except ColaError as exc:
        print(f"cola: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cola: interrupted", file=sys.stderr)
        return 130
