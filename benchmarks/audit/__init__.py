"""Bad-input audit: every bad input cola knows of, run through the real command line or the Python API.

Each `cases_*.py` module in this folder defines `CASES`, a list of `Case`. `benchmarks/input_audit.py` runs them
all and counts clean one-line errors against tracebacks, silent acceptance and timeouts.
"""
