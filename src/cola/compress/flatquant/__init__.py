"""FlatQuant (Sun et al., 2024, "FlatQuant: Flatness Matters for LLM Quantization", arXiv 2410.09426): W4A4(KV4)
quantization behind learned affine transforms that flatten weights and activations.

Every decoder Linear reads its input through a learnable Kronecker transform P = P1 ⊗ P2 (n1·n2 = in_features, both
near √n) after a learnable per-channel scaling c; the weight is transformed offline, W' = (W / c) · P⁻ᵀ, and quantized
per output channel (symmetric), the activation online, (x ⊙ c) · P, and quantized per token (symmetric, dynamic), both
with learnable clipping. Layers reading one input share its transform (q/k/v; gate/up); o_proj and down_proj have
their own. With `kv_bits` < 16 keys (after RoPE) and values are quantized per head and token (asymmetric) behind
per-head transforms, through an attention function registered with transformers. The transforms are initialised as
the paper does (random orthogonal factors, SmoothQuant-style c with α 0.3) and trained block by block against the dense
block's outputs (MSE, AdamW, cosine schedule); `epochs` 0 is plain RTN with the same quantizers.

The package, in data-flow order: `config` (FlatQuantConfig), `transforms` (the pure math), `linear` (FlatQuantLinear,
the attention function, save/load of `flatquant.safetensors`), `train` (block-wise training) and `method` (the
registered Method). Importing the package loads no torch.
"""

from __future__ import annotations
