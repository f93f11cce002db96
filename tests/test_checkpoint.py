"""The checkpoint format: round trip, atomic writes, and every way a checkpoint can be bad."""

from __future__ import annotations

import pickle

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from bitmaps.core.checkpoint import load_checkpoint, save_checkpoint, tokenizer_record
from bitmaps.core.errors import BitmapsError
from bitmaps.train.models import build_model

TINY = dict(
    vocab_size=64,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=32,
)


def _save(path, model=None, **kw):
    model = model or BertForMaskedLM(BertConfig(**TINY))
    return save_checkpoint(
        path, model=model, tokenizer=tokenizer_record("t", {"vocab.txt": "[PAD]\n"}), **kw
    )


def test_round_trip_weights_only(tmp_path) -> None:
    model = BertForMaskedLM(BertConfig(**TINY))
    path = _save(tmp_path / "c.pt", model, meta={"stage": "teacher"}, train_state={"step": 3})
    raw = torch.load(path, weights_only=True)  # plain data only: no pickled code
    assert raw["format"] == "bitmaps-checkpoint" and raw["version"] == 1
    ckpt = load_checkpoint(path)
    assert ckpt["meta"]["stage"] == "teacher" and ckpt["train_state"]["step"] == 3
    rebuilt = build_model(ckpt)
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_missing_and_folder(tmp_path) -> None:
    with pytest.raises(BitmapsError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(BitmapsError, match="folder"):
        load_checkpoint(tmp_path)


def test_truncated(tmp_path) -> None:
    path = _save(tmp_path / "c.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BitmapsError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_garbage(tmp_path) -> None:
    path = tmp_path / "c.pt"
    path.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(BitmapsError, match="not a readable checkpoint"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_refused(tmp_path) -> None:
    path = tmp_path / "c.pt"
    torch.save({"format": "bitmaps-checkpoint", "x": _Evil()}, path)
    with pytest.raises(BitmapsError, match="pickled objects"):
        load_checkpoint(path)
    path2 = tmp_path / "c2.pt"
    path2.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(BitmapsError):
        load_checkpoint(path2)


def test_foreign_state_dict(tmp_path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(BertForMaskedLM(BertConfig(**TINY)).state_dict(), path)
    with pytest.raises(BitmapsError, match="not a bitmaps checkpoint"):
        load_checkpoint(path)


def test_newer_version_and_incomplete(tmp_path) -> None:
    path = _save(tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    raw["version"] = 99
    torch.save(raw, path)
    with pytest.raises(BitmapsError, match="newer"):
        load_checkpoint(path)
    raw["version"] = 1
    del raw["state_dict"]
    torch.save(raw, path)
    with pytest.raises(BitmapsError, match="missing state_dict"):
        load_checkpoint(path)


def test_weights_that_do_not_match_config(tmp_path) -> None:
    path = _save(tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["bert.embeddings.word_embeddings.weight"] = torch.zeros(3, 3)
    torch.save(raw, path)
    with pytest.raises(BitmapsError, match="do not match"):
        build_model(load_checkpoint(path))


def test_unsupported_model_type(tmp_path) -> None:
    path = _save(tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    raw["model_config"] = raw["model_config"].replace(
        '"model_type": "bert"', '"model_type": "gpt2"'
    )
    torch.save(raw, path)
    with pytest.raises(BitmapsError, match="unsupported model"):
        build_model(load_checkpoint(path))


def test_failed_write_keeps_previous(tmp_path, monkeypatch) -> None:
    path = _save(tmp_path / "c.pt", meta={"stage": "first"})

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        _save(path, meta={"stage": "second"})
    monkeypatch.undo()
    assert load_checkpoint(path)["meta"]["stage"] == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_written_files_follow_the_umask(tmp_path) -> None:
    # atomic writes go through mkstemp (mode 0600); the result must be as readable as a plain
    # open() would make it, or a shared model folder ends up unreadable to its other users
    import os
    import stat

    from bitmaps.core.atomic import atomic_output

    old = os.umask(0o022)
    try:
        path = _save(tmp_path / "c.pt")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        with atomic_output(tmp_path / "private.json") as tmp:
            tmp.write_text("{}")
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)
