"""Command-line arguments that are wrong on their face."""

from __future__ import annotations

from audit.case import Case

CASES = [
    Case("curate: unknown dataset name", lambda tmp, fx: [
        "curate", "--output_dir", str(tmp / "out"), "--datasets", "gsm8kk"], match="gsm8k"),
    Case("compress: unknown method", lambda tmp, fx: [
        "compress", "--method", "gptqq", "--output_dir", str(tmp / "out")], match="gptq"),
]
