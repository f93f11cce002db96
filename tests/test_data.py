"""Data pipeline: reading and validation, sentences, packing, the held-out split and the cache.

Real text where it matters: all 233 State of the Union speeches with BERT-tiny's tokenizer (built
once per session into a temporary cache). Masking and the batch iterators: tests/test_masking.py.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from bitmaps.cli import main
from bitmaps.core.config import DataConfig
from bitmaps.core.errors import BitmapsError
from bitmaps.data import corpus as corpus_module
from bitmaps.data.corpus import (
    build_corpus,
    choose_heldout,
    read_documents,
    split_sentences,
    tokenizer_fingerprint,
)


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="session")
def sotu_build(sotu_corpus):
    """(corpus, cache folder) for the first, uncached build of all of SOTU."""
    assert not sotu_corpus.from_cache
    return sotu_corpus, sotu_corpus.cache_path.parent


# --- reading and validation --------------------------------------------------------------------


def test_read_documents_walks_folders(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_bytes(b"\xef\xbb\xbfFirst line.\r\nSecond line.")
    (root / "sub" / "b.TXT").write_text("Nested text.", encoding="utf-8")
    (root / "README.md").write_text("not a text file", encoding="utf-8")
    (root / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (root / ".git" / "c.txt").write_text("hidden folder", encoding="utf-8")
    other = tmp_path / "x.text"
    other.write_text("Given by name.", encoding="utf-8")

    docs = read_documents([root, other, root / "a.txt"])  # a.txt twice: read once
    assert [d.id for d in docs] == ["a.txt", "sub/b.TXT", "x.text"]
    assert docs[0].text == "First line.\nSecond line."  # BOM dropped, CRLF normalised
    assert docs[2].path == other


def test_read_documents_per_line(tmp_path):
    f = tmp_path / "lines.txt"
    f.write_text("One doc.\n\nTwo doc.\n   \nThree doc.\n", encoding="utf-8")
    docs = read_documents(f, per_line=True)
    assert [(d.id, d.text) for d in docs] == [
        ("lines.txt:1", "One doc."),
        ("lines.txt:3", "Two doc."),
        ("lines.txt:5", "Three doc."),
    ]


def _bad_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\t\n", encoding="utf-8")
    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    no_text = tmp_path / "no_text"
    no_text.mkdir()
    (no_text / "README.md").write_text("# hi", encoding="utf-8")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"Hello world.\n caf\xe9 au lait.")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "good.txt").write_text("Fine text.", encoding="utf-8")
    (mixed / "bad.txt").write_bytes(b"ok \xff\xfe")
    return {
        "missing": (tmp_path / "nope", r"data path .*nope does not exist"),
        "empty file": (empty, r"empty\.txt is empty$"),
        "whitespace only": (blank, r"blank\.txt is empty \(only whitespace\)"),
        "empty folder": (empty_dir, r"folder .*empty_dir has no text files"),
        "folder without text": (no_text, r"folder .*no_text has no text files"),
        "non-UTF-8": (latin1, r"latin1\.txt is not UTF-8 text: byte 0xe9 at offset 17"),
        "one bad file in a folder": (
            mixed,
            r"mixed/bad\.txt is not UTF-8 text: byte 0xff at offset 3",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty file",
        "whitespace only",
        "empty folder",
        "folder without text",
        "non-UTF-8",
        "one bad file in a folder",
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, case):
    path, message = _bad_inputs(tmp_path)[case]
    with pytest.raises(BitmapsError, match=message):
        read_documents([path])


@pytest.mark.parametrize("case", ["missing", "non-UTF-8", "folder without text"])
def test_bad_input_cli_exit_2_one_line(tmp_path, capsys, case):
    path, message = _bad_inputs(tmp_path)[case]
    assert main(["data-stats", str(path), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "Traceback" not in err


def test_too_little_text(tmp_path, bert_tiny_tokenizer):
    one = tmp_path / "one"
    one.mkdir()
    (one / "only.txt").write_text("A single short document.", encoding="utf-8")
    with pytest.raises(BitmapsError, match=r"too little text .*1 document\(s\).*at least 2"):
        build_corpus(one, bert_tiny_tokenizer, DataConfig(), use_cache=False, log=_quiet)
    # Without a held-out split one document is enough.
    corpus = build_corpus(
        one, bert_tiny_tokenizer, DataConfig(heldout_fraction=0.0), use_cache=False, log=_quiet
    )
    assert corpus.train.shape == (1, 128) and corpus.heldout.shape == (0, 128)


# --- sentences ----------------------------------------------------------------------------------


def test_split_sentences():
    text = (
        'Mr. Smith went to Washington, D.C. on Jan. 5. He met Gen. Grant! Did they talk? "Yes," '
        "he said. The U.S. Government paid $3.5 million. John F. Kennedy spoke... Then came World "
        "War I. The end.\n\nA paragraph without a period\nand a line break. (Another one.) 1790 "
        "was a year."
    )
    assert split_sentences(text) == [
        "Mr. Smith went to Washington, D.C. on Jan. 5.",
        "He met Gen. Grant!",
        "Did they talk?",
        '"Yes," he said.',
        "The U.S. Government paid $3.5 million.",
        "John F. Kennedy spoke...",
        "Then came World War I.",
        "The end.",
        "A paragraph without a period and a line break.",
        "(Another one.)",
        "1790 was a year.",
    ]


def test_split_sentences_keeps_every_character(sotu_dir):
    for doc in read_documents(sotu_dir):
        sentences = split_sentences(doc.text)
        assert " ".join(sentences) == " ".join(doc.text.split()), doc.id
        assert all(s and s == s.strip() for s in sentences)


# --- packing on the real corpus ----------------------------------------------------------------


def test_packing_special_tokens_and_padding(sotu_build):
    corpus, _ = sotu_build
    v = corpus.vocab
    for rows, doc_of, stats in (
        (corpus.train, corpus.train_doc, corpus.stats.train),
        (corpus.heldout, corpus.heldout_doc, corpus.stats.heldout),
    ):
        assert rows.dtype == torch.int32 and rows.ndim == 2 and rows.shape[1] == 128
        assert len(rows) == stats.sequences == len(doc_of) > 0
        assert (rows[:, 0] == v.cls_id).all()
        assert ((rows == v.cls_id).sum(1) == 1).all() and ((rows == v.sep_id).sum(1) == 1).all()
        is_pad = rows == v.pad_id
        length = 128 - is_pad.sum(1)  # [CLS] + content + [SEP]
        assert (rows[torch.arange(len(rows)), length - 1] == v.sep_id).all()
        # Padding is a suffix only: no [PAD] before the end of the content.
        assert (is_pad == (torch.arange(128) >= length[:, None])).all()
        # Only a document's last sequence may be padded.
        last_of_doc = torch.ones(len(rows), dtype=torch.bool)
        last_of_doc[:-1] = doc_of[1:] != doc_of[:-1]
        assert not (is_pad.any(1) & ~last_of_doc).any()
        assert int(is_pad.sum()) == stats.padding
        assert stats.padding_fraction < 0.02


def test_packing_loses_no_token(sotu_build, sotu_dir, bert_tiny_tokenizer):
    """Every split's content, in order, is exactly its documents' tokens, in order."""
    corpus, _ = sotu_build
    docs = read_documents(sotu_dir)
    assert corpus.documents == [d.id for d in docs]
    expected = bert_tiny_tokenizer([d.text for d in docs], add_special_tokens=False, verbose=False)[
        "input_ids"
    ]
    v = corpus.vocab
    for rows, doc_of in ((corpus.train, corpus.train_doc), (corpus.heldout, corpus.heldout_doc)):
        order = list(dict.fromkeys(doc_of.tolist()))  # documents in the order they were packed
        assert order == sorted(order)
        want = torch.tensor([t for d in order for t in expected[d]], dtype=torch.int32)
        content = rows[(rows != v.pad_id) & (rows != v.cls_id) & (rows != v.sep_id)]
        assert torch.equal(content, want)
    assert corpus.stats.train.tokens + corpus.stats.heldout.tokens == sum(map(len, expected))


def test_stats_describe(sotu_build):
    corpus, _ = sotu_build
    s = corpus.stats
    assert s.train.documents == len(set(corpus.train_doc.tolist()))
    assert s.heldout.documents == len(set(corpus.heldout_doc.tolist()))
    assert s.train.documents + s.heldout.documents == 233
    line = s.describe()
    assert "233 documents" in line and f"{s.train.sequences:,}" in line and "\n" not in line
    assert json.loads(json.dumps(s.to_dict()))["train"]["padding_fraction"] < 0.02


# --- held-out split -----------------------------------------------------------------------------


def test_split_is_by_document_and_deterministic(sotu_build):
    corpus, _ = sotu_build
    train_docs = set(corpus.train_doc.tolist())
    held_docs = set(corpus.heldout_doc.tolist())
    assert not train_docs & held_docs
    assert train_docs | held_docs == set(range(233))
    assert 10 <= len(held_docs) <= 40  # 10% of 233, give or take 3 standard deviations
    flags = choose_heldout(corpus.documents, 0.1, 0)
    assert {i for i, f in enumerate(flags) if f} == held_docs
    assert choose_heldout(corpus.documents, 0.1, 1) != flags  # the seed matters
    # A document's side depends on its id only: a subset keeps its members' sides.
    subset = corpus.documents[::7]
    sub_flags = choose_heldout(subset, 0.1, 0)
    assert any(sub_flags) and not all(sub_flags)
    assert sub_flags == flags[::7]


def test_split_never_empty_with_two_documents():
    for seed in range(25):
        assert sum(choose_heldout(["a.txt", "b.txt"], 0.01, seed)) == 1
        assert sum(choose_heldout(["a.txt", "b.txt"], 0.99, seed)) == 1
        assert sum(choose_heldout(["a.txt", "b.txt", "c.txt"], 0.0, seed)) == 0


# --- cache ---------------------------------------------------------------------------------------


def test_cache_hit_tokenizes_nothing_and_is_identical(
    sotu_build, sotu_dir, bert_tiny_tokenizer, monkeypatch
):
    corpus, cache = sotu_build
    assert not corpus.from_cache and corpus.cache_path is not None

    def no_tokenizing(*_args, **_kwargs):
        raise AssertionError("a cache hit must not tokenize the text again")

    monkeypatch.setattr(corpus_module, "_tokenize", no_tokenizing)
    again = build_corpus(sotu_dir, bert_tiny_tokenizer, DataConfig(), cache_dir=cache, log=_quiet)
    assert again.from_cache and again.key == corpus.key
    for name in ("train", "heldout", "train_doc", "heldout_doc"):
        assert torch.equal(getattr(again, name), getattr(corpus, name)), name
    assert again.documents == corpus.documents
    assert again.stats.to_dict() == corpus.stats.to_dict()


def test_cache_misses_when_anything_changes(sotu_small, bert_tiny_tokenizer, tmp_path):
    cache = tmp_path / "cache"
    tok = bert_tiny_tokenizer

    def build(paths=sotu_small, cfg=None, tokenizer=tok):
        return build_corpus(paths, tokenizer, cfg or DataConfig(), cache_dir=cache, log=_quiet)

    base = build()
    assert not base.from_cache and build().from_cache
    # The same text elsewhere: same ids and contents, so the same cache entry.
    moved = shutil.copytree(sotu_small, tmp_path / "elsewhere")
    assert build(moved).from_cache
    for cfg in (DataConfig(seq_len=64), DataConfig(split_seed=3), DataConfig(heldout_fraction=0.3)):
        changed = build(cfg=cfg)
        assert not changed.from_cache and changed.key != base.key
    bigger = copy.deepcopy(tok)
    bigger.add_tokens(["zzqxjv"])
    assert tokenizer_fingerprint(bigger) != tokenizer_fingerprint(tok)
    assert not build(tokenizer=bigger).from_cache
    # The tokenizer's transient truncation/padding state does not change the key.
    used = copy.deepcopy(tok)  # a copy: the session's tokenizer stays untouched
    used(["warm up"], padding="max_length", truncation=True, max_length=16)
    assert build(tokenizer=used).from_cache
    speech = sotu_small / "1790_george_washington_n.txt"
    speech.write_text(speech.read_text(encoding="utf-8") + " One more sentence.", encoding="utf-8")
    edited = build()
    assert not edited.from_cache and edited.key != base.key
    assert edited.stats.train.tokens + edited.stats.heldout.tokens > (
        base.stats.train.tokens + base.stats.heldout.tokens
    )


def test_corrupt_cache_file_is_rebuilt(sotu_small, bert_tiny_tokenizer, tmp_path):
    cache = tmp_path / "cache"
    logs: list[str] = []
    first = build_corpus(sotu_small, bert_tiny_tokenizer, cache_dir=cache, log=logs.append)
    data = first.cache_path.read_bytes()
    first.cache_path.write_bytes(data[: len(data) // 2])
    again = build_corpus(sotu_small, bert_tiny_tokenizer, cache_dir=cache, log=logs.append)
    assert not again.from_cache and any("unreadable" in m for m in logs)
    assert torch.equal(again.train, first.train) and torch.equal(again.heldout, first.heldout)
    assert build_corpus(sotu_small, bert_tiny_tokenizer, cache_dir=cache, log=_quiet).from_cache


def test_data_stats_cli(sotu_small, bert_tiny_dir, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BITMAPS_CACHE", str(tmp_path / "cache"))
    args = ["data-stats", str(sotu_small), "--tokenizer", str(bert_tiny_dir), "--json"]
    assert main(args) == 0
    out = capsys.readouterr()
    stats = json.loads(out.out)
    assert stats["train"]["documents"] + stats["heldout"]["documents"] == 6
    assert stats["heldout"]["sequences"] > 0 and stats["train"]["padding_fraction"] < 0.05
    assert "data: built" in out.err  # the log goes to stderr, so stdout stays JSON
    assert len(list((tmp_path / "cache" / "data").glob("corpus-*.safetensors"))) == 1
    assert main(args) == 0 and "data: loaded" in capsys.readouterr().err


def test_a_cache_file_edited_in_place_is_rebuilt(sotu_small, bert_tiny_tokenizer, tmp_path):
    """A token id changed inside the file (its header intact) was used: out of range it crashed
    the model with a traceback, in range it silently changed every number."""
    from safetensors.torch import load_file, save_file

    cache = tmp_path / "cache"
    logs: list[str] = []
    first = build_corpus(sotu_small, bert_tiny_tokenizer, cache_dir=cache, log=logs.append)
    path = first.cache_path
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["heldout"] = tensors["heldout"].clone()
    tensors["heldout"].view(-1)[::50] = 1000  # in the vocabulary: no other check sees it
    save_file(tensors, str(path), metadata=meta)
    again = build_corpus(sotu_small, bert_tiny_tokenizer, cache_dir=cache, log=logs.append)
    assert not again.from_cache and any("do not match the digest" in m for m in logs)
    assert torch.equal(again.heldout, first.heldout)
    assert build_corpus(sotu_small, bert_tiny_tokenizer, cache_dir=cache, log=_quiet).from_cache
