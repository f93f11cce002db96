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
