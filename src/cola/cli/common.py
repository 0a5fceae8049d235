"""What every subcommand's flags share: the model flags made from `ModelConfig`, `--quiet`, and the logging
set-up."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from cola.config import ModelConfig
from cola.settings import add_arguments, from_arguments



def add_model_arguments(parser: argparse.ArgumentParser, *, dtype: str | None = None) -> None:
    """--model, --device, --dtype and --trust_remote_code from `ModelConfig` (dtype's default overridden where
    the README's defaults table says why), and the hidden older spelling of --model."""
    add_arguments(parser, ModelConfig, defaults={"dtype": dtype} if dtype else None)
    parser.add_argument("--model_name_or_path", dest="model", help=argparse.SUPPRESS)


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The validated model settings of a parsed command line (an unknown dtype is a one-line ColaError)."""
    return from_arguments(ModelConfig, args)


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


class ColaFormatter(logging.Formatter):
    """`cola: message` for cola's own records; `name: LEVEL: message` for other libraries' (so their lines are
    not taken for cola's)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "cola" or record.name.startswith("cola."):
            return f"cola: {record.getMessage()}" + self._extra(record)
        return f"{record.name}: {record.levelname}: {record.getMessage()}" + self._extra(record)

    def _extra(self, record: logging.LogRecord) -> str:
        return "\n" + self.formatException(record.exc_info) if record.exc_info else ""


def configure_logging(quiet: bool) -> None:
    """cola's records at INFO (WARNING when quiet) as `cola: ...` on stderr; other libraries' at WARNING only,
    under their own names."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ColaFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("cola").setLevel(logging.WARNING if quiet else logging.INFO)
    if quiet:
        import transformers

        transformers.utils.logging.set_verbosity_error()


def shown(value: Any) -> str:
    """A default as --help shows it."""
    return "none" if value is None else str(value)
