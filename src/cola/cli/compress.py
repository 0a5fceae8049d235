"""`cola compress`: the model flags (cola.config.ModelConfig), the method and its options (the fields of every
registered method's config, `cola.compress.methods.METHODS[name].config`, one flag per field name), and the
summary table printed after the run."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cola.cli.common import add_model_arguments, add_quiet, model_config
from cola.config import COMPUTE_DTYPE
from cola.errors import ColaError

if TYPE_CHECKING:
    from cola.compress.base import Method

COMPRESS_BATCH_TOKENS = 4096  # as curate's Stage 3 (cola.config.SelectionConfig.batch_tokens)


def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    from cola.compress.methods import METHODS
    from cola.settings import add_arguments, help_of

    add_model_arguments(parser, dtype=COMPUTE_DTYPE)
    parser.add_argument("--calibration", metavar="CURATE_OUTPUT_DIR",
                        help="output directory of `cola curate` (default: none; not needed by rtn)")
    parser.add_argument("--method", required=True, metavar="METHOD", help=f"one of: {', '.join(METHODS)} (required)")
    parser.add_argument("--output_dir", required=True, help="where the compressed model goes (required)")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --output_dir")
    group = parser.add_argument_group("method options (each belongs to some methods only)")
    added: list[str] = []
    for method in METHODS.values():  # a field several methods share (bits, sparsity, ...) is one flag
        fields = [name for name in method.options if name not in added]
        users = {name: ", ".join(m.name for m in METHODS.values() if name in m.options) for name in fields}
        # given_only: compress() tells the options the user gave (None: not given) from the defaults it fills in
        added += add_arguments(group, method.config, exclude=added, given_only=True, overrides={
            name: {"help": f"{help_of(method.config, name)} [{users[name]}{_shown_default(method.config, name)}]"}
            for name in fields})
    parser.set_defaults(method_options=tuple(added))
    parser.add_argument("--batch_tokens", type=int, default=COMPRESS_BATCH_TOKENS,
                        help=f"native methods: most tokens per forward batch (default: {COMPRESS_BATCH_TOKENS})")
    add_quiet(parser)


def run_compress(args: argparse.Namespace) -> int:
    from cola.compress.api import compress
    from cola.models import resolve_device

    model = model_config(args)
    if model.device_map is not None:
        raise ColaError("--device_map shards a model for curate, evaluate and score; compress runs its methods "
                        "layer by layer on one device: use --device")
    given = {name: getattr(args, name) for name in args.method_options}  # checked before the model loads
    summary = compress(model.model, args.calibration, args.method, args.output_dir, overwrite=args.overwrite,
                       quiet=args.quiet, dtype=model.dtype, device=resolve_device(model.device),
                       max_batch_tokens=args.batch_tokens, trust_remote_code=model.trust_remote_code, **given)
    print(format_compress_summary(summary))
    return 0


def _shown_default(config: type, name: str) -> str:
    """`; default: X` for the help of a method option, or "" where the method fills it in (group size)."""
    from cola.settings import shown_default_of

    default = shown_default_of(config, name)
    return "" if default is None else f"; default: {default}"


def format_compress_summary(summary: dict) -> str:
    """What ran (the method's settings and its own lines, `Method.summary_lines`) and a short table of what the
    saved weights show, per layer type."""
    from cola.compress.methods import METHODS

    total = summary["weights"]["total"]
    lines = [f"{summary['method']} ({summary['backend']}) on {summary['model'] or 'in-memory model'}: "
             f"{summary['seconds']:.1f} s compressing, peak memory {summary['peak_rss_mb']:.0f} MB"]
    method = METHODS.get(summary["method"])  # None: a summary of a method this cola lacks
    settings = _settings(summary, method)
    if settings:
        lines.append(f"  settings: {settings}")
    if method is not None:
        lines += [f"  {line}" for line in method.summary_lines(summary.get("details") or {})]
    for name, entry in summary["weights"]["by_type"].items():
        lines.append(f"  {name:12} layers {entry['layers']:3}  " + _weight_figures(entry))
    lines.append(f"  {'all':12} layers {total['layers']:3}  " + _weight_figures(total))
    return "\n".join(lines)


def _settings(summary: dict, method: Method | None) -> str:
    """The method's settings as run ("rank 16, quantizer e8p, ..."): its config's `summary_fields`, or every
    option that is set (also for a method this cola lacks)."""
    options = summary.get("options") or {}
    names = (method.config.summary_fields if method is not None else ()) or tuple(options)
    return ", ".join(f"{name} {options[name]}" for name in names if options.get(name) is not None)


def _weight_figures(entry: dict) -> str:
    parts = []
    if entry.get("bits_per_parameter") is not None:
        parts.append(f"bits/param {entry['bits_per_parameter']:.3f}")
    if entry.get("sparsity") is not None:
        parts.append(f"sparsity {100 * entry['sparsity']:.2f} %")
    return "  ".join(parts)
