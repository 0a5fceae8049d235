"""cola: curate calibration data for post-training LLM compression (COLA, arXiv 2510.10618).

Importing cola is light: the model stack loads only when a class or command needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["COLA", "ColaError", "SelectionConfig", "__version__"]

if TYPE_CHECKING:
    from cola.api import COLA
    from cola.config import SelectionConfig
    from cola.errors import ColaError


def __getattr__(name: str) -> Any:
    if name == "COLA":
        from cola.api import COLA

        return COLA
    if name == "SelectionConfig":
        from cola.config import SelectionConfig

        return SelectionConfig
    if name == "ColaError":
        from cola.errors import ColaError

        return ColaError
    raise AttributeError(f"module 'cola' has no attribute {name!r}")
