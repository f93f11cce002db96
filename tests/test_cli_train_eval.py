"""`bitmaps train` / `bitmaps eval` from the command line: real model, real text, and bad input
(one line, exit 2, no traceback, no output file)."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest
from conftest import assert_one_line_error, train_args

from bitmaps.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_real_bert_tiny_json_is_deterministic(capsys, sotu_small, bert_tiny_dir) -> None:
    args = ["eval", "bert-tiny", "--data", str(sotu_small), "--json", "--max-sequences", "24"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    first = json.loads(out)
    for key in ("cross_entropy", "accuracy", "mrr", "masked_tokens"):
        assert key in first
    assert first["sequences"] == 24 and first["masked_tokens"] > 200
    assert 0 < first["accuracy"] < 1 and first["accuracy"] <= first["mrr"] <= 1
    assert 0 < first["cross_entropy"] < 15
    code, out, _ = run(capsys, *args)
    assert json.loads(out)["cross_entropy"] == first["cross_entropy"]  # same masks, same model


def test_eval_int8_attention(capsys, sotu_small, bert_tiny_dir) -> None:
    args = ["eval", "bert-tiny", "--data", str(sotu_small), "--json", "--max-sequences", "24"]
    results = {}
    for attention in ("float", "int8"):
        code, out, err = run(capsys, *args, "--attention", attention)
        assert code == 0, err
        results[attention] = json.loads(out)
        assert results[attention]["attention"] == attention
    f, i = results["float"], results["int8"]
    # the same masked tokens, scored through the rounded attention: close, not identical
    assert f["masked_tokens"] == i["masked_tokens"]
    assert f["cross_entropy"] != i["cross_entropy"]
    assert abs(f["cross_entropy"] - i["cross_entropy"]) < 0.05 * f["cross_entropy"]
    code, _, err = run(capsys, *args, "--attention", "int4")
    assert code == 2 and "int4" in err and "Traceback" not in err


def test_eval_missing_data(capsys, tmp_path, bert_tiny_dir) -> None:
    code, _, err = run(capsys, "eval", "bert-tiny", "--data", str(tmp_path / "nope.txt"))
    assert_one_line_error(code, err, "nope.txt")


def test_eval_without_data(capsys, bert_tiny_dir) -> None:
    code, _, err = run(capsys, "eval", "bert-tiny")
    assert_one_line_error(code, err, "--data")


def test_empty_text(capsys, tmp_path, bert_tiny_dir) -> None:
    (tmp_path / "empty.txt").write_text("")
    code, _, err = run(capsys, "eval", "bert-tiny", "--data", str(tmp_path / "empty.txt"))
    assert_one_line_error(code, err, "empty")


def test_not_utf8(capsys, tmp_path, bert_tiny_dir) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait. ".encode("latin-1") * 50)
    code, _, err = run(capsys, "eval", "bert-tiny", "--data", str(tmp_path / "latin1.txt"))
    assert_one_line_error(code, err, "UTF-8")


def test_folder_without_text(capsys, tmp_path, bert_tiny_dir) -> None:
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    code, _, err = run(capsys, "eval", "bert-tiny", "--data", str(tmp_path))
    assert_one_line_error(code, err, str(tmp_path))


def test_corrupt_checkpoint(capsys, tmp_path, sotu_small) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    code, _, err = run(capsys, "eval", str(bad), "--data", str(sotu_small))
    assert_one_line_error(code, err, "bad.pt")


def test_model_that_is_not_bert_like(capsys, tmp_path, sotu_small) -> None:
    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    code, _, err = run(capsys, "eval", str(folder), "--data", str(sotu_small))
    assert_one_line_error(code, err, "unsupported model", "gpt2")


def test_unknown_model_name(capsys, sotu_small) -> None:
    code, _, err = run(capsys, "eval", "bert-huge", "--data", str(sotu_small))
    assert_one_line_error(code, err, "bert-huge")


def test_unknown_option(capsys) -> None:
    code, _, err = run(capsys, "train", "--frobnicate")
    assert_one_line_error(code, err, "--frobnicate")


def test_train_bad_config_value(capsys, tmp_path, sotu_small) -> None:
    out = tmp_path / "o.pt"
    code, _, err = run(capsys, *train_args(sotu_small, out, "--steps", "0"))
    assert_one_line_error(code, err, "steps")
    code, _, err = run(capsys, *train_args(sotu_small, out, "--set", "train.nonsense=1"))
    assert_one_line_error(code, err, "nonsense")
    assert not out.exists()


def test_train_unwritable_output(capsys, tmp_path, sotu_small) -> None:
    out = tmp_path / "no" / "such" / "dir" / "o.pt"
    code, _, err = run(capsys, *train_args(sotu_small, out, "--steps", "2"))
    assert_one_line_error(code, err, "does not exist")


def test_train_bad_data_leaves_no_output(capsys, tmp_path, bert_tiny_dir) -> None:
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00garbage" * 100)
    out = tmp_path / "o.pt"
    code, _, err = run(capsys, *train_args(tmp_path / "bin.txt", out, "--steps", "2"))
    assert_one_line_error(code, err)
    assert not out.exists() and not list(tmp_path.glob(".o.pt*"))


def test_real_process_exit_code_and_single_line(tmp_path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bitmaps",
            "eval",
            str(tmp_path / "missing.pt"),
            "--data",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error:"), done.stderr


@pytest.mark.parametrize("stage_args", [["--stage", "teacher", "--act-quantizer", "ste"]])
def test_binarize_options_need_student_stage(capsys, tmp_path, sotu_small, stage_args) -> None:
    code, _, err = run(capsys, *train_args(sotu_small, tmp_path / "o.pt", *stage_args))
    assert_one_line_error(code, err, "student")


def test_default_student_is_elastic_and_exports_one_ffn_node(capsys, tmp_path, sotu_small) -> None:
    """Without --act-quantizer a student gets the elastic binarizer (BinarizeConfig v3): fixed
    activation scales, so `export --target onnxruntime` writes each FFN as one
    bitmaps::BinaryFeedForward node."""
    import onnx

    from bitmaps.core.checkpoint import load_checkpoint

    teacher, student, model = tmp_path / "t.pt", tmp_path / "s.pt", tmp_path / "s.onnx"
    code, _, err = run(
        capsys, *train_args(sotu_small, teacher, "--steps", "1", "--batch-size", "2")
    )
    assert code == 0, err
    args = ["train", "--stage", "student", "--teacher", str(teacher), "--data", str(sotu_small),
            "-o", str(student), "--steps", "2", "--batch-size", "2"]  # fmt: skip
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert load_checkpoint(student)["binarize"]["activation_quantizer"] == "elastic"
    code, _, err = run(capsys, "export", str(student), str(model), "--target", "onnxruntime")
    assert code == 0, err
    ops = [n.op_type for n in onnx.load(str(model)).graph.node if n.domain == "bitmaps"]
    assert ops.count("BinaryFeedForward") == 2, ops  # BERT-tiny: two layers


@pytest.mark.parametrize("how", ["config", "set"])
def test_stage_from_a_config_file_or_set_is_the_stage_run(capsys, tmp_path, sotu_small, how):
    # before stop 44 the --stage option's default overrode the file's stage (a teacher run), and
    # --set train.stage=student ran a student without binarizing it (a traceback)
    from bitmaps.core.checkpoint import load_checkpoint

    out = tmp_path / "s.pt"
    if how == "config":
        (tmp_path / "c.json").write_text(json.dumps({"train": {"stage": "student"}}))
        extra = ["--config", str(tmp_path / "c.json")]
    else:
        extra = ["--set", "train.stage=student"]
    args = train_args(sotu_small, out, "--steps", "1", "--batch-size", "2", "--eval-every", "0")
    args += ["--eval-sequences", "2", "--set", "data.seq_len=32", *extra]
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    assert stdout.startswith("student step 1")
    ckpt = load_checkpoint(out)
    assert ckpt["meta"]["stage"] == "student" and ckpt["binarize"]


def test_out_of_memory_is_one_line(capsys, tmp_path, monkeypatch, sotu_small) -> None:
    import bitmaps.train.trainer as trainer

    def allocate(*_a, **_k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 TB")

    monkeypatch.setattr(trainer, "run_training", allocate)
    code, _, err = run(capsys, *train_args(sotu_small, tmp_path / "o.pt"))
    assert_one_line_error(code, err, "out of memory", "--batch-size")

    def bug(*_a, **_k):
        raise RuntimeError("a bug keeps its traceback")

    monkeypatch.setattr(trainer, "run_training", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(train_args(sotu_small, tmp_path / "o.pt"))

    def no_memory(*_a, **_k):  # an OSError of its own (ENOMEM): not "cannot write the output"
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(trainer, "run_training", no_memory)
    code, _, err = run(capsys, *train_args(sotu_small, tmp_path / "o.pt"))
    assert_one_line_error(code, err, "out of memory", "--batch-size")

    def os_bug(
        *_a, **_k
    ):  # an OSError that is neither a path's nor an output's keeps its traceback
        raise OSError(errno.EINVAL, "a bug")

    monkeypatch.setattr(trainer, "run_training", os_bug)
    with pytest.raises(OSError, match="a bug"):
        main(train_args(sotu_small, tmp_path / "o.pt"))


def test_eval_scores_the_held_out_split_the_checkpoint_was_trained_with(
    capsys, tmp_path, sotu_small
) -> None:
    # the run's data settings travel in the checkpoint (meta.data_config): eval reads its held-out
    # split and masks without being told them again; --set still overrides a field
    ckpt = tmp_path / "t.pt"
    trained = ["--set", "data.heldout_fraction=0.5", "--set", "data.seq_len=64"]
    args = train_args(sotu_small, ckpt, "--steps", "1", "--eval-every", "0", *trained)
    code, _, err = run(capsys, *args)
    assert code == 0, err
    score = ["eval", str(ckpt), "--data", str(sotu_small), "--json"]
    code, out, err = run(capsys, *score)
    assert code == 0, err
    implicit = json.loads(out)
    assert "as " + str(ckpt) + " was trained: held-out fraction 0.5" in err  # said, not silent
    assert (implicit["data_config"]["heldout_fraction"], implicit["data_config"]["seq_len"]) == (
        0.5,
        64,
    )
    code, out, err = run(capsys, *score, *trained)
    assert code == 0, err
    told = json.loads(out)
    assert (implicit["sequences"], implicit["cross_entropy"]) == (
        told["sequences"],
        told["cross_entropy"],
    )
    code, out, err = run(capsys, *score, "--set", "data.seq_len=128")
    assert code == 0, err
    assert json.loads(out)["sequences"] < implicit["sequences"]  # the same split, longer rows
    # a checkpoint whose recorded settings are not DataConfig's: one line
    import torch

    bad = torch.load(ckpt, weights_only=True)
    bad["meta"]["data_config"] = {"seq_len": "long"}
    torch.save(bad, tmp_path / "bad.pt")
    code, _, err = run(capsys, "eval", str(tmp_path / "bad.pt"), "--data", str(sotu_small))
    assert_one_line_error(code, err, "recorded data settings are invalid")
