"""JSON text from the user (config files, ``--set`` lists, labelled JSONL rows, profile files,
the asset cache's manifest) read strictly: every way it can be unreadable is one ``ValueError``.

Python's ``json.loads`` lets some inputs escape as other exceptions or pass silently: nesting a few
thousand levels deep raises ``RecursionError``, an integer of more than 4300 digits a plain
``ValueError`` that is not a ``JSONDecodeError``, and an object that names a key twice keeps the
last value without a word (``{"train": {"lr": -1}, "train": {}}`` would drop the first section
unchecked). :func:`loads` turns the first two into :class:`JsonTextError` and refuses the third.
"""

from __future__ import annotations

import json
from typing import Any

from bitmaps.core.errors import one_line


class JsonTextError(ValueError):
    """Text that is not JSON bitmaps reads; its message is one line that says why."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JsonTextError(f"an object names the key {key!r} twice")
        out[key] = value
    return out


def loads(text: str | bytes) -> Any:
    """``text`` as JSON, or :class:`JsonTextError` (a ``ValueError``): not JSON, nested too
    deeply, an integer too long to read, or a key twice in one object."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except JsonTextError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonTextError(
            f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise JsonTextError("not JSON bitmaps reads (nested too deeply)") from None
    except ValueError as exc:  # an integer past Python's digit limit for int()
        raise JsonTextError(f"not JSON bitmaps reads ({one_line(exc, 120)})") from None
