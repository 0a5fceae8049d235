"""Final answers inside worked solutions: GSM8K's calculator annotations and MATH's `\\boxed{}` answers.

Pure text functions shared by Stage 2's formatters and evaluation's task readers.
"""

from __future__ import annotations

import re

_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")


def strip_calculator_annotations(text: str) -> str:
    """GSM8K's solutions without their calculator annotations: `48/2 = <<48/2=24>>24` -> `48/2 = 24`."""
    return _CALCULATOR_ANNOTATION.sub("", text)


_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _braced(text: str, start: int) -> str | None:
    """The content of the brace group opening at `text[start] == '{'` (nested groups, `\\{` escapes)."""
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
        i += 1
    return None  # unbalanced


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` / `\\fbox{...}` in `text` (also `\\boxed 5`), or None."""
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        rest = match.end()
        while rest < len(text) and text[rest].isspace():
            rest += 1
        if rest < len(text) and text[rest] == "{":
            content = _braced(text, rest)
        else:  # `\boxed 5`: the argument is the next token
            token = re.match(r"[^\s${}]+", text[rest:])
            content = token.group(0) if token else None
        if content is not None and content.strip():
            return content.strip()
    return None
