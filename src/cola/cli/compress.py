"""`cola compress`: the model flags (cola.config.ModelConfig), the method and its options (one flag per entry
of cola.compress.methods.OPTIONS), and the summary table printed after the run."""

from __future__ import annotations

import argparse

from cola.cli.common import add_model_arguments, add_quiet, model_config
from cola.config import COMPUTE_DTYPE

COMPRESS_BATCH_TOKENS = 4096  # as curate's Stage 3 (cola.config.SelectionConfig.batch_tokens)


def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    from cola.compress.methods import METHODS, OPTIONS

    add_model_arguments(parser, dtype=COMPUTE_DTYPE)
    parser.add_argument("--calibration", metavar="CURATE_OUTPUT_DIR",
                        help="output directory of `cola curate` (default: none; not needed by rtn)")
    parser.add_argument("--method", required=True, metavar="METHOD", help=f"one of: {', '.join(METHODS)} (required)")
    parser.add_argument("--output_dir", required=True, help="where the compressed model goes (required)")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --output_dir")
    group = parser.add_argument_group("method options (each belongs to some methods only)")
    for option in OPTIONS.values():  # default None: compress() tells what the user gave from what it fills in
        users = ", ".join(m.name for m in METHODS.values() if option.name in m.options)
        default = "" if option.default is None else f"; default: {option.default}"
        help_text = f"{option.help} [{users}{default}]"
        if option.type is bool:
            group.add_argument(f"--{option.name}", action="store_true", default=None, help=help_text)
        else:
            group.add_argument(f"--{option.name}", type=option.type, default=None, help=help_text)
    parser.add_argument("--batch_tokens", type=int, default=COMPRESS_BATCH_TOKENS,
                        help=f"native methods: most tokens per forward batch (default: {COMPRESS_BATCH_TOKENS})")
    add_quiet(parser)


def run_compress(args: argparse.Namespace) -> int:
    from cola.compress.api import compress
    from cola.compress.methods import OPTIONS
    from cola.models import resolve_device

    model = model_config(args)
    given = {name: getattr(args, name) for name in OPTIONS}  # compress checks them before loading the model
    summary = compress(model.model, args.calibration, args.method, args.output_dir, overwrite=args.overwrite,
                       quiet=args.quiet, dtype=model.dtype, device=resolve_device(model.device),
                       max_batch_tokens=args.batch_tokens, trust_remote_code=model.trust_remote_code, **given)
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
