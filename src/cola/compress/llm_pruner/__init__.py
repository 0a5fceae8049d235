"""LLM-Pruner (Ma et al., "LLM-Pruner: On the Structural Pruning of Large Language Models", NeurIPS 2023).

`structures` finds the coupled groups of each block (KV head groups with their query heads; MLP channels),
`importance` scores them by first-order Taylor importance on the calibration set, `prune` removes the lowest and
makes the smaller Linears, `recovery` trains and merges LoRA adapters, `method` runs it all and saves a real
smaller checkpoint that `cola.compress.api.load_compressed` rebuilds.
"""
