"""Compression of a model with a curated calibration set.

In data-flow order: `calibration` reads a `cola curate` output back as token sequences; `base` is the Method
interface (and the group size, resolved once); `methods` registers every method, one line each; a method runs
through llm-compressor (`llmc/`) or natively (`driver` + `stats`, with `ria` and `caldera/` on the shared cores
`pruning` and `quant`); `verify` measures and checks the saved weights; `api` is the entry point (`compress`,
`load_compressed`).
"""
