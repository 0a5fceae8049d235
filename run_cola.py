#!/usr/bin/env python
"""The seed's command line: `python run_cola.py --model_name_or_path ... --output_dir ...` = `cola curate ...`."""

import sys
from pathlib import Path

try:
    import cola  # noqa: F401  (installed)
except ImportError:  # run from a checkout without installing: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from cola.cli import main

if __name__ == "__main__":
    sys.exit(main(["curate", *sys.argv[1:]]))
