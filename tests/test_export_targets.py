"""Export targets (``bitmaps export --target``): onnxruntime parity, the TensorRT op list, the
metadata every export records, and ``build-engine`` refusing a model not made for TensorRT.

Two exports, once each per module: the BERT-tiny student (the cached asset, binarized with the
default config) for the onnxruntime target, and a small random student (K = 100: padding bits,
elastic quantizer: β ≠ 0) for the tensorrt target. The FP16 onnxruntime export is ``slow``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import helper
from test_export import small_student

from bitmaps import __version__
from bitmaps.cli import main
from bitmaps.core.config import BinarizeConfig, ExportConfig
from bitmaps.core.ops import reference_binary_linear, reference_prepack_weights, unpack_panels
from bitmaps.core.ort import function_session
from bitmaps.export.onnx_export import model_metadata
from bitmaps.export.onnx_function import binary_linear_function, binary_linear_nodes
from bitmaps.export.pipeline import export_verified
from bitmaps.export.targets import TENSORRT_OPS, ops_outside_tensorrt
from bitmaps.export.verify import Batch, verify_onnx
from bitmaps.runtime.onnxruntime import single_node_model, skip_layer_norm_model
from bitmaps.train.binary_linear import binarize_

MS = "com.microsoft"


def _bert_tiny_student():  # noqa: ANN202
    from bitmaps.train.models import load_model

    torch.manual_seed(0)
    loaded = load_model("bert-tiny")
    # the STE (one threshold, 0, for every layer): Q, K and V stack; elastic students are
    # small_student()'s below
    binarize_(loaded.model, BinarizeConfig(activation_quantizer="ste"))
    return loaded


@pytest.fixture(scope="module")
def onnxruntime_export(bert_tiny_dir):
    loaded = _bert_tiny_student()
    cfg = ExportConfig(target="onnxruntime")
    return export_verified(loaded.model, cfg, binary=True, tokenizer=loaded.tokenizer)


@pytest.fixture(scope="module")
def tensorrt_export():
    return export_verified(small_student(), ExportConfig(target="tensorrt"), binary=True)


def _ops(model: onnx.ModelProto) -> set[str]:
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    return {f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in nodes}


# --------------------------------------------------------------------------- onnxruntime


def test_onnxruntime_target_fuses_attention_and_matches_pytorch(onnxruntime_export):
    result = onnxruntime_export
    model, config = result.model, result.wrapper.model.config
    # a binary float32 model gets bitmaps' own attention op (native kernel in libbitmaps_ort.so,
    # model-local function without it), on Q, K and V stacked in one BinaryLinear (the three
    # layers binarize their common input alike); no com.microsoft node is left
    mha = [n for n in model.graph.node
           if (n.domain, n.op_type) == ("bitmaps", "PackedMultiHeadAttention")]  # fmt: skip
    assert len(mha) == config.num_hidden_layers
    assert f"{MS}::MultiHeadAttention" not in _ops(model)
    assert "bitmaps::MultiHeadAttention" not in {
        f"{n.domain}::{n.op_type}" for n in model.graph.node
    }
    functions = {"BinaryLinear", "MultiHeadAttention", "PackedMultiHeadAttention",
                 "SkipLayerNormalization"}  # fmt: skip
    assert {f.name for f in model.functions} == functions
    # each sublayer's residual Add + LayerNorm is one bitmaps::SkipLayerNormalization
    skip_norms = [n for n in model.graph.node if n.op_type == "SkipLayerNormalization"]
    assert len(skip_norms) == 2 * config.num_hidden_layers
    assert all(n.domain == "bitmaps" for n in skip_norms)
    assert all(helper.get_attribute_value(a) == config.num_attention_heads
               for n in mha for a in n.attribute if a.name == "num_heads")  # fmt: skip
    # the eager attention (Softmax and the head transposes) is gone; BinaryLinear feeds MHA
    assert "ai.onnx::Softmax" not in {
        f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in model.graph.node
    }
    producers = {o: n for n in model.graph.node for o in n.output}
    for i, node in enumerate(mha):
        qkv = producers[node.input[0]]
        assert qkv.op_type == "BinaryLinear" and len(node.input) == 2
        layer = f"bert.encoder.layer.{i}.attention.self"
        assert qkv.name == f"{layer}.query+{layer}.key+{layer}.value"
        attrs = {a.name: helper.get_attribute_value(a) for a in qkv.attribute}
        assert attrs["out_features"] == 3 * config.hidden_size
    assert len(binary_linear_nodes(model)) == 4 * config.num_hidden_layers
    # each FFN's Gelu is fused into the BinaryLinear before it (activation = 1)
    gelus = [n for n in model.graph.node if n.op_type == "Gelu"]  # only the MLM head's is left
    assert all(producers[n.input[0]].op_type != "BinaryLinear" for n in gelus) and len(gelus) == 1
    fused = [n.name for n in binary_linear_nodes(model)
             if any(a.name == "activation" and a.i == 1 for a in n.attribute)]  # fmt: skip
    assert sorted(fused) == sorted(
        f"bert.encoder.layer.{i}.intermediate.dense" for i in range(config.num_hidden_layers)
    )
    # verified layer by layer against PyTorch on both ONNX Runtime paths before it was returned
    assert result.report.ok and result.report.worst() < 1e-5
    ids = torch.randint(0, config.vocab_size, (3, 19), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[2, 11:] = 0
    report = verify_onnx(model, result.wrapper, [Batch("3x19", ids, mask)], 1e-4, ("function",))
    assert report.ok, report.failure()


def test_onnxruntime_target_fuses_int4_lookups_and_their_layer_norm(bert_tiny_dir):
    # encoder only (no tied decoder): the word, token-type and position lookups are
    # GatherBlockQuantized; with their two Adds and the LayerNorm they become one node
    loaded = _bert_tiny_student()
    cfg = ExportConfig(target="onnxruntime", output="hidden", embeddings="int4")
    result = export_verified(loaded.model, cfg, binary=True, tokenizer=loaded.tokenizer)
    model = result.model
    fused = [n for n in model.graph.node if n.op_type == "EmbedLayerNormalization"]
    assert len(fused) == 1 and fused[0].domain == "bitmaps"
    node = fused[0]
    assert node.input[2] == "input_ids"  # word ids first, as the graph added them
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["block_size"] == 64 and attrs["epsilon"] == pytest.approx(1e-12)
    left = {n.op_type for n in model.graph.node}
    assert not left & {"GatherBlockQuantized", "LayerNormalization", "Gather"}
    assert "EmbedLayerNormalization" in {f.name for f in model.functions}
    # verified against PyTorch on both ONNX Runtime paths (native op, function) before returned
    assert result.report.ok and result.report.worst() < 1e-5
    ids = torch.randint(0, loaded.model.config.vocab_size, (3, 19),
                        generator=torch.Generator().manual_seed(4))  # fmt: skip
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    batches = [Batch("3x19", ids, mask)]
    report = verify_onnx(model, result.wrapper, batches, 1e-4, ("function", "kernel"))
    assert report.ok, report.failure()


def test_onnxruntime_target_stacks_qkv_only_where_the_layers_binarize_alike():
    """The elastic quantizer learns each layer's α and β: Q, K and V of layer 0 made equal are
    stacked (PackedMultiHeadAttention), layer 1's (all different) stay three nodes; both verified
    against PyTorch, the stacked one third by third."""
    model = small_student()  # elastic, random α and β per layer
    attention = model.bert.encoder.layer[0].attention.self
    with torch.no_grad():
        for name in ("key", "value"):
            quantizer = getattr(attention, name).input_quantizer
            quantizer.alpha.copy_(attention.query.input_quantizer.alpha)
            quantizer.beta.copy_(attention.query.input_quantizer.beta)
    result = export_verified(model, ExportConfig(target="onnxruntime"), binary=True)
    assert result.report.ok, result.report.failure()
    ops = [(n.op_type, n.name) for n in result.model.graph.node if n.domain == "bitmaps"]
    attention_ops = [op for op, _ in ops if op.endswith("MultiHeadAttention")]
    assert attention_ops == ["PackedMultiHeadAttention", "MultiHeadAttention"]
    names = [name for op, name in ops if op == "BinaryLinear"]
    layer = "bert.encoder.layer.{}.attention.self.{}"
    assert "+".join(layer.format(0, p) for p in ("query", "key", "value")) in names
    assert all(layer.format(1, p) in names for p in ("query", "key", "value"))
    # each layer's FFN (fixed activation scales: elastic) is one BinaryFeedForward node
    ffns = [name for op, name in ops if op == "BinaryFeedForward"]
    assert ffns == [f"bert.encoder.layer.{i}.intermediate.dense>bert.encoder.layer.{i}.output.dense"
                    for i in range(2)]  # fmt: skip
    assert len(names) == 2 + 4


def test_onnxruntime_target_stores_weights_as_the_kernels_panels(onnxruntime_export):
    """W is stored in the CPU GEMM's layout (bitmaps::prepack_weights), so the native op reads it
    in place; the packed rows it came from are the PyTorch module's, panel for panel."""
    result = onnxruntime_export
    modules = dict(result.wrapper.model.named_modules())
    inits = {t.name: t for t in result.model.graph.initializer}
    nodes = binary_linear_nodes(result.model)
    for node in nodes:
        panels = torch.from_numpy(onnx.numpy_helper.to_array(inits[node.input[1]]).copy())
        # a stacked node (Q, K, V): the layers' weights one after the other
        layers = [modules[name] for name in node.name.split("+")]
        packed = torch.cat([m.packed_weight for m in layers])
        n, k = sum(m.out_features for m in layers), layers[0].in_features
        assert tuple(panels.shape) == (-(-n // 16), -(-k // 32), 16)
        assert torch.equal(unpack_panels(panels, n), packed)
        assert torch.equal(panels, reference_prepack_weights(packed, k))
        for i, part in enumerate(node.input[2:4]):  # w_scale, bias: concatenated alike
            wanted = torch.cat([m.w_scale if i == 0 else m.bias for m in layers])
            assert np.array_equal(onnx.numpy_helper.to_array(inits[part]), wanted.numpy())
    function = next(f for f in result.model.functions if f.name == "BinaryLinear")
    assert "W_rows" in {o for n in function.node for o in n.output}


def test_onnxruntime_target_runs_in_plain_onnxruntime(onnxruntime_export):
    session = function_session(onnxruntime_export.model)
    ids = np.array([[101, 2023, 2003, 1037, 3231, 102]], dtype=np.int64)
    (logits,) = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert logits.shape == (1, 6, onnxruntime_export.wrapper.model.config.vocab_size)
    assert np.isfinite(logits).all()


@pytest.mark.slow
def test_onnxruntime_target_fp16(bert_tiny_dir):
    loaded = _bert_tiny_student()
    cfg = ExportConfig(target="onnxruntime", dtype="fp16")
    result = export_verified(loaded.model, cfg, binary=True, tokenizer=loaded.tokenizer)
    assert result.report.ok
    assert f"{MS}::MultiHeadAttention" in _ops(result.model)


# --------------------------------------------------------------------------- tensorrt


def test_tensorrt_target_has_only_parser_supported_ops(tensorrt_export):
    model = tensorrt_export.model
    ops = _ops(model)
    assert "bitmaps::BinaryLinear" in ops
    outside = {op for op in ops if op.split("::")[1] not in TENSORRT_OPS} - {
        "bitmaps::BinaryLinear"
    }
    assert outside == set(), outside  # main graph and the fallback function
    assert {op.split("::")[0] for op in ops} == {"ai.onnx", "bitmaps"}
    (fn,) = model.functions
    assert not {"BitwiseAnd", "BitShift"} & {n.op_type for n in fn.node}
    for node in binary_linear_nodes(model):  # what makes the parser pick the plugin
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert (attrs["plugin_version"], attrs["plugin_namespace"]) == (b"1", b"bitmaps")
    assert tensorrt_export.report.ok


def test_op_list_check_sees_unsupported_ops(tensorrt_export):
    portable = ir.from_proto(tensorrt_export.model)
    portable.functions.clear()
    proto = ir.to_proto(portable)
    proto.functions.append(binary_linear_function(20))  # the portable one: BitwiseAnd
    assert ops_outside_tensorrt(ir.from_proto(proto)) == ["ai.onnx::BitwiseAnd"]
    assert ops_outside_tensorrt(ir.from_proto(tensorrt_export.model)) == []


@pytest.mark.parametrize("k", [1, 31, 32, 33, 100])
def test_tensorrt_fallback_function_matches_reference(k):
    model, t = single_node_model(k, 9, 0.25, 0.0)
    model.functions[0].CopyFrom(binary_linear_function(20, unpack="arithmetic"))
    onnx.checker.check_model(model, full_check=True)
    t["W"][0, 0] = -(2**31)  # only the sign bit set
    t["W"][1, 0] = -1  # every bit set
    for init in model.graph.initializer:
        if init.name == "W":
            init.CopyFrom(onnx.numpy_helper.from_array(t["W"].numpy(), "W"))
    x = torch.randn(4, k)
    y = function_session(model).run(None, {"X": x.numpy()})[0]
    ref = reference_binary_linear(x, t["W"], t["w_scale"], t["bias"], k, 0.25, 0.0)
    assert np.abs(y - ref.numpy()).max() <= 1e-5 * max(1.0, ref.abs().max().item())


# --------------------------------------------------------------------------- metadata, build-engine


def test_metadata_records_target_dtype_and_version(onnxruntime_export, tensorrt_export):
    for result, target in ((onnxruntime_export, "onnxruntime"), (tensorrt_export, "tensorrt")):
        meta = model_metadata(result.model)
        assert (meta["target"], meta["dtype"], meta["version"]) == (target, "fp32", __version__)
        assert meta["kind"] == "binary"
        assert int(meta["binary_linear_nodes"]) == len(binary_linear_nodes(result.model))
        # the position table's length: what build-engine checks --max-shape against
        assert int(meta["max_sequence"]) == result.wrapper.model.config.max_position_embeddings


def _build_engine(path, tmp_path, capsys) -> tuple[int, str]:  # noqa: ANN001
    code = main(["build-engine", str(path), "-o", str(tmp_path / "m.engine")])
    return code, capsys.readouterr().err


def test_build_engine_refuses_an_export_for_another_target(tensorrt_export, tmp_path, capsys):
    other = onnx.ModelProto()
    other.CopyFrom(tensorrt_export.model)
    for prop in other.metadata_props:
        if prop.key == "bitmaps.target":
            prop.value = "portable"
    path = tmp_path / "portable.onnx"
    onnx.save(other, str(path))
    code, err = _build_engine(path, tmp_path, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--target tensorrt" in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "m.engine").exists()
    # a file with no bitmaps metadata (written before targets existed) counts as portable
    del other.metadata_props[:]
    onnx.save(other, str(path))
    code, err = _build_engine(path, tmp_path, capsys)
    assert code == 2 and "portable export" in err


def test_build_engine_accepts_a_tensorrt_export(tensorrt_export, tmp_path, capsys):
    path = tmp_path / "trt.onnx"
    onnx.save(tensorrt_export.model, str(path))
    code, err = _build_engine(path, tmp_path, capsys)
    assert "--target tensorrt" not in err  # past the target check: TensorRT itself, or its absence
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_export_cli_target_option(tmp_path, capsys):
    code = main(["export", "student.pt", str(tmp_path / "o.onnx"), "--target", "tflite"])
    err = capsys.readouterr().err
    assert code == 2 and "tflite" in err and "Traceback" not in err
    assert ExportConfig().target == "portable"
    with pytest.raises(Exception, match="target"):
        ExportConfig(target="tflite")


def test_tensorrt_target_refuses_an_unsupported_op():
    """A pass that adds an op the parser lacks makes the export fail with one line (exit 2)."""
    from bitmaps.core.errors import BitmapsError
    from bitmaps.export.pipeline import _check_target

    graph = ir.Graph([], [], nodes=[], opset_imports={"": 20}, name="g")
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.INT32), shape=ir.Shape([2]))
    graph.inputs.append(x)
    node = ir.node("BitShift", [x, x], {"direction": "LEFT"})
    graph.append(node)
    graph.outputs.append(node.outputs[0])
    model = ir.Model(graph, ir_version=10)

    class Wrapper:  # only the config is read
        class model:  # noqa: N801
            config = type("C", (), {"num_hidden_layers": 0})

    with pytest.raises(BitmapsError, match="BitShift"):
        _check_target(model, Wrapper, ExportConfig(target="tensorrt"))


@pytest.mark.parametrize("mode", ["fp16", "int8"])
def test_tensorrt_target_takes_fp16_and_int8_embeddings(mode):
    """fp16 tables (Gather + Cast) and int8 ones (Gather + Cast + Mul below opset 21) stay inside
    the ONNX-TensorRT parser's op list, and the export verifies against PyTorch; whether TensorRT
    itself builds the int8 gather is for a machine with TensorRT (test_tensorrt_plugin.py)."""
    cfg = ExportConfig(target="tensorrt", embeddings=mode, embedding_group=32)
    result = export_verified(small_student(), cfg, binary=True)
    model = ir.from_proto(result.model)
    assert ops_outside_tensorrt(model) == []
    want = {"fp16": onnx.TensorProto.FLOAT16, "int8": onnx.TensorProto.INT8}[mode]
    # the word table (one, tied to the decoder): vocabulary 300 x hidden 64
    word = [t for t in result.model.graph.initializer if list(t.dims) == [300, 64]]
    assert [t.data_type for t in word] == [want], [(t.name, t.data_type) for t in word]


def test_tensorrt_target_takes_int4_embeddings_unpacked_by_table_lookup():
    """int4 tables are unpacked by Gather from a value-pair table (no BitwiseAnd / BitShift), so
    the tensorrt target holds them with parser-listed ops only (export refuses anything else)."""
    result = export_verified(
        small_student(), ExportConfig(target="tensorrt", embeddings="int4"), binary=True
    )
    assert result.report.ok, result.report.failure()
    assert ops_outside_tensorrt(ir.from_proto(result.model)) == []
    nodes = {n.output[0]: n for n in result.model.graph.node}
    lookups = [n for n in result.model.graph.node
               if n.op_type == "Gather" and n.input[0].startswith("embeddings_q/")]  # fmt: skip
    assert lookups
    for gather in lookups:  # uint8 -> float32 -> int32: the casts TensorRT's cast layer has
        to_int = nodes[gather.input[1]]
        to_float = nodes[to_int.input[0]]
        assert (to_int.op_type, to_float.op_type) == ("Cast", "Cast")
        casts = [helper.get_attribute_value(n.attribute[0]) for n in (to_float, to_int)]
        assert casts == [onnx.TensorProto.FLOAT, onnx.TensorProto.INT32]


def test_verification_checks_each_third_of_a_stacked_qkv_node(onnxruntime_export):
    """A wrong key projection inside the stacked Q, K, V node is caught and named: verification
    compares each third of the node's output with its own PyTorch layer."""
    result = onnxruntime_export
    model = onnx.ModelProto()
    model.CopyFrom(result.model)
    stacked = next(n for n in binary_linear_nodes(model) if "+" in n.name)
    scale = next(t for t in model.graph.initializer if t.name == stacked.input[2])
    values = onnx.numpy_helper.to_array(scale).copy()
    third = values.shape[0] // 3
    values[third : 2 * third] *= 1.5  # the key layer's weight scales
    scale.CopyFrom(onnx.numpy_helper.from_array(values, scale.name))
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(5))
    report = verify_onnx(model, result.wrapper, [Batch("2x9", ids, torch.ones_like(ids))], 1e-4,
                         ("function",))  # fmt: skip
    assert not report.ok
    assert f"the output of {stacked.name.split('+')[1]} " in report.failure()


def test_skip_layer_norm_function_refuses_a_node_without_beta(tmp_path):
    # The function passed a missing beta on to LayerNormalization, and ONNX Runtime 1.32 died of
    # SIGSEGV creating the session; it now reads beta through an Identity, which ONNX Runtime
    # refuses at session creation. In a child process: a crash must fail this test, not end it.
    path = tmp_path / "no_beta.onnx"
    onnx.save(skip_layer_norm_model(8, beta=False), str(path))
    code = (
        "import sys, onnxruntime as ort\n"
        "try:\n"
        f"    ort.InferenceSession({str(path)!r}, providers=['CPUExecutionProvider'])\n"
        "except Exception as e:\n"
        "    print('refused:', e)\n"
        "    sys.exit(0)\n"
        "sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-500:])
    assert "Node (norm)" in proc.stdout and "SkipLayerNormalization" in proc.stdout


def test_an_fp16_tensorrt_export_of_int4_tables_holds_no_float32():
    """The tensorrt target reads int4 bytes as uint8 → float → int32 (TensorRT casts uint8 to and
    from float32 and float16 only); it went through float32 in FP16 exports too, which the FP16
    check then refused (`export --dtype fp16 --target tensorrt --embeddings int4`)."""
    from bitmaps.export.onnx_graph import float32_on_compute_path

    cfg = ExportConfig(dtype="fp16", target="tensorrt", embeddings="int4")
    result = export_verified(small_student(), cfg, binary=True)
    assert float32_on_compute_path(result.model) == []
    casts = [n for n in result.model.graph.node if n.op_type == "Cast"]
    assert any(
        a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for n in casts for a in n.attribute
    )
