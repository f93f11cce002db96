"""The one exception type that reaches the user.

Library code raises :class:`BitmapsError` for anything the user can fix (a missing file, a corrupt
checkpoint, a bad option). The CLI prints its message on one line and exits with code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class BitmapsError(Exception):
    """A problem with the user's input, with a message that says what is wrong and what to do."""

    exit_code = 2


class ConfigError(BitmapsError):
    """A configuration value is out of range, unknown, or inconsistent."""


def one_line(exc: BaseException, limit: int = 240) -> str:
    """A third-party exception's message on one line, for a BitmapsError that wraps it: its first
    line, joined with the next where the first is a header ending in a colon (huggingface_hub's
    validation errors); its type's name where it has no message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    text = " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
