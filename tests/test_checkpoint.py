"""The checkpoint format: round trip, atomic writes, and every way a checkpoint can be bad."""

from __future__ import annotations

import json
import pickle
import re

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from bitmaps.core.checkpoint import load_checkpoint, save_checkpoint, tokenizer_record
from bitmaps.core.errors import BitmapsError
from bitmaps.train.models import build_model, tokenizer_from_record

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


@pytest.mark.parametrize(
    "data",
    [b"hello world\n", bytes(range(256)) * 4, b"\x80\x04\x95", b"aaaa" * 100],
    ids=["text", "bytes", "pickle-header", "letters"],
)
def test_any_bytes_are_one_error(tmp_path, data) -> None:
    # torch's legacy unpickler fails on arbitrary bytes with whatever they trigger (KeyError on
    # a text file, IndexError on letters): each must be the one user error
    path = tmp_path / "c.pt"
    path.write_bytes(data)
    with pytest.raises(BitmapsError, match="not a readable checkpoint"):
        load_checkpoint(path)


def _nan_weight(raw):
    raw["state_dict"]["bert.embeddings.word_embeddings.weight"][0, 0] = float("nan")


def _inf_weight(raw):
    raw["state_dict"]["cls.predictions.bias"][1] = float("inf")


CORRUPT_FIELDS = {
    "version 0": (lambda raw: raw.update(version=0), "version 0"),
    "version text": (lambda raw: raw.update(version="1"), "version '1'"),
    "version bool": (lambda raw: raw.update(version=True), "version True"),
    "config not json": (lambda raw: raw.update(model_config="{oops"), "not JSON text"),
    "config a list": (lambda raw: raw.update(model_config="[1, 2]"), "not a JSON object"),
    "config a number": (lambda raw: raw.update(model_config=5), "not JSON text"),
    "class a number": (lambda raw: raw.update(model_class=3), "model_class is not a name"),
    "tokenizer text": (lambda raw: raw.update(tokenizer="bert"), "tokenizer is not a record"),
    "tokenizer no files": (lambda raw: raw.update(tokenizer={"name": "t"}), "tokenizer"),
    "tokenizer empty": (lambda raw: raw["tokenizer"].update(files={}), "tokenizer"),
    "tokenizer bytes": (
        lambda raw: raw["tokenizer"].update(files={"vocab.txt": b"x"}),
        "tokenizer",
    ),
    "binarize text": (lambda raw: raw.update(binarize="yes"), "binarize is not a dict"),
    "meta list": (lambda raw: raw.update(meta=[1]), "meta is not a dict"),
    "train_state text": (lambda raw: raw.update(train_state="x"), "train_state is not a dict"),
    "state_dict text": (lambda raw: raw.update(state_dict="w"), "state_dict is not"),
    "state_dict empty": (lambda raw: raw.update(state_dict={}), "state_dict is not"),
    "state_dict number": (lambda raw: raw["state_dict"].update(x=1.0), "entry 'x'"),
    "NaN weight": (_nan_weight, "word_embeddings.weight holds NaN"),
    "inf weight": (_inf_weight, "predictions.bias holds NaN or infinite"),
}


def _mutated(path, mutate):
    """A saved checkpoint at ``path`` changed by ``mutate`` (on its raw dict), saved again."""
    _save(path)
    raw = torch.load(path, weights_only=True)
    mutate(raw)
    torch.save(raw, path)
    return path


@pytest.mark.parametrize("case", list(CORRUPT_FIELDS))
def test_corrupt_fields_are_one_error(tmp_path, case) -> None:
    mutate, message = CORRUPT_FIELDS[case]
    path = _mutated(tmp_path / "c.pt", mutate)
    with pytest.raises(BitmapsError, match=re.escape(message)):
        load_checkpoint(path)


def _config_with(**changes) -> str:
    config = json.loads(BertConfig(**TINY).to_json_string(use_diff=False))
    config.update(changes)
    return json.dumps(config)


BAD_MODELS = {
    "heads do not divide": (
        lambda raw: raw.update(model_config=_config_with(num_attention_heads=3)),
        "invalid model config",
    ),
    "hidden size text": (
        lambda raw: raw.update(model_config=_config_with(hidden_size="big")),
        "invalid model config",
    ),
    "binarize unknown quantizer": (
        lambda raw: raw.update(binarize={"weight_quantizer": "bogus"}),
        "invalid binarize settings",
    ),
    "binarize unknown field": (
        lambda raw: raw.update(binarize={"colour": "red"}),
        "invalid binarize settings",
    ),
    "integer weight": (
        lambda raw: raw["state_dict"].update(
            {"cls.predictions.bias": torch.zeros(TINY["vocab_size"], dtype=torch.int64)}
        ),
        "cls.predictions.bias is torch.int64",
    ),
    "missing weight": (
        lambda raw: raw["state_dict"].pop("cls.predictions.bias"),
        'Missing key(s) in state_dict: "cls.predictions.bias"',
    ),
    "a student's weights in a teacher": (
        lambda raw: raw["state_dict"].update(
            {"bert.encoder.layer.0.attention.self.query.binarized": torch.ones(1)}
        ),
        "Unexpected key(s) in state_dict",
    ),
    # what `bitmaps train` recorded must agree with the model class (the class decides)
    "a masked LM recorded as a classifier": (
        lambda raw: raw["meta"].update(task="classify"),
        "its meta.task is 'classify' but its model class BertForMaskedLM makes it a 'mlm' model",
    ),
    "class labels on a masked LM": (
        lambda raw: raw["meta"].update(labels=["ham", "spam"]),
        "records class labels (meta.labels) but its model class BertForMaskedLM",
    ),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_checkpoints_that_build_no_model_are_one_error(tmp_path, case) -> None:
    mutate, message = BAD_MODELS[case]
    path = _mutated(tmp_path / "c.pt", mutate)
    with pytest.raises(BitmapsError, match=re.escape(message)) as info:
        build_model(load_checkpoint(path), str(path))
    assert "\n" not in str(info.value)


def test_a_classifier_whose_records_disagree_with_its_class_is_one_error(tmp_path) -> None:
    from transformers import BertForSequenceClassification

    config = BertConfig(**TINY, num_labels=2, id2label={0: "ham", 1: "spam"})
    model = BertForSequenceClassification(config)
    path = _save(tmp_path / "c.pt", model, meta={"task": "classify", "labels": ["ham", "spam"]})
    assert isinstance(build_model(load_checkpoint(path)), BertForSequenceClassification)
    for meta, message in (
        ({"task": "mlm"}, "its meta.task is 'mlm' but its model class"),
        ({"labels": ["spam", "ham"]}, "its meta.labels ['spam', 'ham'] are not"),
        ({"labels": "ham,spam"}, "its meta.labels 'ham,spam' are not"),
    ):
        bad = _save(tmp_path / "bad.pt", model, meta=meta)
        with pytest.raises(BitmapsError, match=re.escape(message)) as info:
            build_model(load_checkpoint(bad), str(bad))
        assert "corrupt bitmaps checkpoint" in str(info.value) and "\n" not in str(info.value)


def test_half_precision_weights_still_load(tmp_path) -> None:
    model = BertForMaskedLM(BertConfig(**TINY))
    path = _save(tmp_path / "c.pt", model)
    raw = torch.load(path, weights_only=True)
    raw["state_dict"] = {k: v.half() for k, v in raw["state_dict"].items()}
    torch.save(raw, path)
    rebuilt = build_model(load_checkpoint(path))
    weight = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(rebuilt.state_dict()[weight], model.state_dict()[weight].half().float())


def test_a_tokenizer_transformers_cannot_read_is_one_error() -> None:
    record = tokenizer_record("t", {"tokenizer.json": "{not json", "vocab.txt": "[PAD]\n"})
    with pytest.raises(BitmapsError, match="the checkpoint's tokenizer cannot be loaded"):
        tokenizer_from_record(record)
