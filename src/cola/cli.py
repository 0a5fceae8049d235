"""`cola curate | datasets`: the command line. User errors print one line and exit 2, without a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from cola.errors import ColaError

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


def _add_curate_arguments(parser: argparse.ArgumentParser) -> None:
    from cola.config import CurateConfig, SelectionConfig

    c, s = CurateConfig(), SelectionConfig()
    parser.add_argument("--model_name_or_path", default="embedded",
                        help="hub id, local model directory, .gguf file, or 'embedded' (SmolLM2-135M-Instruct, "
                             "default)")
    parser.add_argument("--output_dir", required=True, help="where the calibration set and manifest go")
    parser.add_argument("--num_samples", type=int, default=c.num_samples)
    parser.add_argument("--sequence_length", type=int, default=c.sequence_length,
                        help="tokens per sample at most (texts are cut; packing comes with Stage 2)")
    parser.add_argument("--datasets", nargs="+", default=list(c.datasets), metavar="SOURCE",
                        help="catalog names, file paths, hub ids or embedded[-general|-math|-code]; "
                             "SOURCE@CAPABILITY sets the capability, SOURCE#f1+f2 the text fields "
                             "(see `cola datasets`)")
    parser.add_argument("--target_capabilities", nargs="+", default=None, metavar="CAPABILITY",
                        help="capabilities to serve (default: those the datasets carry)")
    parser.add_argument("--deployment_type", default=c.deployment_type, choices=["general", "targeted"],
                        help="Stage 1 is not implemented yet: accepted, validated, and reported as no-op")
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
    parser.add_argument("--projection_dim", type=int, default=s.projection_dim)
    parser.add_argument("--trust_remote_code", action="store_true", help="allow model code from the hub")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cola", description="Curate calibration data for LLM compression "
                                     "(COLA, arXiv 2510.10618).")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_curate_arguments(sub.add_parser("curate", help="curate a calibration set"))
    sub.add_parser("datasets", help="list the known datasets and the embedded offline pool")
    return parser


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="cola: %(message)s",
                        stream=sys.stderr, force=True)
    if quiet:
        import transformers

        transformers.utils.logging.set_verbosity_error()


def run_curate(args: argparse.Namespace) -> int:
    from cola.api import COLA
    from cola.config import CurateConfig, SelectionConfig
    from cola.data.sources import parse_sources
    from cola.models import load_model

    selection = SelectionConfig(layers=args.layers, projection_dim=args.projection_dim, batch_size=args.batch_size,
                                batch_tokens=args.batch_tokens, seed=args.seed)
    # Check what can be checked before the model loads, so a typo fails in a second, not after the load.
    CurateConfig(datasets=tuple(args.datasets), target_capabilities=args.target_capabilities,
                 num_samples=args.num_samples, sequence_length=args.sequence_length,
                 candidates_per_source=args.candidates_per_source, deployment_type=args.deployment_type,
                 targeted_capability=args.targeted_capability, selection=selection)
    parse_sources(args.datasets)
    start = time.perf_counter()
    model, tokenizer = load_model(args.model_name_or_path, device=args.device, dtype=args.dtype,
                                  trust_remote_code=args.trust_remote_code, quiet=args.quiet)
    cola = COLA(model=model, tokenizer=tokenizer, available_datasets=args.datasets,
                target_capabilities=args.target_capabilities, output_dir=args.output_dir,
                deployment_type=args.deployment_type, targeted_capability=args.targeted_capability,
                candidates_per_source=args.candidates_per_source, selection=selection,
                model_name_or_path=args.model_name_or_path, quiet=args.quiet,
                timings={"load_model": time.perf_counter() - start})
    samples = cola.run(num_samples=args.num_samples, sequence_length=args.sequence_length)
    print(f"wrote {len(samples)} calibration samples to {args.output_dir} "
          "(calibration_samples.json, calibration_dataset/, manifest.json)")
    return 0


def run_datasets(_args: argparse.Namespace) -> int:
    from cola.data.catalog import CATALOG, EMBEDDED_SOURCES

    print(f"{'name':16} {'capability':12} {'hub id':36} description")
    for entry in CATALOG.values():
        hub = entry.hub_id + (f" [{entry.config}]" if entry.config else "")
        print(f"{entry.name:16} {entry.capability:12} {hub:36} {entry.description}")
    for name in EMBEDDED_SOURCES:
        cap = name.removeprefix("embedded").lstrip("-") or "general+math+code"
        print(f"{name:16} {cap:12} {'(offline, ships with cola)':36} embedded offline pool")
    print("\nAny local .jsonl/.json/.parquet/.csv/.txt file or hub id works too: "
          "PATH[@CAPABILITY][#FIELD+FIELD]")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(getattr(args, "quiet", False))
    commands = {"curate": run_curate, "datasets": run_datasets}
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
