"""cola: curate calibration data for post-training LLM compression (COLA, arXiv 2510.10618).

Importing cola is light: the model stack loads only when a class or command needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["COLA", "ColaError", "InMemory", "SelectionConfig", "__version__", "export_calibration", "load_calibration"]

if TYPE_CHECKING:
    from cola.api import COLA
    from cola.config import SelectionConfig
    from cola.compress.calibration import load_calibration
    from cola.data.memory import InMemory
    from cola.errors import ColaError
    from cola.handoff import export_calibration


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
    if name == "InMemory":
        from cola.data.memory import InMemory

        return InMemory
    if name == "load_calibration":
        from cola.compress.calibration import load_calibration

        return load_calibration
    if name == "export_calibration":
        from cola.handoff import export_calibration

        return export_calibration
    raise AttributeError(f"module 'cola' has no attribute {name!r}")
