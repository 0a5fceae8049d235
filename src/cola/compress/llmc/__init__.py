"""The llm-compressor backend (rtn, gptq, awq, smoothquant, sparsegpt, wanda) through `llmcompressor.oneshot`.

- `output`: llm-compressor's log to stderr, and nothing on screen from it in a quiet run;
- `recipes`: one method class per llm-compressor method, each with its config and its `recipe` (the modifiers);
- `run`: the calibration set handed to `oneshot` whole and in order, the run, and the compressed-tensors save.

This package's `__init__` imports nothing, so that the method registry loads without torch or llm-compressor.
"""
