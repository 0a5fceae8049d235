"""A record's field values as text: columns and dotted paths, conversations, multiple-choice options.

Values are rendered, never `str()`-ed: `render_value` turns a text field's value into text (strings, lists of
strings, multiple-choice options, chat conversations) and raises FieldValueError naming the field for any
other object or list, so a record never becomes a Python repr. Fields are named by column or by a dotted path
into nested objects (`meta.body`). Chat fields (`messages` with role/content turns, ShareGPT `conversations`
with from/value turns) become (role, content) turns.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from cola.errors import ColaError
from cola.io import describe_value

CHOICE_FIELDS = frozenset({"choices", "endings"})  # fields holding multiple-choice options, one per line
LETTERS = string.ascii_uppercase


class FieldValueError(ColaError):
    """A field's value is not text cola can read; the message names the field, the caller adds file and row."""


_MISSING = object()
CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant",
              "human": "user", "gpt": "assistant"}  # ShareGPT's `from` values beside the OpenAI-style roles
CONVERSATION_FIELDS = {"messages": ("role", "content"), "conversations": ("from", "value")}
_SCALARS = (bool, int, float)


def field_value(record: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """The value of a column (`text`) or of a dotted path into nested objects (`meta.body` is
    `record["meta"]["body"]`); a column whose own name holds the dot wins. `default` when there is none."""
    if path in record:
        return record[path]
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return default
        value = value[part]
    return value


def missing_field(record: Mapping[str, Any], path: str) -> str | None:
    """None when `record` has `path`; else the error text, listing the fields where the path stops."""
    if path in record:
        return None
    value: Any = record
    walked: list[str] = []
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return f"no field {path!r}: {'.'.join(walked)!r} holds {describe_value(value)}, not fields"
        if part not in value:
            fields = ", ".join(map(str, value)) or "(none)"
            where = f"; its fields are: {fields}" if not walked else \
                f": the fields of {'.'.join(walked)!r} are: {fields}"
            return f"no field {path!r}{where}"
        walked.append(part)
        value = value[part]
    return None


def is_conversation(value: Any, field: str) -> bool:
    """A chat conversation: a list of turn objects in a `messages` / `conversations` field, or whose first
    turn has a `role` (OpenAI style) or `from` (ShareGPT style)."""
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(t, Mapping) for t in value):
        return False
    return field.rsplit(".", 1)[-1] in CONVERSATION_FIELDS or "role" in value[0] or "from" in value[0]


def _turn_content(content: Any) -> str | None:
    """A turn's content as text: a string, or OpenAI's list of `{"type": "text", "text": ...}` parts; else None."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, (list, tuple)) and all(
            isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "\n".join(p["text"].strip() for p in content)
    return None


def conversation_turns(value: Sequence[Mapping[str, Any]], field: str) -> tuple[tuple[str, str], ...]:
    """(role, content) turns of a conversation; roles are system, user, assistant (ShareGPT's human and gpt
    become user and assistant). A turn without a known role or without text content raises FieldValueError."""
    turns = []
    for number, turn in enumerate(value, start=1):
        role_key, content_key = CONVERSATION_FIELDS["messages" if "role" in turn or "from" not in turn
                                                    else "conversations"]
        if role_key not in turn:
            raise FieldValueError(f"turn {number} of field {field!r} has no 'role' (or ShareGPT 'from'); its keys "
                                  f"are: {', '.join(map(str, turn))}")
        role = turn[role_key]
        if not isinstance(role, str) or role.strip().lower() not in CHAT_ROLES:
            shown = repr(role) if isinstance(role, str) else describe_value(role)
            raise FieldValueError(f"turn {number} of field {field!r} has the unknown role {shown}; valid roles: "
                                  f"{', '.join(sorted(CHAT_ROLES))}")
        if content_key not in turn or turn[content_key] is None:
            raise FieldValueError(f"turn {number} of field {field!r} ({role}) has no {content_key!r}")
        content = _turn_content(turn[content_key])
        if content is None:
            raise FieldValueError(f"turn {number} of field {field!r} ({role}): {content_key!r} holds "
                                  f"{describe_value(turn[content_key])}, not text")
        turns.append((CHAT_ROLES[role.strip().lower()], content))
    return tuple(turns)


def plain_turns(turns: Sequence[tuple[str, str]]) -> str:
    """A conversation as plain text, one `role: content` turn after another (for models without a template)."""
    return "\n".join(f"{role}: {content}" for role, content in turns if content)


def _lettered_choices(value: Any) -> str | None:
    """Multiple-choice options as `A. option` lines, from `{"text": [...], "label": [...]}` or a list of
    `{"label", "text"}` objects; None for anything else."""
    if isinstance(value, Mapping):
        texts, labels = value.get("text"), value.get("label")
        if isinstance(texts, list) and isinstance(labels, list) and len(texts) == len(labels):
            return "\n".join(f"{strip_text(label)}. {strip_text(text)}" for label, text in zip(labels, texts))
        return None
    if isinstance(value, (list, tuple)) and value and all(isinstance(c, Mapping) and "text" in c for c in value):
        return "\n".join(f"{strip_text(c.get('label')) or LETTERS[i % 26]}. {strip_text(c['text'])}"
                         for i, c in enumerate(value))
    return None


def render_value(value: Any, field: str = "text") -> str:
    """A text field's value as text.

    Strings are stripped; null is empty; a number is its digits. A list of strings is joined as paragraphs
    (one option per line in a multiple-choice field, `choices` or `endings`); multiple-choice options given
    as `{"text": [...], "label": [...]}` or `{"label", "text"}` objects become `A. option` lines; a
    conversation becomes plain `role: content` lines. Any other object or list raises FieldValueError naming
    `field`: a record is never rendered as a Python repr.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, _SCALARS):
        return str(value)
    choices = field.rsplit(".", 1)[-1] in CHOICE_FIELDS
    lettered = _lettered_choices(value)
    if lettered is not None and (choices or isinstance(value, Mapping)):
        return lettered
    if isinstance(value, (list, tuple)):
        if is_conversation(value, field):
            return plain_turns(conversation_turns(value, field))
        if all(v is None or isinstance(v, str) or (choices and isinstance(v, _SCALARS)) for v in value):
            return ("\n" if choices else "\n\n").join(part for part in (render_value(v) for v in value) if part)
    hint = ""
    if isinstance(value, Mapping):
        texts = sorted((k for k, v in value.items() if isinstance(v, str) and v.strip()),
                       key=lambda k: -len(value[k]))
        if texts:
            hint = f"; name the text inside with a dotted path, e.g. {field}.{texts[0]}"
    raise FieldValueError(f"field {field!r} holds {describe_value(value)}, not text: a text field takes text, "
                          f"a list of strings or a conversation{hint}")


def record_text(record: Mapping[str, Any], fields: Sequence[str]) -> str:
    """A candidate's text: the non-empty rendered values of `fields` (columns or dotted paths), separated by
    blank lines. A record with none of the fields (rows of mixed schemas), or whose text would be only
    numbers or booleans, raises FieldValueError."""
    values = [field_value(record, f, _MISSING) for f in fields]
    if all(v is _MISSING for v in values):
        raise FieldValueError(f"the record has none of the fields {', '.join(fields)} (its fields: "
                              f"{', '.join(map(str, record)) or 'none'}); its rows do not share one schema")
    parts, textual = [], False
    for field, value in zip(fields, values):
        text = render_value(None if value is _MISSING else value, field)
        if text:
            parts.append(text)
            textual = textual or not isinstance(value, _SCALARS)
    if parts and not textual:
        field, value = next((f, v) for f, v in zip(fields, values) if isinstance(v, _SCALARS))
        raise FieldValueError(f"field {field!r} holds {describe_value(value)}, not text")
    return "\n\n".join(parts)


def strip_text(value: Any) -> str:
    """A formatter's part as stripped text: None is empty, lists are joined line by line, numbers are their
    digits; an object raises FieldValueError (formatters read known schemas; anything else is not text)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (list, tuple)):
        return "\n".join(part for part in map(strip_text, value) if part)
    if isinstance(value, Mapping):
        raise FieldValueError(f"a field holds {describe_value(value)}, not text")
    return str(value).strip()
