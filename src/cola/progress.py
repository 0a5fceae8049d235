"""The one progress-bar helper: every long step goes through it, and `quiet` silences all of them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(iterable: Iterable[T] | None = None, *, quiet: bool, desc: str, total: int | None = None,
                 unit: str = "it", **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, disabled when `quiet` is true."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=quiet, dynamic_ncols=True,
                leave=False, **kwargs)


def silence_library_progress(quiet: bool) -> None:
    """Turn the progress bars of transformers and datasets off (or on) to match `quiet`."""
    import datasets
    import transformers

    if quiet:
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    else:
        transformers.utils.logging.enable_progress_bar()
        datasets.enable_progress_bars()
