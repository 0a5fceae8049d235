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


# The public names, each imported from its module on first use (so that `import cola` stays light)
_LAZY = {"COLA": "cola.api", "SelectionConfig": "cola.config", "ColaError": "cola.errors",
         "InMemory": "cola.data.memory", "load_calibration": "cola.compress.calibration",
         "export_calibration": "cola.handoff"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cola' has no attribute {name!r}")
