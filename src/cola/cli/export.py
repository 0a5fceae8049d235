"""`cola export CALIBRATION_DIR --to TARGET`: write a curated set in the form a compression toolkit takes and
print the code that hands it over whole and in order (`cola.handoff`)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import textwrap

from cola.cli.common import add_quiet

# The module each target's library imports as, and how to install it (GPTQModel 7.6 pins numpy 2.2.6 and 7.7
# needs transformers >= 5.20.2, which llm-compressor 0.14 rules out: it lives in an environment of its own).
LIBRARIES = {"llmcompressor": ("llmcompressor", "pip install llmcompressor"),
             "gptqmodel": ("gptqmodel", "pip install gptqmodel, in an environment of its own"),
             "autoround": ("auto_round", "pip install auto-round")}


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from cola.handoff import TARGETS

    parser.add_argument("calibration_dir", metavar="CALIBRATION_DIR", help="output directory of `cola curate`")
    parser.add_argument("--to", dest="target", required=True, metavar="TARGET",
                        help="the toolkit (required): "
                             + "; ".join(f"{t.name}: {t.description}" for t in TARGETS.values()))
    parser.add_argument("--output", default=None,
                        help="file or folder to write (default: CALIBRATION_DIR's name plus the target's suffix, "
                             "beside it: out/calib.gptqmodel.jsonl)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_quiet(parser)


def run_export(args: argparse.Namespace) -> int:
    from cola.handoff import export_calibration
    from cola.progress import silence_library_progress

    silence_library_progress(args.quiet)
    result = export_calibration(args.calibration_dir, args.target, args.output, overwrite=args.overwrite)
    print(f"wrote {result.path}: {result.num_samples} samples, {result.num_tokens} tokens, for {result.target}")
    print("hand it over with:\n")
    print(textwrap.indent(result.call, "    ") + "\n")
    for warning in result.warnings:
        print(f"cola: warning: {warning}", file=sys.stderr)
    module, install = LIBRARIES.get(result.target, (None, ""))
    if module and importlib.util.find_spec(module) is None:
        print(f"cola: note: {module} is not installed here ({install})", file=sys.stderr)
    return 0
