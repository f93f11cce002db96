"""Labelled text for classification: reading, validation, the split by document, tokenizing, batches.

Formats (``read_labelled``), one or more paths of the same kind:

- a folder of class subfolders: ``data/<label>/**/*.txt``, one document per file; the label is the
  subfolder's name, and every subfolder is a class (an empty one is an error, not a silent skip);
- a ``.jsonl`` file: one JSON object per line with a string ``text`` and a ``label`` (string or
  integer; stored as its string form), optional ``id``;
- a ``.csv`` file with a header row naming ``text`` and ``label`` columns (optional ``id``);
- the SpamAssassin asset (``spam-assassin`` or its folder; ``bitmaps.data.spam_assassin``).

A document's id is its path below the class folder's parent (folders), ``<file>:<line>``
(JSONL), ``<file>:<row>`` (CSV, 1-based data rows) or ``<group>/<message>`` (SpamAssassin), unless
the row gives an ``id``. Label names are sorted, so a label's index does not depend on file order.

Validation (each a :class:`~bitmaps.core.errors.BitmapsError` of one line naming the file): text
that is not UTF-8, empty text, a missing or empty label, a row that is not an object / lacks a
column, duplicate ids, an empty class folder, fewer than two classes, and (``labels=`` given, as
when a trained classifier is evaluated) a label the model does not know.

The split is by document, as for masked LM (``bitmaps.data.corpus.choose_heldout``): a hash of
``split_seed`` and the id, so adding documents never moves another between splits.
Tokenizing: ``[CLS] text [SEP]``, truncated to ``seq_len`` and padded to it (the mail bodies are
long; only their start is read). Batches carry ``input_ids``, ``attention_mask`` and ``labels``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from bitmaps.core import jsontext
from bitmaps.core.config import DataConfig
from bitmaps.core.errors import BitmapsError
from bitmaps.data.assets import asset_dir
from bitmaps.data.corpus import choose_heldout
from bitmaps.data.spam_assassin import SPAM_ASSET, SPAM_TARBALL, read_spam_assassin
from bitmaps.data.text import _text_files, decode_text

# Text kept before tokenizing, at first: seq_len tokens rarely need more characters. Where they
# do (runs of whitespace: indented or HTML-remnant mail bodies) the cut grows until the tokens fill
# seq_len or the text is whole (_tokenize).
CHARS_PER_TOKEN = 16
# What BERT's tokenizer splits words on (its _is_whitespace): a cut there keeps every word whole, so
# the tokens of the text up to it are the first tokens of the whole text.
_WORD_BREAK = re.compile("[ \t\n\r\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    text: str
    label: str


@dataclasses.dataclass
class LabelledData:
    examples: list[Example]
    labels: tuple[str, ...]  # sorted label names; index = class id
    source: str  # what was read, for messages

    def counts(self, examples: Sequence[Example] | None = None) -> dict[str, int]:
        out = dict.fromkeys(self.labels, 0)
        for ex in self.examples if examples is None else examples:
            out[ex.label] += 1
        return out


# --- readers ------------------------------------------------------------------------------------


def _check_text(text: str, where: str) -> str:
    if not text.strip():
        raise BitmapsError(f"{where}: empty text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. JSON's "\ud800"
        raise BitmapsError(
            f"{where}: the text is not valid Unicode ({exc.reason} at character {exc.start}); "
            "fix the file"
        ) from None
    return text


def _label_of(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BitmapsError(f"{where}: label must be a string or an integer, got {value!r}")
    label = str(value).strip()
    if not label:
        raise BitmapsError(f"{where}: empty label")
    if not label.isprintable():  # a newline or control character would break every table
        raise BitmapsError(f"{where}: label {label!r} holds a line break or control character")
    return label


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BitmapsError(f"cannot read {path}: {exc.strerror}") from None


def _read_class_folders(folder: Path) -> list[Example]:
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise BitmapsError(
            f"{folder} has no class subfolders; labelled data is a folder of <label>/ folders "
            "of .txt files, a .jsonl or a .csv file"
        )
    out = []
    for sub in subdirs:
        files = _text_files(sub)
        if not files:
            raise BitmapsError(f"class folder {sub} is empty (no .txt files): an empty class")
        for f in files:
            text = _check_text(decode_text(_read_bytes(f), f), str(f))
            out.append(Example(f.relative_to(folder).as_posix(), text, sub.name))
    return out


def _read_jsonl(path: Path) -> list[Example]:
    text = decode_text(_read_bytes(path), path)
    out = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = jsontext.loads(line)
        except jsontext.JsonTextError as exc:
            raise BitmapsError(f"{where}: {exc}") from None
        if not isinstance(row, dict) or "text" not in row or "label" not in row:
            raise BitmapsError(f"{where}: expected an object with 'text' and 'label'")
        if not isinstance(row["text"], str):
            raise BitmapsError(f"{where}: 'text' must be a string")
        doc_id = row.get("id", f"{path.name}:{n}")
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            raise BitmapsError(f"{where}: 'id' must be a string or an integer")
        doc_id = str(doc_id)
        out.append(Example(doc_id, _check_text(row["text"], where), _label_of(row["label"], where)))
    return out


def _read_csv(path: Path) -> list[Example]:
    text = decode_text(_read_bytes(path), path)
    # a field may be as long as the file (a long mail body): Python's default limit is 128 KiB
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    if "text" not in fields or "label" not in fields:
        raise BitmapsError(f"{path}: the header must name 'text' and 'label' columns, got {fields}")
    repeated = sorted({name for name in fields if fields.count(name) > 1})
    if repeated:
        raise BitmapsError(f"{path}: the header names column {repeated[0]!r} twice")
    out = []
    try:
        for n, row in enumerate(reader, start=1):
            where = f"{path}: row {n}"
            if row.get("text") is None or row.get("label") is None:
                raise BitmapsError(f"{where}: missing the text or label column")
            if None in row:  # csv.DictReader's key for fields beyond the header's
                raise BitmapsError(
                    f"{where}: {len(fields) + len(row[None])} fields, the header has {len(fields)} "
                    "(a comma in an unquoted text?)"
                )
            doc_id = row.get("id") or f"{path.name}:{n}"
            out.append(
                Example(doc_id, _check_text(row["text"], where), _label_of(row["label"], where))
            )
    except csv.Error as exc:
        raise BitmapsError(f"{path}: not valid CSV ({exc})") from None
    return out


# --- entry point --------------------------------------------------------------------------------


def _resolve(raw: str | os.PathLike) -> Path:
    path = Path(raw).expanduser()
    if not path.exists() and str(raw) == SPAM_ASSET:
        return asset_dir(SPAM_ASSET)
    if not path.exists():
        raise BitmapsError(f"data path {path} does not exist")
    return path


def read_labelled(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
) -> LabelledData:
    """Read and validate labelled documents (see the module doc); ``labels``: the allowed names."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise BitmapsError("no data paths given")
    examples: list[Example] = []
    seen: set[Path] = set()
    for raw in paths:
        path = _resolve(raw)
        if path.resolve() in seen:  # the same file or folder twice: read once, as text data is
            continue
        seen.add(path.resolve())
        if path.is_dir() and (path / SPAM_TARBALL).is_file():
            examples += [Example(*message) for message in read_spam_assassin(path)]
        elif path.is_dir():
            examples += _read_class_folders(path)
        elif path.suffix.lower() == ".jsonl":
            examples += _read_jsonl(path)
        elif path.suffix.lower() == ".csv":
            examples += _read_csv(path)
        else:
            raise BitmapsError(
                f"{path}: labelled data is a folder of class subfolders, a .jsonl or a .csv file"
            )
    ids: set[str] = set()
    for ex in examples:
        if ex.id in ids:
            raise BitmapsError(
                f"duplicate document id {ex.id!r} in the labelled data (a row's own 'id', or "
                "file name:line of two files with the same name): give the rows unique 'id' "
                "values, or rename one of the files"
            )
        ids.add(ex.id)
    found = sorted({ex.label for ex in examples})
    source = ", ".join(str(p) for p in paths)
    if labels is not None:
        unknown = [lb for lb in found if lb not in labels]
        if unknown:
            raise BitmapsError(
                f"{source}: label(s) {', '.join(unknown)} not among the model's labels "
                f"({', '.join(labels)})"
            )
        return LabelledData(examples, tuple(labels), source)
    if len(found) < 2:
        raise BitmapsError(
            f"{source}: classification needs at least two classes, found "
            f"{len(found)} ({', '.join(found) or 'no documents'})"
        )
    return LabelledData(examples, tuple(found), source)


# --- split, tokens, batches ---------------------------------------------------------------------


@dataclasses.dataclass
class LabelledSplit:
    """One split, tokenized: int32 ``input_ids`` ``[N, seq_len]``, lengths and int64 labels."""

    input_ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = self.input_ids[index].long()
        positions = torch.arange(ids.shape[1])
        mask = (positions[None, :] < self.lengths[index][:, None]).long()
        return {"input_ids": ids, "attention_mask": mask, "labels": self.labels[index]}


@dataclasses.dataclass
class LabelledCorpus:
    train: LabelledSplit
    heldout: LabelledSplit
    labels: tuple[str, ...]
    key: str  # fingerprint of the documents, labels, tokenizer and settings (resume check)
    stats: dict[str, Any]


def _prefix(text: str, chars: int) -> str:
    """``text`` up to the first word break at or after ``chars`` (all of it if there is none)."""
    if len(text) <= chars:
        return text
    m = _WORD_BREAK.search(text, chars)
    return text if m is None else text[: m.start()]


def _tokenize(examples: Sequence[Example], tokenizer: Any, seq_len: int) -> tuple[list, list]:
    """Token ids and attention masks, ``seq_len`` each, of every text cut where its first
    ``seq_len`` tokens are surely inside: ``seq_len`` × CHARS_PER_TOKEN characters, then four
    times more for the texts that gave fewer tokens than that while longer, until whole."""

    def encode(texts: list[str]) -> tuple[list, list]:
        enc = tokenizer(texts, truncation=True, max_length=seq_len, padding="max_length",
                        return_attention_mask=True)  # fmt: skip
        return enc["input_ids"], enc["attention_mask"]

    chars = seq_len * CHARS_PER_TOKEN
    texts = [_prefix(ex.text, chars) for ex in examples]
    ids, masks = encode(texts)
    todo = list(range(len(examples)))
    while True:
        todo = [
            i for i in todo if len(texts[i]) < len(examples[i].text) and sum(masks[i]) < seq_len
        ]
        if not todo:
            return ids, masks
        chars *= 4
        for i in todo:
            texts[i] = _prefix(examples[i].text, chars)
        for i, row, mask in zip(todo, *encode([texts[i] for i in todo]), strict=True):
            ids[i], masks[i] = row, mask


def tokenize_split(examples: Sequence[Example], labels: Sequence[str], tokenizer: Any,
                   seq_len: int) -> LabelledSplit:  # fmt: skip
    index = {name: i for i, name in enumerate(labels)}
    ids, masks = _tokenize(examples, tokenizer, seq_len)
    input_ids = torch.tensor(ids, dtype=torch.int32).reshape(-1, seq_len)
    lengths = torch.tensor([sum(m) for m in masks], dtype=torch.int64)
    y = torch.tensor([index[ex.label] for ex in examples], dtype=torch.int64)
    return LabelledSplit(input_ids, lengths, y, [ex.id for ex in examples])


def _key(data: LabelledData, tokenizer: Any, cfg: DataConfig) -> str:
    h = hashlib.sha256()
    # "cut 2": texts cut at word breaks, as far as seq_len tokens need (stop 49; before, at
    # seq_len * 16 characters)
    h.update(json.dumps([cfg.seq_len, cfg.heldout_fraction, cfg.split_seed, data.labels,
                         "cut 2"]).encode())  # fmt: skip
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    for ex in data.examples:
        h.update(f"{ex.id}\0{ex.label}\0".encode())
        h.update(hashlib.sha256(ex.text.encode()).digest())
    return h.hexdigest()


def build_labelled(data: LabelledData, tokenizer: Any, cfg: DataConfig) -> LabelledCorpus:
    """Split ``data`` by document and tokenize both splits."""
    flags = choose_heldout([ex.id for ex in data.examples], cfg.heldout_fraction, cfg.split_seed)
    train = [ex for ex, h in zip(data.examples, flags, strict=True) if not h]
    heldout = [ex for ex, h in zip(data.examples, flags, strict=True) if h]
    if not train or not heldout:
        raise BitmapsError(
            f"{data.source}: {len(data.examples)} document(s) give an empty train or held-out "
            "split; add documents or change heldout_fraction"
        )
    tr = tokenize_split(train, data.labels, tokenizer, cfg.seq_len)
    ho = tokenize_split(heldout, data.labels, tokenizer, cfg.seq_len)
    stats = {
        "labels": list(data.labels),
        "seq_len": cfg.seq_len,
        "train": _split_stats(data, train, tr, cfg.seq_len),
        "heldout": _split_stats(data, heldout, ho, cfg.seq_len),
    }
    return LabelledCorpus(tr, ho, data.labels, _key(data, tokenizer, cfg), stats)


def _split_stats(data: LabelledData, examples: Sequence[Example], split: LabelledSplit,
                 seq_len: int) -> dict[str, Any]:  # fmt: skip
    lengths = split.lengths
    return {
        "documents": len(examples),
        "per_label": data.counts(examples),
        "tokens": int(lengths.sum()),
        "truncated": int((lengths >= seq_len).sum()),
        "mean_chars": sum(len(ex.text) for ex in examples) / max(1, len(examples)),
    }


def describe_stats(stats: dict[str, Any]) -> str:
    """Two lines: documents per label and split, tokens, how many reached seq_len."""
    lines = []
    for split in ("train", "heldout"):
        s = stats[split]
        per = ", ".join(f"{k} {v}" for k, v in s["per_label"].items())
        lines.append(
            f"{split}: {s['documents']} documents ({per}), {s['tokens']:,} tokens in "
            f"sequences of {stats['seq_len']}, {s['truncated']} truncated, "
            f"{s['mean_chars']:.0f} characters per document on average"
        )
    return "\n".join(lines)


class ClassifyStream:
    """Shuffled training batches, epoch after epoch; ``state_dict`` resumes exactly.

    Each epoch is a permutation from ``seed + epoch``; under ``torchrun`` rank r takes every
    world_size-th example of it, so the data order does not depend on the process count's timing.
    """

    def __init__(self, split: LabelledSplit, *, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:  # fmt: skip
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0

    def _order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.split), generator=g)[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        order = self._order()
        if self.position + self.batch_size > len(order):
            self.epoch, self.position = self.epoch + 1, 0
            order = self._order()
        index = order[self.position : self.position + self.batch_size]
        self.position += len(index)
        return self.split.batch(index)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def classify_batches(split: LabelledSplit, *, batch_size: int, max_examples: int = 0, rank: int = 0,
                     world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:  # fmt: skip
    """Held-out batches in a fixed order, sharded by rank: every example, or ``max_examples`` of
    them spread evenly over the split (``i * len // max_examples``): the split keeps its files'
    order, often one class after another, and its first 256 were all ham in SpamAssassin's
    (a "majority class 1.0000" and macro-F1 half of accuracy in a training log)."""
    total = len(split)
    if max_examples <= 0 or max_examples >= total:
        index = torch.arange(total)
    else:
        index = torch.arange(max_examples) * total // max_examples
    index = index[rank::world_size]
    for start in range(0, len(index), batch_size):
        yield split.batch(index[start : start + batch_size])
