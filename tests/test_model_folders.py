"""Hugging Face model folders and checkpoints a user may hand any command, broken every way the
bad-input probe of stop 44 found: each is one ``error:`` line, exit 2, no traceback, no output."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import assert_one_line_error

from bitmaps.cli import main


def _config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _truncate(name, size):
    def mutate(folder):
        path = folder / name
        path.write_bytes(path.read_bytes()[:size])

    return mutate


def _only_bin(folder):
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _not_utf8(name):
    def mutate(folder):
        (folder / name).write_bytes(b"\xff\xfe[PAD]\n\x80\x81")

    return mutate


def _nan_weight(folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    name = next(k for k in tensors if k.endswith("attention.self.query.weight"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


FOLDERS = {
    "hidden size as text": (lambda f: _config(f, hidden_size="big"), "hidden_size"),
    "shapes unlike the config": (
        lambda f: _config(f, intermediate_size=640),
        "do not match its config.json",
    ),
    # transformers fills missing layers with random weights and drops extra ones, in its log only
    "more layers than the weights": (
        lambda f: _config(f, num_hidden_layers=4),
        "lack 32 tensor(s) its config.json asks for (e.g. bert.encoder.layer.2.",
    ),
    "fewer layers than the weights": (
        lambda f: _config(f, num_hidden_layers=1),
        "hold 16 tensor(s) its config.json has no place for (e.g. bert.encoder.layer.1.",
    ),
    # NaN loaded, exported and verified ("error 0": NaN passed every tolerance test)
    "a NaN weight": (_nan_weight, "attention.self.query.weight holds NaN or infinite values"),
    "layer_norm_eps NaN": (lambda f: _config(f, layer_norm_eps=float("nan")), "layer_norm_eps"),
    "weights empty": (_truncate("model.safetensors", 0), "cannot load the weights"),
    "weights truncated": (_truncate("model.safetensors", 1000), "cannot load the weights"),
    "weights only a pickle": (_only_bin, "pytorch_model.bin"),
    "tokenizer not JSON": (
        lambda f: (f / "tokenizer.json").write_text("{not json"),
        "tokenizer",
    ),
    "tokenizer not UTF-8": (_not_utf8("tokenizer.json"), "is not UTF-8 text"),
    "tokenizer config not JSON": (
        lambda f: (f / "tokenizer_config.json").write_text("{not json"),
        "tokenizer",
    ),
}


@pytest.fixture
def folder_copy(tmp_path, bert_tiny_dir):
    folder = tmp_path / "model"
    shutil.copytree(bert_tiny_dir, folder)
    return folder


@pytest.mark.parametrize("case", list(FOLDERS))
def test_broken_model_folder(capsys, tmp_path, folder_copy, case) -> None:
    mutate, needle = FOLDERS[case]
    mutate(folder_copy)
    out = tmp_path / "out.onnx"
    code = main(["export-baseline", str(folder_copy), str(out)])
    assert_one_line_error(code, capsys.readouterr().err, needle)
    assert not out.exists() and list(tmp_path.glob("*.onnx*")) == []


@pytest.mark.parametrize(
    "command", [["export"], ["export-baseline"]], ids=["export", "export-baseline"]
)
@pytest.mark.parametrize("kind", ["text", "nan"])
def test_broken_checkpoint_through_the_cli(capsys, tmp_path, command, kind) -> None:
    path = tmp_path / "c.pt"
    if kind == "text":
        path.write_text("hello world\n")  # torch's legacy unpickler: KeyError before stop 44
        needle = "not a readable checkpoint"
    else:
        from test_checkpoint import _save

        _save(path)
        raw = torch.load(path, weights_only=True)
        raw["state_dict"]["bert.embeddings.word_embeddings.weight"][3, 1] = float("nan")
        torch.save(raw, path)
        needle = "holds NaN or infinite values"
    out = tmp_path / "out.onnx"
    code = main([*command, str(path), str(out)])
    assert_one_line_error(code, capsys.readouterr().err, needle)
    assert not out.exists()


@pytest.mark.parametrize("case", ["no tokenizer files", "vocab not UTF-8"])
def test_data_stats_tokenizer_folders(capsys, tmp_path, folder_copy, case) -> None:
    # before stop 44: a folder without tokenizer files gave a 5-token tokenizer and counts of
    # [UNK]s (exit 0), a non-UTF-8 vocab.txt a traceback
    for name in ("tokenizer.json", "vocab.txt"):
        (folder_copy / name).unlink(missing_ok=True)
    needle = "no tokenizer.json or vocab.txt"
    if case == "vocab not UTF-8":
        _not_utf8("vocab.txt")(folder_copy)
        needle = "in UTF-8"
    text = tmp_path / "t.txt"
    text.write_text("Some words for the tokenizer.\n" * 20, encoding="utf-8")
    code = main(["data-stats", str(text), "--no-cache", "--tokenizer", str(folder_copy)])
    assert_one_line_error(code, capsys.readouterr().err, needle)


def test_trained_data_settings_fill_what_the_user_did_not_set() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from bitmaps.core.config import DataConfig
    from bitmaps.core.errors import BitmapsError
    from bitmaps.train.models import LoadedModel

    def loaded(model: torch.nn.Module, meta: dict) -> LoadedModel:
        return LoadedModel(model, None, None, {}, "ckpt.pt", "checkpoint", {"meta": meta})

    trained = DataConfig(seq_len=64, heldout_fraction=0.3, split_seed=5, max_eval_sequences=7)
    mlm = loaded(torch.nn.Module(), {"data_config": trained.to_dict()})
    asked = DataConfig(seq_len=32)
    got = mlm.trained_data(asked, explicit={"seq_len"})
    assert (got.seq_len, got.heldout_fraction, got.split_seed) == (32, 0.3, 5)
    assert got.max_eval_sequences == 0  # how much to score stays the scorer's choice
    assert mlm.trained_data(DataConfig()).seq_len == 64
    # no recorded settings: the caller's, except a classifier's trained seq_len (older checkpoints)
    assert loaded(torch.nn.Module(), {}).trained_data(asked) == asked
    tiny = BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                      intermediate_size=8, num_labels=2)  # fmt: skip
    clf = loaded(BertForSequenceClassification(tiny), {"data": {"seq_len": 48}})
    assert clf.trained_data(DataConfig()).seq_len == 48
    assert clf.trained_data(asked, explicit={"seq_len"}).seq_len == 32
    with pytest.raises(BitmapsError, match="recorded data settings are invalid"):
        loaded(torch.nn.Module(), {"data_config": {"nope": 1}}).trained_data(DataConfig())
    with pytest.raises(BitmapsError, match="meta.data_config is a str, not an object"):
        loaded(torch.nn.Module(), {"data_config": "x"}).trained_data(DataConfig())


def test_an_encoder_without_its_masked_lm_head_is_not_scored(
    minilm_dir, bert_tiny_dir, tmp_path, capsys
):
    """MiniLM ships the encoder only: its masked-LM head would be random, so scoring it and
    exporting its logits are refused (fine-tuning it as a teacher is what it is for)."""
    from bitmaps.cli import main
    from bitmaps.train.models import load_model

    assert load_model("minilm-l6").fresh_head and not load_model("bert-tiny").fresh_head
    for argv in (["eval", "minilm-l6", "--data", "sotu", "--max-sequences", "4"],
                 ["export-baseline", "minilm-l6", str(tmp_path / "never.onnx")]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "has no trained masked-LM head" in err, err
    assert not (tmp_path / "never.onnx").exists()
