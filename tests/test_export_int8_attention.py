"""``bitmaps export --target onnxruntime --attention int8``: the attention nodes in the int8 scheme
(csrc/kernels/cpu_attention.h), the model-local functions that compute the same bits, and the
verification against PyTorch run in the same scheme (bitmaps/core/int8_attention.py).

Two int8 exports per module: the BERT-tiny student binarized with the STE (Q, K, V stacked:
``PackedMultiHeadAttention``) and a small elastic student (three nodes: ``MultiHeadAttention``).
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error
from test_export import small_student
from test_export_targets import _bert_tiny_student

from bitmaps.cli import main
from bitmaps.core.config import ExportConfig
from bitmaps.core.errors import BitmapsError, ConfigError
from bitmaps.core.ort import function_session, library_missing
from bitmaps.export import pipeline
from bitmaps.export.onnx_export import model_metadata
from bitmaps.export.pipeline import export_baseline, export_verified
from bitmaps.export.verify import ExportVerificationError

INT8 = ExportConfig(target="onnxruntime", attention="int8")
IDS = np.array([[101, 2023, 2003, 1037, 3231, 1012, 102, 0]], dtype=np.int64)
MASK = np.array([[1, 1, 1, 1, 1, 1, 1, 0]], dtype=np.int64)


@pytest.fixture(scope="module")
def packed_int8(bert_tiny_dir):
    loaded = _bert_tiny_student()
    return export_verified(loaded.model, INT8, binary=True, tokenizer=loaded.tokenizer)


@pytest.fixture(scope="module")
def unpacked_int8():
    return export_verified(small_student(), INT8, binary=True)


def _attention_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == "bitmaps" and "Attention" in n.op_type]


def _int8_attribute(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "int8"), None)


@pytest.mark.parametrize(
    ("fixture", "op_type"),
    [("packed_int8", "PackedMultiHeadAttention"), ("unpacked_int8", "MultiHeadAttention")],
)
def test_every_attention_node_and_its_function_is_int8(fixture, op_type, request):
    result = request.getfixturevalue(fixture)
    model, layers = result.model, result.wrapper.model.config.num_hidden_layers
    nodes = _attention_nodes(model)
    assert [n.op_type for n in nodes] == [op_type] * layers
    assert all(_int8_attribute(n) == 1 for n in nodes)
    function = next(f for f in model.functions if f.name == op_type)
    assert "int8" in function.attribute
    ops = {n.op_type for n in function.node}
    assert "Softmax" not in ops and {"Round", "ReduceMax", "Gather"} <= ops
    assert model_metadata(model)["attention"] == "int8"
    assert result.report.ok


def test_verified_on_both_backends(packed_int8):
    # teacher-forced per segment (bitmaps/export/verify.py): the function's and the kernel's int8
    # attention each agree with PyTorch's within the fp32 tolerance (they compute the same bits;
    # whole-model outputs may still differ where a binary activation flips, as in float)
    backends = {r.backend for r in packed_int8.report.results}
    assert backends == ({"function"} if library_missing() else {"function", "kernel"})
    assert max(r.input_error for r in packed_int8.report.results) < 1e-5


def test_int8_export_differs_from_the_float_one(packed_int8, bert_tiny_dir):
    loaded = _bert_tiny_student()
    cfg = ExportConfig(target="onnxruntime")
    float_model = export_verified(loaded.model, cfg, binary=True).model
    assert model_metadata(float_model)["attention"] == "float"
    assert all(_int8_attribute(n) is None for n in _attention_nodes(float_model))
    feed = {"input_ids": IDS, "attention_mask": MASK}
    (a,) = function_session(packed_int8.model).run(None, feed)
    (b,) = function_session(float_model).run(None, feed)
    assert not np.array_equal(a, b)
    # the rounding is small against the logits' spread (the model's agreement is measured by eval)
    assert np.abs(a - b).max() < 0.2 * np.abs(b).max()


def test_verification_refuses_an_int8_file_against_float_pytorch(monkeypatch):
    # PyTorch left in float: the attention outputs differ by far more than the tolerance
    monkeypatch.setattr(pipeline, "attention_precision", lambda _: contextlib.nullcontext())
    with pytest.raises(ExportVerificationError, match="refusing to write"):
        export_verified(small_student(), INT8, binary=True)


def test_int8_attention_needs_the_onnxruntime_target_and_fp32():
    for bad in ({"target": "portable"}, {"target": "tensorrt"},
                {"target": "onnxruntime", "dtype": "fp16"}):  # fmt: skip
        with pytest.raises(ConfigError, match="attention int8 needs --target onnxruntime"):
            ExportConfig(attention="int8", **bad)
    with pytest.raises(ConfigError, match="attention"):
        ExportConfig(target="onnxruntime", attention="int4")
    with pytest.raises(BitmapsError, match="for binary students"):
        export_baseline("bert-tiny", "unused.onnx", INT8)


def test_export_cli_attention_option(tmp_path, capsys):
    out = tmp_path / "o.onnx"
    code = main(["export", "student.pt", str(out), "--attention", "int8"])
    assert_one_line_error(code, capsys.readouterr().err, "--target onnxruntime")
    assert not out.exists()
    code = main(
        ["export", "student.pt", str(out), "--target", "onnxruntime", "--attention", "int4"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "int4" in err and "Traceback" not in err


# --------------------------------------------------------------------------- torch and profile


def test_fused_cpu_inference_runs_the_int8_kernel(monkeypatch):
    import copy

    import torch

    from bitmaps.core import ops as ops_module
    from bitmaps.runtime.fusion import fuse_for_cpu_inference_
    from bitmaps.train.attention import int8_attention_everywhere
    from bitmaps.train.binary_linear import pack_binary_linears_

    model = small_student("ste").eval()
    pack_binary_linears_(model)
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    fused = {}
    for attention in ("float", "int8"):
        fused[attention] = copy.deepcopy(model)
        fuse_for_cpu_inference_(fused[attention], attention)
    flags = []
    real = ops_module.packed_attention

    def spy(*args):  # noqa: ANN002, ANN202
        flags.append(args[4] if len(args) > 4 else False)
        return real(*args)

    monkeypatch.setattr(ops_module, "packed_attention", spy)
    with torch.no_grad():
        out = {a: m(input_ids=ids, attention_mask=mask).logits for a, m in fused.items()}
        with int8_attention_everywhere():
            unfused = model(input_ids=ids, attention_mask=mask).logits
    assert flags == [False, False, True, True]  # the fused encoder loop: one call per layer
    assert not torch.equal(out["int8"], out["float"])
    # the fused int8 model against transformers' own layers running the same scheme
    scale = float(unfused.abs().max())
    torch.testing.assert_close(out["int8"], unfused, rtol=0, atol=0.05 * scale)
    with pytest.raises(ValueError, match="attention"):
        fuse_for_cpu_inference_(copy.deepcopy(model), "int4")


def test_profile_attention_option(tmp_path):
    from bitmaps.core.config import ProfileConfig
    from bitmaps.runtime.backends import path_description

    assert ProfileConfig().attention == "float"
    with pytest.raises(ConfigError, match="attention"):
        ProfileConfig(attention="int4")
    for backend in ("onnxruntime", "torch"):
        assert "int8" in path_description(backend, "cpu", "binary", "int8")
        assert "attention in int8" not in path_description(backend, "cpu", "binary")
        assert "attention in int8" not in path_description(backend, "cpu", "fp32", "int8")
