"""User-facing errors: the CLI prints their message on one line and exits non-zero, without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


# YAML 1.1 reads an unquoted off/on/yes/no as a boolean, so a bool where a name belongs is usually that.
YAML_BOOLEAN_HINT = " (YAML reads an unquoted off/on/yes/no as a boolean: quote it)"


class ColaError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def close_matches(value: object, choices: Iterable[str], n: int = 3) -> list[str]:
    """The valid names closest to a mistyped one (difflib, at most `n`), for a "did you mean" hint."""
    return difflib.get_close_matches(str(value), list(choices), n=n, cutoff=0.6)


def unknown_choice(kind: str, value: str, choices: Iterable[str]) -> ColaError:
    """Build the error for an unknown name: suggests close matches and lists the valid choices."""
    valid = sorted(choices)
    close = close_matches(value, valid)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    if isinstance(value, bool):
        hint = YAML_BOOLEAN_HINT
    return ColaError(f"unknown {kind} {value!r}.{hint} Valid choices: {', '.join(valid)}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty: what a one-line
    error quotes from a library's exception."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_pick(k: int, n: int) -> None:
    """Raise ColaError unless k samples can be picked from a pool of n (1 <= k <= n)."""
    if not 1 <= k <= n:
        raise ColaError(f"cannot select {k} samples from a pool of {n}: k must be between 1 and the pool size")
