"""The one progress-bar helper: every long step goes through it, and `quiet` silences all of them.

Bars also stay off where a person would not see them draw: when the environment sets `TQDM_DISABLE` (to
anything but "", "0", "false", "no" or "off"), and when stderr is not a terminal (a log file, a pipe, CI),
except in a Jupyter notebook, whose bars are widgets. The bars of transformers and datasets follow the same
rule (`silence_library_progress`). Where the bars are off but `quiet` is not (a run logging to a file, a job
under nohup), a step that runs longer than LOG_INTERVAL_S logs its progress instead: one INFO line on the
`cola.progress` logger each LOG_INTERVAL_S seconds, with the count, elapsed and remaining time and the rate.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterable
from typing import IO, Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
DISABLE_ENV = "TQDM_DISABLE"
_FALSE = ("", "0", "false", "no", "off")
LOG_INTERVAL_S = 60.0  # bars off, not quiet: a step's progress is logged at most this often, from this long on

log = logging.getLogger(__name__)


def bars_disabled(quiet: bool, stream: IO[str] | None = None) -> bool:
    """True where progress bars must not draw: `quiet`, `TQDM_DISABLE` set true, or `stream` (default
    stderr) not a terminal outside a notebook."""
    if quiet or os.environ.get(DISABLE_ENV, "").strip().lower() not in _FALSE:
        return True
    if any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__):
        return False
    isatty = getattr(stream or sys.stderr, "isatty", None)
    return not (callable(isatty) and isatty())


def progress_bar(iterable: Iterable[T] | None = None, *, quiet: bool, desc: str, total: int | None = None,
                 unit: str = "it", **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr; where `bars_disabled` says no one would see it, log lines every LOG_INTERVAL_S
    seconds instead (none for a step shorter than that), and nothing at all when `quiet` is true."""
    if quiet:
        return tqdm(iterable, desc=desc, total=total, unit=unit, disable=True, **kwargs)
    if bars_disabled(quiet):
        # miniters=1: tqdm's monitor thread then never reprints a line that has not moved
        return tqdm(iterable, desc=desc, total=total, unit=unit, file=_LogLines(), mininterval=LOG_INTERVAL_S,
                    miniters=1, delay=LOG_INTERVAL_S, ncols=0, leave=False, disable=False, **kwargs)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=False, dynamic_ncols=True, leave=False,
                **kwargs)


class _LogLines(io.TextIOBase):
    """What a tqdm bar writes, as log lines: each refresh is one INFO line; blank refreshes (the bar cleared at
    its end) and cursor moves are dropped."""

    def write(self, text: str) -> int:
        line = text.replace("\x1b[A", "").strip()
        if line:
            log.info("%s", line)
        return len(text)

    def isatty(self) -> bool:
        return False


def silence_library_progress(quiet: bool) -> None:
    """Turn the progress bars of transformers and datasets off (or on) to match `bars_disabled(quiet)`."""
    import datasets
    import transformers

    if bars_disabled(quiet):
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    else:
        transformers.utils.logging.enable_progress_bar()
        datasets.enable_progress_bars()
