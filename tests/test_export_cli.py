"""`bitmaps export` and `bitmaps export-baseline` end to end, through the real CLI.

The student is BERT-tiny (the cached asset) binarized with the default config and saved with
``save_checkpoint``; without the asset cache, a small random BERT with a tiny WordPiece vocabulary
stands in (same code paths, real tokenization of the verification sentences).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from bitmaps.cli import main
from bitmaps.export.onnx_function import binary_linear_nodes
from bitmaps.export.onnx_graph import (
    float32_on_compute_path,
    fp32_parameter_bytes,
    initializer_bytes,
)

WORDS = (
    "the president spoke to nation about economy and state of union we will build roads "
    "bridges schools for our children congress must act in year that has passed people this "
    "country have shown great courage government kept its promise defend constitution . ,"
)


def _synthetic_model():  # noqa: ANN202
    from transformers import BertConfig, BertForMaskedLM

    from bitmaps.core.checkpoint import tokenizer_record
    from bitmaps.train.models import tokenizer_from_record

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS.split()))]
    vocab += [*"abcdefghijklmnopqrstuvwxyz", *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True}
    files = {"vocab.txt": "\n".join(vocab) + "\n", "tokenizer_config.json": json.dumps(config)}
    record = tokenizer_record("synthetic", files)
    tokenizer_from_record(record)  # fails here, not later, if the record is unusable
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
        )
    )
    return model, record


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``{"teacher", "student", "phase"}`` → checkpoint paths, and the number of layers."""
    import torch

    from bitmaps.core.checkpoint import save_checkpoint
    from bitmaps.core.config import BinarizeConfig
    from bitmaps.data.assets import assets_root
    from bitmaps.train.binary_linear import binarize_
    from bitmaps.train.models import load_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")

    def fresh():  # noqa: ANN202
        if (assets_root() / "bert-tiny").is_dir():
            loaded = load_model("bert-tiny")
            return loaded.model, loaded.tokenizer_info
        return _synthetic_model()

    model, tok = fresh()
    save_checkpoint(folder / "teacher.pt", model=model, tokenizer=tok, meta={"stage": "teacher"})
    layers = model.config.num_hidden_layers
    for name, cfg in [
        ("student", BinarizeConfig()),
        ("phase", BinarizeConfig(schedule="bit_multistep", activation_start_step=5)),
    ]:
        model, tok = fresh()
        binarize_(model, cfg)
        save_checkpoint(
            folder / f"{name}.pt",
            model=model,
            tokenizer=tok,
            binarize=cfg.to_dict(),
            meta={"stage": "student"},
        )
    return {n: folder / f"{n}.pt" for n in ("teacher", "student", "phase")}, layers


def _run(argv: list[str], capsys) -> tuple[int, str, str]:  # noqa: ANN001
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _no_leftovers(folder) -> bool:  # noqa: ANN001
    return not [p for p in folder.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"]


def _tokenized_feed(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    ids = np.array([[2, 5, 6, 7, 3, 0], [2, 8, 9, 10, 11, 3]], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}


def test_export_writes_a_verified_binary_model(checkpoints, tmp_path, capsys):
    paths, layers = checkpoints
    out = tmp_path / "student.onnx"
    code, stdout, stderr = _run(["export", str(paths["student"]), str(out)], capsys)
    assert code == 0, stderr
    assert (
        f"{6 * layers} binary layers (bitmaps::BinaryLinear" in stdout and "FP32 baseline" in stdout
    )
    assert "verified with function, kernel" in stderr
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert len(binary_linear_nodes(model)) == 6 * layers
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, _tokenized_feed(model))
    assert logits.shape[:2] == (2, 6) and np.isfinite(logits).all()
    assert _no_leftovers(tmp_path)


def test_export_fp16(checkpoints, tmp_path, capsys):
    paths, layers = checkpoints
    out = tmp_path / "student16.onnx"
    code, stdout, stderr = _run(
        ["export", str(paths["student"]), str(out), "--dtype", "fp16"], capsys
    )
    assert code == 0, stderr
    model = onnx.load(str(out))
    assert float32_on_compute_path(model) == []
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert len(binary_linear_nodes(model)) == 6 * layers


def test_export_baseline_matches_the_binary_interface(checkpoints, tmp_path, capsys):
    paths, _ = checkpoints
    out = tmp_path / "teacher.onnx"
    code, stdout, stderr = _run(["export-baseline", str(paths["teacher"]), str(out)], capsys)
    assert code == 0, stderr
    model = onnx.load(str(out))
    assert binary_linear_nodes(model) == [] and not model.functions
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["logits"]
    # the summary's FP32 baseline size is computed from parameters; check it against a real file:
    # the file's initializers hold those bytes (for a very small vocabulary the optimizer also
    # stores a folded transpose of the tied decoder weight: ≤ 32 kB here), the graph < 100 kB
    from bitmaps.train.models import load_model

    estimate = fp32_parameter_bytes(load_model(paths["teacher"]).model.config)
    stored = initializer_bytes(model)
    assert abs(stored - estimate) <= max(0.01 * estimate, 32_000)
    assert 0 < out.stat().st_size - stored < 100_000


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "teacher",
        "phase",
        "no_folder",
        "is_folder",
        "student_as_baseline",
        "opset",
        "asset_name",
        "plain_folder",
        "empty_path",
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_file(case, checkpoints, tmp_path, capsys):
    paths, _ = checkpoints
    out = tmp_path / "out.onnx"
    argv, needle = {
        "missing": (["export", str(tmp_path / "nope.pt"), str(out)], "does not exist"),
        "teacher": (["export", str(paths["teacher"]), str(out)], "export-baseline"),
        "phase": (["export", str(paths["phase"]), str(out)], "W1A1"),
        "no_folder": (
            ["export", str(paths["student"]), str(tmp_path / "x" / "o.onnx")],
            "does not exist",
        ),
        "is_folder": (["export", str(paths["student"]), str(tmp_path)], "names a folder"),
        "student_as_baseline": (
            ["export-baseline", str(paths["student"]), str(out)],
            "bitmaps export",
        ),
        "opset": (["export", str(paths["student"]), str(out), "--opset", "11"], "opset"),
        "asset_name": (["export", "bert-tiny", str(out)], "export-baseline"),
        # stop 44's probe: both were called "a model folder (full precision)"
        "plain_folder": (["export", str(tmp_path), str(out)], "is a folder, not a student"),
        "empty_path": (["export", "", str(out)], "no student checkpoint given"),
    }[case]
    code, stdout, stderr = _run(argv, capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], stderr
    assert "Traceback" not in stderr and stdout == ""
    assert not out.exists() and not (tmp_path / "x").exists() and _no_leftovers(tmp_path)


def test_export_refuses_to_write_when_verification_fails(checkpoints, tmp_path, capsys):
    paths, _ = checkpoints
    out = tmp_path / "strict.onnx"
    argv = ["export", str(paths["student"]), str(out), "--tolerance", "1e-12"]
    code, stdout, stderr = _run(argv, capsys)
    assert code == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: refusing to write the model:") and "differs from PyTorch" in last
    assert not out.exists() and _no_leftovers(tmp_path)


@pytest.mark.slow
def test_export_baseline_bert_base_shape(tmp_path, capsys):
    out = tmp_path / "bert-base-fp16.onnx"
    code, stdout, stderr = _run(
        ["export-baseline", "bert-base", str(out), "--dtype", "fp16"], capsys
    )
    assert code == 0, stderr
    model = onnx.load(str(out), load_external_data=False)
    assert float32_on_compute_path(model) == []
    assert 200e6 < out.stat().st_size < 240e6  # ~110M parameters in float16
