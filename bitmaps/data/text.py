"""Text in: files and folders → validated documents → sentences.

The first two stages of the data pipeline (:mod:`bitmaps.data.corpus` does tokenizing, packing,
splitting and caching). Rules, chosen to be predictable:

- A path may be a file (read whatever its extension) or a folder, searched recursively for
  ``*.txt`` files (any case: ``.TXT`` too), skipping hidden files and folders; other files in a
  folder are ignored, so a dataset's LICENSE or README does not become training text.
- One file is one document by default; with ``per_line=True`` every non-blank line of a file is a
  document (for corpora stored one document per line).
- A document's id is its path relative to the folder it was found in (posix), or the file name for
  a file given directly, plus ``:N`` (1-based line) in per-line mode. Ids do not depend on where the
  corpus lives, so a copied corpus gets the same held-out split.
- Text must be UTF-8 (a leading BOM is dropped; CRLF becomes LF). Anything else, a missing path, an
  empty file, or a folder with no text files is a :class:`~bitmaps.core.errors.BitmapsError` naming the
  file (and, for bad bytes, the byte offset).

:func:`split_sentences` is a regex splitter for English prose: it splits after ``.``, ``!``, ``?``
(and closing quotes or brackets) when whitespace and a capital letter, digit or opening quote
follow, except after common abbreviations (Mr., Dr., St., Gen., ...) and single-letter initials;
blank lines always end a sentence. It only cuts at whitespace, so for BERT-style tokenizers the
tokens of the sentences, concatenated, are exactly the tokens of the document.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from bitmaps.core.errors import BitmapsError

TEXT_SUFFIXES = (".txt",)

# Lower-case, without the final period. "etc" and "no" are left out: they end sentences too often.
ABBREVIATIONS = frozenset(
    """mr mrs ms messrs dr prof sr jr st mt ft gen col maj capt lt sgt adm cmdr gov sen rep hon rev
    pres supt insp vs viz cf ca approx dept inc corp co ltd bros fig vol pp art sec jan feb mar apr
    jun jul aug sep sept oct nov dec""".split()
)

_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_WHITESPACE = re.compile(r"\s+")
# Sentence end: terminators, optional closing quotes/brackets, whitespace, then a likely start.
_BOUNDARY = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(\s+)(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_CLOSERS = "\"')]\u201d\u2019"
_INITIALS = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]?$")  # U.S, e.g, i.e (final period removed)


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: a stable id (see module doc), the file it came from, and its text."""

    id: str
    path: Path
    text: str


def _text_files(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(TEXT_SUFFIXES):
                found.append(Path(dirpath) / name)
    return found


def _expand(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, str]]:
    """(file, id) pairs, in the order given, folders sorted, each file once."""
    out: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise BitmapsError(f"data path {path} does not exist")
        if path.is_dir():
            files = _text_files(path)
            if not files:
                suffixes = ", ".join(f"*{s}" for s in TEXT_SUFFIXES)
                raise BitmapsError(
                    f"folder {path} has no text files ({suffixes}, searched recursively)"
                )
            pairs = [(f, f.relative_to(path).as_posix()) for f in files]
        elif path.is_file():
            pairs = [(path, path.name)]
        else:
            raise BitmapsError(f"data path {path} is neither a file nor a folder")
        for f, doc_id in pairs:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append((f, doc_id))
    if not out:
        raise BitmapsError("no data paths given")
    return out


def decode_text(data: bytes, path: Path) -> str:
    """Strict UTF-8 (BOM dropped, newlines normalised); BitmapsError with the offending offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BitmapsError(
            f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
            f"({exc.reason}); convert it to UTF-8"
        ) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def read_documents(
    paths: Sequence[str | os.PathLike] | str | os.PathLike, *, per_line: bool = False
) -> list[Document]:
    """Read and validate every text file under ``paths``; one document per file (or per line)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    docs: list[Document] = []
    for path, name in _expand(paths):
        # a file name that is not UTF-8 (its bytes kept as surrogates) as printable text: ids
        # are hashed and written as UTF-8
        doc_id = os.fsencode(name).decode("utf-8", errors="backslashreplace")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BitmapsError(f"cannot read {path}: {exc.strerror}") from None
        text = decode_text(data, path)
        if not text.strip():
            raise BitmapsError(f"{path} is empty" + (" (only whitespace)" if data else ""))
        if per_line:
            docs.extend(
                Document(f"{doc_id}:{i}", path, line.strip())
                for i, line in enumerate(text.split("\n"), start=1)
                if line.strip()
            )
        else:
            docs.append(Document(doc_id, path, text))
    return docs


def _is_abbreviation(chunk: str) -> bool:
    """Does ``chunk`` (text ending at a '.') end with an abbreviation rather than a sentence?"""
    word = chunk.rsplit(None, 1)[-1].lstrip("\"'(\u201c\u2018[").rstrip(".")
    if not word:
        return False
    if len(word) == 1:
        return word.isalpha() and word != "I"  # an initial, as in "John F. Kennedy"
    return word.lower() in ABBREVIATIONS or bool(_INITIALS.match(word))


def split_sentences(text: str) -> list[str]:
    """Split English prose into sentences (see module doc); whitespace inside is collapsed."""
    sentences: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        paragraph = _WHITESPACE.sub(" ", paragraph).strip()
        start = 0
        for m in _BOUNDARY.finditer(paragraph):
            end = m.start(1)
            body = paragraph[start:end].rstrip(_CLOSERS)
            if body.endswith(".") and _is_abbreviation(body):
                continue
            sentences.append(paragraph[start:end])
            start = m.end(1)
        if start < len(paragraph):
            sentences.append(paragraph[start:])
    return sentences
