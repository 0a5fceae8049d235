"""`cola score CALIBRATION_DIR --reference CAPABILITY=SOURCE ...`: a calibration set's quality score per
capability (`cola.score`), printed as a table and recorded in the set's manifest.json."""

from __future__ import annotations

import argparse

from cola.cli.common import add_quiet
from cola.cli.curate import parse_reference
from cola.config import CurateConfig, ModelConfig
from cola.settings import add_arguments, from_arguments


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `cola score`: the set, its references, the model flags (--model defaults to the set's)."""
    parser.add_argument("calibration_dir", metavar="CALIBRATION_DIR", help="output directory of `cola curate`")
    parser.add_argument("--reference", dest="references", action="append", type=parse_reference, required=True,
                        metavar="CAPABILITY=SOURCE",
                        help="texts of a capability the compressed model must keep: a file or a dataset name, as "
                             "`cola curate --reference` takes; repeatable (required)")
    parser.add_argument("--model", default=None,
                        help="hub id, local model directory, .gguf file, or 'embedded' (default: the model named "
                             "in the set's manifest.json)")
    add_arguments(parser, ModelConfig, exclude=("model",))
    size = CurateConfig().reference_size
    parser.add_argument("--reference_size", type=int, default=size,
                        help=f"reference texts per capability, a seeded sample (default: {size})")
    parser.add_argument("--no_record", action="store_true",
                        help="print the score without writing it into the set's manifest.json")
    add_quiet(parser)


def run_score(args: argparse.Namespace) -> int:
    from cola.score import format_score, score_calibration

    model = from_arguments(ModelConfig, args, model=args.model or ModelConfig().model)  # checks --dtype now
    score = score_calibration(args.calibration_dir, args.references, model=args.model, device=model.device,
                              dtype=model.dtype, trust_remote_code=model.trust_remote_code,
                              reference_size=args.reference_size, write=not args.no_record, quiet=args.quiet,
                              **model.sharding)
    print(format_score(score, args.calibration_dir))
    if not args.no_record:
        print(f"recorded under \"quality_score\" in {args.calibration_dir}/manifest.json")
    return 0
