"""Masking statistics and determinism, the resumable DDP-sharded TrainStream, fixed-mask eval.

The statistics run on real packed text (State of the Union, BERT-tiny tokenizer); the stream tests
use a small synthetic vocabulary so that they need no assets and every row is identifiable.
"""

from __future__ import annotations

import pytest
import torch

from bitmaps.core.config import DataConfig
from bitmaps.core.errors import BitmapsError
from bitmaps.data.corpus import (
    MaskVocab,
    TrainStream,
    attention_mask,
    eval_batches,
    mask_batch,
)

SMALL = MaskVocab(
    vocab_size=50,
    pad_id=0,
    cls_id=1,
    sep_id=2,
    mask_id=3,
    special_ids=torch.tensor([0, 1, 2, 3]),
    random_ids=torch.arange(4, 50),
)


def _sequences(n: int, seq_len: int = 16) -> torch.Tensor:
    """n rows [CLS] tokens... [SEP] [PAD]..., random lengths, tokens in [4, 50)."""
    g = torch.Generator().manual_seed(n)
    rows = torch.zeros(n, seq_len, dtype=torch.int32)
    for i in range(n):
        k = int(torch.randint(3, seq_len - 1, (1,), generator=g))
        rows[i, 0] = 1
        rows[i, 1 : k + 1] = torch.randint(4, 50, (k,), generator=g, dtype=torch.int32)
        rows[i, k + 1] = 2
    return rows


@pytest.fixture(scope="module")
def sotu_rows(sotu_corpus):
    """4,000 packed SOTU sequences (≈ 500k tokens) and the tokenizer's MaskVocab."""
    return sotu_corpus.train[:4000], sotu_corpus.vocab


def _rates(x: torch.Tensor, vocab: MaskVocab, cfg: DataConfig, seed: int = 0):
    original = x.clone()
    masked, labels = mask_batch(x, vocab, cfg, torch.Generator().manual_seed(seed))
    assert torch.equal(x, original)  # the input is never modified in place
    x = x.long()
    eligible = ~torch.isin(x, vocab.special_ids)
    selected = labels != -100
    n = selected.sum().item()
    return {
        "x": x,
        "masked": masked,
        "labels": labels,
        "eligible": eligible,
        "selected": selected,
        "rate": n / eligible.sum().item(),
        "mask": ((masked == vocab.mask_id) & selected).sum().item() / n,
        "random": ((masked != x) & (masked != vocab.mask_id) & selected).sum().item() / n,
        "kept": ((masked == x) & selected).sum().item() / n,
    }


@pytest.mark.parametrize(
    "cfg",
    [DataConfig(), DataConfig(mask_prob=0.3, mask_replace_prob=0.5, mask_random_prob=0.25)],
    ids=["15%-80-10-10", "30%-50-25-25"],
)
def test_mask_statistics(sotu_rows, cfg):
    x, vocab = sotu_rows
    r = _rates(x, vocab, cfg)
    keep_prob = 1 - cfg.mask_replace_prob - cfg.mask_random_prob
    # ~500k eligible tokens: the standard error of the rate is ~0.0005, of each share ~0.0015.
    assert abs(r["rate"] - cfg.mask_prob) < 0.003
    assert abs(r["mask"] - cfg.mask_replace_prob) < 0.01
    assert abs(r["random"] - cfg.mask_random_prob) < 0.01
    assert abs(r["kept"] - keep_prob) < 0.01
    selected, masked, labels = r["selected"], r["masked"], r["labels"]
    assert masked.dtype == labels.dtype == torch.int64
    assert not (selected & ~r["eligible"]).any()  # [CLS], [SEP], [PAD] never selected
    assert torch.equal(labels[selected], r["x"][selected])
    assert (labels[~selected] == -100).all()
    assert torch.equal(masked[~selected], r["x"][~selected])  # nothing else changes
    replaced = (masked != r["x"]) & (masked != vocab.mask_id)
    assert torch.isin(masked[replaced], vocab.random_ids).all()
    assert not torch.isin(masked[replaced], vocab.special_ids).any()


def test_mask_vocab_from_bert_tokenizer(bert_tiny_tokenizer):
    v = MaskVocab.from_tokenizer(bert_tiny_tokenizer)
    assert (v.pad_id, v.cls_id, v.sep_id, v.mask_id, v.vocab_size) == (0, 101, 102, 103, 30522)
    assert set(v.special_ids.tolist()) == {0, 100, 101, 102, 103}
    vocab = bert_tiny_tokenizer.get_vocab()
    names = {i: t for t, i in vocab.items()}
    bracketed = {i for i, t in names.items() if len(t) > 2 and t[0] == "[" and t[-1] == "]"}
    assert len(bracketed) == 999  # [PAD], [unused0..993], [UNK], [CLS], [SEP], [MASK]
    assert set(v.random_ids.tolist()) == set(range(30522)) - bracketed
    assert "[" in {names[i] for i in v.random_ids.tolist()}  # a real token, not a placeholder


def test_masking_is_deterministic_per_seed():
    x = _sequences(64)
    cfg = DataConfig()
    a = mask_batch(x, SMALL, cfg, torch.Generator().manual_seed(5))
    torch.manual_seed(99)  # the global RNG in another state: only the generator may matter
    torch.rand(1000)
    b = mask_batch(x.clone(), SMALL, cfg, torch.Generator().manual_seed(5))
    c = mask_batch(x, SMALL, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


# --- TrainStream ---------------------------------------------------------------------------


def _equal_batches(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stream_batch_format():
    seqs = _sequences(10)
    batch = next(TrainStream(seqs, SMALL, DataConfig(), batch_size=4))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert all(t.dtype == torch.int64 and t.shape == (4, 16) for t in batch.values())
    assert torch.equal(batch["attention_mask"], attention_mask(batch["input_ids"], SMALL))
    assert (batch["attention_mask"] == (batch["input_ids"] != 0).long()).all()
    assert not batch["token_type_ids"].any()
    assert (batch["labels"] != -100).any()


def test_stream_resume_gives_the_same_batches(tmp_path):
    seqs = _sequences(37)
    cfg = DataConfig()
    first = TrainStream(seqs, SMALL, cfg, batch_size=4, seed=7)
    for _ in range(8):
        next(first)
    torch.save({"stream": first.state_dict()}, tmp_path / "state.pt")
    expected = [next(first) for _ in range(5)]  # crosses the epoch boundary at step 9.25
    state = torch.load(tmp_path / "state.pt", weights_only=True)["stream"]
    resumed = TrainStream(seqs, SMALL, cfg, batch_size=4, seed=7)
    resumed.load_state_dict(state)
    assert resumed.step == 8
    for want in expected:
        assert _equal_batches(next(resumed), want)
    # And a different seed gives a different stream.
    other = TrainStream(seqs, SMALL, cfg, batch_size=4, seed=8)
    other.load_state_dict({**state, "seed": 8})
    assert not _equal_batches(next(other), expected[0])


def test_stream_epochs_visit_every_sequence_once():
    seqs = _sequences(36)
    stream = TrainStream(seqs, SMALL, DataConfig(), batch_size=4, seed=1)
    epochs = [torch.cat([stream.indices(s) for s in range(e * 9, (e + 1) * 9)]) for e in range(3)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(36))
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    batch = stream.batch(3)  # the batch holds the rows that indices() names
    rows = seqs[stream.indices(3)].long()
    keep = batch["labels"] == -100
    assert torch.equal(batch["input_ids"][keep], rows[keep])
    assert torch.equal(batch["labels"][~keep], rows[~keep])


def test_stream_ddp_shards_are_disjoint():
    seqs, world, bs = _sequences(36), 3, 4
    ranks = [
        TrainStream(seqs, SMALL, batch_size=bs, seed=2, rank=r, world_size=world) for r in range(3)
    ]
    seen = []
    for step in range(3):  # 3 steps x 3 ranks x 4 = one epoch
        parts = [set(s.indices(step).tolist()) for s in ranks]
        assert all(len(p) == bs for p in parts)
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        seen += [i for p in parts for i in p]
    assert sorted(seen) == list(range(36))
    # Masks are seeded per rank and step: identical rows still get different masks.
    same = _sequences(1).repeat(36, 1)
    r0, r1, again = (
        TrainStream(same, SMALL, batch_size=bs, rank=r, world_size=world) for r in (0, 1, 0)
    )
    for _ in range(2):  # a stream that has moved on still gives step 0 as a fresh one does
        next(again)
    assert torch.equal(r0.batch(0)["labels"], again.batch(0)["labels"])
    assert not torch.equal(r0.batch(0)["labels"], r1.batch(0)["labels"])
    assert not torch.equal(r0.batch(0)["labels"], r0.batch(1)["labels"])


def test_stream_rejects_foreign_state():
    seqs = _sequences(20)
    stream = TrainStream(seqs, SMALL, batch_size=4)
    state = stream.state_dict()
    with pytest.raises(BitmapsError, match="batch_size=8"):
        TrainStream(seqs, SMALL, batch_size=8).load_state_dict(state)
    with pytest.raises(BitmapsError, match="num_sequences=20"):
        TrainStream(_sequences(21), SMALL, batch_size=4).load_state_dict(state)
    with pytest.raises(BitmapsError, match="lacks"):
        stream.load_state_dict({"step": 3})
    with pytest.raises(BitmapsError, match="no training sequences"):
        TrainStream(seqs[:0], SMALL, batch_size=4)


# --- eval batches --------------------------------------------------------------------------


def _cat(batches):
    batches = list(batches)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def test_eval_masks_are_fixed():
    seqs, cfg = _sequences(23), DataConfig()
    full = _cat(eval_batches(seqs, SMALL, cfg, batch_size=5))
    assert full["input_ids"].shape == (23, 16)
    assert _equal_batches(full, _cat(eval_batches(seqs, SMALL, cfg, batch_size=3)))
    first = _cat(eval_batches(seqs, SMALL, cfg, batch_size=4, max_sequences=7))
    assert _equal_batches(first, {k: v[:7] for k, v in full.items()})
    limited = _cat(eval_batches(seqs, SMALL, cfg.replace(max_eval_sequences=9), batch_size=4))
    assert _equal_batches(limited, {k: v[:9] for k, v in full.items()})
    shards = [
        _cat(eval_batches(seqs, SMALL, cfg, batch_size=4, rank=r, world_size=2)) for r in (0, 1)
    ]
    for k in full:
        assert torch.equal(shards[0][k], full[k][0::2]) and torch.equal(shards[1][k], full[k][1::2])
    other = _cat(eval_batches(seqs, SMALL, cfg.replace(eval_mask_seed=99), batch_size=5))
    assert not torch.equal(other["labels"], full["labels"])
    with pytest.raises(BitmapsError, match="no held-out sequences"):
        eval_batches(seqs[:0], SMALL, cfg, batch_size=4)
