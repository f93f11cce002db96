"""The data pipeline: text → packed ``seq_len``-token sequences → held-out split → disk cache.

Public API (all re-exported here, so callers import from ``bitmaps.data.corpus``):

- :func:`read_documents` (``bitmaps.data.text``): files/folders → validated :class:`Document` s.
- :func:`build_corpus` ``(paths, tokenizer, cfg, cache_dir=None, log=print) -> Corpus``:
  ``corpus.train`` / ``corpus.heldout`` are int32 ``[S, seq_len]`` tensors, ``corpus.stats`` counts
  documents, sentences, tokens, sequences and padding per split (``stats.describe()``: one line),
  ``corpus.vocab`` is the :class:`MaskVocab` for masking.
- :func:`mask_batch`, :func:`attention_mask`, :class:`TrainStream`, :func:`eval_batches`
  (``bitmaps.data.masking``): on-the-fly 15% / 80-10-10 masking and the batch iterators.
- :func:`load_tokenizer`: a model's fast tokenizer, by asset name or folder.

Packing, as in the original study: each document's sentences are tokenized (no special tokens,
in batches of sentences) and concatenated; the token stream is cut into sequences
``[CLS] t_1 … t_{L-2} [SEP]``, filled to the brim, so a sentence is split across two sequences
only where a sequence is full. Only a document's last sequence is padded (``[CLS] … [SEP] [PAD]
…``), which keeps padding near ``documents · L / 2`` tokens: 0.70% / 0.57% (train / held-out) on
the State of the Union text. Sequences never mix documents.

Held-out split, by document: a document is held out if ``sha256(split_seed, id)`` mapped to [0, 1)
is below ``heldout_fraction``. Membership depends only on the document's id, so adding files never
moves an existing document between splits. With ``heldout_fraction > 0`` and at least two
documents, neither split is empty (the document with the lowest hash is held out if none was; the
highest goes back to training if all were).

Cache: ``<cache_dir>/corpus-<key>.safetensors`` (default ``$BITMAPS_CACHE/data``), where the key
hashes the pipeline version, the tokenizer (vocabulary, normalizer, pre-tokenizer, special ids —
not its transient truncation/padding state), every document's id and content hash, and the packing
parameters. Loading reads safetensors (no pickle); an unreadable cache file is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer

from bitmaps.core.atomic import atomic_output
from bitmaps.core.checkpoint import tensors_digest
from bitmaps.core.config import DataConfig
from bitmaps.core.errors import BitmapsError, one_line
from bitmaps.data.assets import cache_root, resolve_model
from bitmaps.data.masking import (
    MaskVocab,
    TrainStream,
    attention_mask,
    eval_batches,
    mask_batch,
)
from bitmaps.data.text import Document, read_documents, split_sentences

__all__ = [
    "Corpus",
    "CorpusStats",
    "Document",
    "MaskVocab",
    "SplitStats",
    "TrainStream",
    "attention_mask",
    "build_corpus",
    "default_cache_dir",
    "eval_batches",
    "load_tokenizer",
    "mask_batch",
    "read_documents",
    "split_sentences",
    "tokenizer_fingerprint",
]

PIPELINE_VERSION = 1  # bump when packing or splitting changes: old cache files stop matching
TOKENIZE_CHUNK = 8192  # sentences per tokenizer call: bounded memory, progress in the log

Log = Callable[[str], None]


@dataclasses.dataclass
class SplitStats:
    """Counts for one split; ``tokens`` are text tokens (no [CLS]/[SEP]/[PAD])."""

    documents: int = 0
    sentences: int = 0
    tokens: int = 0
    sequences: int = 0
    padding: int = 0  # [PAD] positions
    seq_len: int = 128

    @property
    def padding_fraction(self) -> float:
        total = self.sequences * self.seq_len
        return self.padding / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "padding_fraction": self.padding_fraction}


@dataclasses.dataclass
class CorpusStats:
    train: SplitStats
    heldout: SplitStats

    def describe(self) -> str:
        t, h = self.train, self.heldout
        return (
            f"{t.documents + h.documents} documents "
            f"({t.documents} train / {h.documents} held-out), "
            f"{t.sentences + h.sentences:,} sentences, {t.tokens + h.tokens:,} tokens, "
            f"{t.sequences:,} / {h.sequences:,} sequences of {t.seq_len}, "
            f"padding {100 * t.padding_fraction:.2f}% / {100 * h.padding_fraction:.2f}%"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"train": self.train.to_dict(), "heldout": self.heldout.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CorpusStats:
        def split(s: dict[str, Any]) -> SplitStats:
            return SplitStats(**{k: v for k, v in s.items() if k != "padding_fraction"})

        return cls(split(d["train"]), split(d["heldout"]))


@dataclasses.dataclass
class Corpus:
    """Packed sequences of both splits, and which document each sequence came from."""

    train: torch.Tensor  # int32 [S_train, seq_len]
    heldout: torch.Tensor  # int32 [S_heldout, seq_len]
    train_doc: torch.Tensor  # int32 [S_train]: index into ``documents``
    heldout_doc: torch.Tensor  # int32 [S_heldout]
    documents: list[str]  # document ids, in input order
    stats: CorpusStats
    vocab: MaskVocab
    key: str  # cache key: equal keys mean identical tensors
    cache_path: Path | None = None
    from_cache: bool = False
    seconds: float = 0.0  # wall time of the build_corpus call that made it (build or load)


def default_cache_dir() -> Path:

    return cache_root() / "data"


def load_tokenizer(name_or_path: str | os.PathLike) -> Any:
    """The fast (Rust) tokenizer of a model folder or asset name (``bert-tiny``, ``minilm-l6``)."""

    if not str(name_or_path).strip():
        raise BitmapsError("an empty tokenizer path: give a model folder or a model name")
    folder = Path(resolve_model(name_or_path))
    return tokenizer_from_folder(folder, f"the tokenizer in {folder}")


def tokenizer_from_folder(folder: Path, what: str) -> Any:
    """The fast tokenizer of ``folder`` (``what`` names it in errors): a folder without
    tokenizer.json or vocab.txt, or with files transformers cannot read, is one BitmapsError."""
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        raise BitmapsError(f"{what} is missing: no tokenizer.json or vocab.txt in {folder}")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    except Exception as exc:  # noqa: BLE001 -- transformers and tokenizers raise many types
        # (ValueError, OSError, a bare Exception from the Rust parser, ...) for unreadable files
        raise BitmapsError(
            f"{what} cannot be loaded ({type(exc).__name__}: {one_line(exc)}); its "
            "tokenizer.json / vocab.txt must be a BERT tokenizer's, in UTF-8"
        ) from None
    if not getattr(tok, "is_fast", False):
        raise BitmapsError(f"{what} is not a fast tokenizer (tokenizer.json)")
    return tok


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of what decides token ids; truncation/padding state (set per call) is left out."""
    try:
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
    except AttributeError:
        raise BitmapsError("the data pipeline needs a fast (Rust) tokenizer") from None
    spec.pop("truncation", None)
    spec.pop("padding", None)
    spec["special_ids"] = sorted(tokenizer.all_special_ids)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def heldout_score(doc_id: str, split_seed: int) -> float:
    """A document's position in [0, 1) for the split: a hash, so stable across runs and machines."""
    digest = hashlib.sha256(f"{split_seed}\0{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def choose_heldout(ids: Sequence[str], fraction: float, split_seed: int) -> list[bool]:
    """Held-out flag per document (see module doc for the rule and its guarantees)."""
    scores = [heldout_score(i, split_seed) for i in ids]
    flags = [s < fraction for s in scores]
    if fraction > 0 and len(ids) >= 2:
        if not any(flags):
            flags[min(range(len(ids)), key=scores.__getitem__)] = True
        if all(flags):
            flags[max(range(len(ids)), key=scores.__getitem__)] = False
    return flags


def _tokenize(sentences: list[str], tokenizer: Any) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(sentences), TOKENIZE_CHUNK):
        batch = sentences[start : start + TOKENIZE_CHUNK]
        enc = tokenizer(
            batch,
            add_special_tokens=False,
            truncation=False,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # long sentences are fine here: packing cuts them
        )
        out.extend(enc["input_ids"])
    return out


def pack_tokens(tokens: np.ndarray, seq_len: int, vocab: MaskVocab) -> np.ndarray:
    """One document's token ids → int32 ``[k, seq_len]`` rows ``[CLS] … [SEP] [PAD]*``."""
    width = seq_len - 2
    n = len(tokens)
    k = -(-n // width)
    rows = np.full((k, seq_len), vocab.pad_id, dtype=np.int32)
    rows[:, 0] = vocab.cls_id
    full = n // width
    if full:
        rows[:full, 1 : width + 1] = tokens[: full * width].reshape(full, width)
        rows[:full, width + 1] = vocab.sep_id
    rest = n - full * width
    if rest:
        rows[full, 1 : rest + 1] = tokens[full * width :]
        rows[full, rest + 1] = vocab.sep_id
    return rows


def _corpus_key(docs: list[Document], tokenizer: Any, cfg: DataConfig) -> str:
    h = hashlib.sha256()
    params = {
        "pipeline": PIPELINE_VERSION,
        "seq_len": cfg.seq_len,
        "heldout_fraction": cfg.heldout_fraction,
        "split_seed": cfg.split_seed,
        "per_line": cfg.per_line,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    h.update(json.dumps(params, sort_keys=True).encode())
    for d in docs:
        h.update(f"\0{d.id}\0".encode())
        h.update(hashlib.sha256(d.text.encode()).digest())
    return h.hexdigest()


def _build(docs: list[Document], tokenizer: Any, cfg: DataConfig, vocab: MaskVocab, log: Log):
    t0 = time.perf_counter()
    per_doc = [split_sentences(d.text) for d in docs]
    flat = list(itertools.chain.from_iterable(per_doc))
    ids = _tokenize(flat, tokenizer)
    log(f"data: split and tokenized {len(flat):,} sentences in {time.perf_counter() - t0:.1f} s")

    flags = choose_heldout([d.id for d in docs], cfg.heldout_fraction, cfg.split_seed)
    rows: dict[bool, list[np.ndarray]] = {False: [], True: []}
    owner: dict[bool, list[np.ndarray]] = {False: [], True: []}
    stats = {False: SplitStats(seq_len=cfg.seq_len), True: SplitStats(seq_len=cfg.seq_len)}
    pos = 0
    for index, (sentences, held) in enumerate(zip(per_doc, flags, strict=True)):
        doc_ids = ids[pos : pos + len(sentences)]
        pos += len(sentences)
        tokens = np.fromiter(itertools.chain.from_iterable(doc_ids), dtype=np.int32)
        if len(tokens) == 0:
            continue  # e.g. only control characters: nothing to learn from
        packed = pack_tokens(tokens, cfg.seq_len, vocab)
        rows[held].append(packed)
        owner[held].append(np.full(len(packed), index, dtype=np.int32))
        s = stats[held]
        s.documents += 1
        s.sentences += len(sentences)
        s.tokens += len(tokens)
        s.sequences += len(packed)
        s.padding += int((packed[-1] == vocab.pad_id).sum())

    def stack(parts: list[np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(shape, np.int32))

    L = cfg.seq_len
    return (
        stack(rows[False], (0, L)),
        stack(rows[True], (0, L)),
        stack(owner[False], (0,)),
        stack(owner[True], (0,)),
        CorpusStats(stats[False], stats[True]),
    )


def _check_enough(stats: CorpusStats, cfg: DataConfig, paths: Sequence[Any]) -> None:
    where = ", ".join(str(p) for p in paths)
    docs = stats.train.documents + stats.heldout.documents
    if cfg.heldout_fraction > 0 and docs < 2:
        raise BitmapsError(
            f"too little text in {where}: {docs} document(s), {stats.train.tokens:,} tokens; a "
            "held-out split needs at least 2 documents (add files; data-stats also counts with "
            "heldout_fraction 0, which train and eval cannot use: they score the held-out split)"
        )
    if stats.train.sequences == 0:
        raise BitmapsError(f"too little text in {where}: the training split is empty")
    if cfg.heldout_fraction > 0 and stats.heldout.sequences == 0:
        raise BitmapsError(f"too little text in {where}: the held-out split is empty")


# The cache file's tensors; their digest is written with them and checked at load: a file edited
# in place (the header intact) is rebuilt, not used (a token id out of range crashed the model; one
# in range silently changed every number).
_CACHED = ("train", "heldout", "train_doc", "heldout_doc")


def _save(path: Path, corpus: Corpus, log: Log) -> None:

    tensors = {
        "train": corpus.train,
        "heldout": corpus.heldout,
        "train_doc": corpus.train_doc,
        "heldout_doc": corpus.heldout_doc,
    }
    meta = {
        "key": corpus.key,
        "content": tensors_digest(tensors),
        "stats": json.dumps(corpus.stats.to_dict()),
        "documents": json.dumps(corpus.documents),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    except (OSError, BitmapsError, SafetensorError) as exc:  # safetensors' own for a full disk
        log(f"data: could not write the cache file {path} ({exc}); continuing without it")


def _load(path: Path, key: str, vocab: MaskVocab, log: Log) -> Corpus | None:

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key:
                raise ValueError("key mismatch")
            t = {name: f.get_tensor(name) for name in _CACHED}
        if meta.get("content") != tensors_digest(t):  # absent: written before it was recorded
            raise ValueError("its tensors do not match the digest it was written with")
        stats = CorpusStats.from_dict(json.loads(meta["stats"]))
        documents = json.loads(meta["documents"])
    except Exception as exc:  # any damage to a cache file means: rebuild it
        log(f"data: cache file {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding")
        return None
    return Corpus(
        t["train"], t["heldout"], t["train_doc"], t["heldout_doc"], documents, stats, vocab, key,
        cache_path=path, from_cache=True,
    )  # fmt: skip


def build_corpus(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    tokenizer: Any,
    cfg: DataConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    log: Log = print,
    *,
    use_cache: bool = True,
) -> Corpus:
    """Read, split, tokenize, pack and split by document, or load all of it from the cache."""
    cfg = cfg or DataConfig()
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    t0 = time.perf_counter()
    vocab = MaskVocab.from_tokenizer(tokenizer)
    docs = read_documents(paths, per_line=cfg.per_line)
    key = _corpus_key(docs, tokenizer, cfg)
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"corpus-{key[:32]}.safetensors"
    if use_cache and (corpus := _load(path, key, vocab, log)) is not None:
        _check_enough(corpus.stats, cfg, paths)
        corpus.seconds = time.perf_counter() - t0
        log(f"data: loaded {path} in {corpus.seconds:.2f} s")
        return corpus
    total = sum(len(d.text) for d in docs)
    log(f"data: read {len(docs)} documents ({total / 1e6:.1f} M characters)")
    train, heldout, train_doc, heldout_doc, stats = _build(docs, tokenizer, cfg, vocab, log)
    _check_enough(stats, cfg, paths)
    corpus = Corpus(train, heldout, train_doc, heldout_doc, [d.id for d in docs], stats, vocab, key)
    if use_cache:
        _save(path, corpus, log)
        corpus.cache_path = path if path.is_file() else None
    corpus.seconds = time.perf_counter() - t0
    log(f"data: built in {corpus.seconds:.1f} s: {stats.describe()}")
    return corpus
