"""Export of binarized students to ONNX: the model-local function, graph structure, parity, FP16.

A small random BERT (2 layers, hidden 64, intermediate 100: K = 100 exercises the padding bits)
binarized with the elastic quantizer (β ≠ 0, fixed act_scale > 0) is exported in memory once per
dtype. The end-to-end CLI on the real BERT-tiny lives in tests/test_export_cli.py; BERT-base shapes
are the ``slow`` tests at the bottom.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bitmaps.core.config import BinarizeConfig, ExportConfig
from bitmaps.core.ops import reference_binary_linear
from bitmaps.core.packed import PackedBinaryLinear
from bitmaps.export import onnx_export
from bitmaps.export.onnx_function import (
    ATTRIBUTE_DEFAULTS,
    ATTRIBUTES,
    DOMAIN,
    OP_TYPE,
    binary_linear_nodes,
)
from bitmaps.export.onnx_function import node_attributes as attrs_of
from bitmaps.export.onnx_graph import float32_on_compute_path, fp32_parameter_bytes, packed_bytes
from bitmaps.export.pipeline import export_verified
from bitmaps.export.verify import Batch, verify_onnx
from bitmaps.runtime.onnxruntime import function_session, single_node_model
from bitmaps.train.binary_linear import binarize_


def small_student(
    quantizer: str = "elastic", seed: int = 0, activation: str = "gelu"
) -> torch.nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=100,
        max_position_embeddings=64,
    )
    model = BertForMaskedLM(config).eval()
    binarize_(model, BinarizeConfig(activation_quantizer=quantizer, activation=activation))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "input_quantizer") and hasattr(m.input_quantizer, "alpha"):
                m.input_quantizer.alpha.fill_(0.5 + float(torch.rand((), generator=g)))
                m.input_quantizer.beta.fill_(0.2 * float(torch.rand((), generator=g)) - 0.1)
    return model


def batches_of(shapes: list[tuple[int, int]], vocab: int) -> list[Batch]:
    g = torch.Generator().manual_seed(7)
    out = []
    for b, s in shapes:
        mask = torch.ones(b, s, dtype=torch.int64)
        mask[0, (s + 1) // 2 :] = 0 if b > 1 else 1
        out.append(Batch(f"{b}x{s}", torch.randint(0, vocab, (b, s), generator=g), mask))
    return out


@pytest.mark.parametrize("output", ["hidden", "logits"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_export_wrapper_masks_padding_as_the_model_does(output: str, dtype: str) -> None:
    """ExportWrapper hands the attention its key-padding mask as an additive bias (transformers 5)
    instead of the 2-D mask; export verifies against the wrapper, so this checks the wrapper
    against the model called the usual way, padded rows included."""
    from bitmaps.export.onnx_export import prepare_model

    wrapper = prepare_model(small_student(), dtype, output)
    ids = torch.randint(0, 300, (3, 13), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    mask[2, 1:] = 0
    with torch.no_grad():
        got = wrapper(ids, mask)
        model = wrapper.model
        base = model.base_model if output == "hidden" else model
        want = base(input_ids=ids, attention_mask=mask)
        want = want.last_hidden_state if output == "hidden" else want.logits
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.fixture(scope="module")
def exported_fp32():
    return export_verified(small_student(), ExportConfig(), binary=True)


@pytest.fixture(scope="module")
def exported_fp16():
    return export_verified(small_student(), ExportConfig(dtype="fp16"), binary=True)


def report_nodes(result) -> list[str]:  # noqa: ANN001
    return [n.name for n in binary_linear_nodes(result.model)]


def packed_modules(result) -> dict[str, PackedBinaryLinear]:
    mods = result.wrapper.model.named_modules()
    return {n: m for n, m in mods if isinstance(m, PackedBinaryLinear)}


# --------------------------------------------------------------------------- the local function


@pytest.mark.parametrize("unsigned", [0, 1])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
@pytest.mark.parametrize(
    "k,n,beta,scale,lead",
    [
        (1, 1, 0.0, 0.0, (3,)),
        (31, 7, 0.25, 0.0, (2, 5)),
        (32, 65, 0.0, 0.7, (4,)),
        (33, 9, -0.5, 0.0, (1, 3)),
        (100, 13, 0.25, 1.3, (2, 2)),
        (768, 33, 0.0, 0.0, (2, 17)),
    ],
)
def test_function_matches_reference_op(k, n, beta, scale, lead, dtype, unsigned):
    model, t = single_node_model(
        k, n, beta, scale, dtype=dtype, rank=len(lead) + 1, act_unsigned=unsigned
    )
    assert ("act_unsigned" in attrs_of(model.graph.node[0])) == bool(unsigned)
    onnx.checker.check_model(model, full_check=True)
    x = torch.randn(*lead, k)
    x.view(-1)[::5] = beta  # x − β == 0 exactly: sign(0) must be +1
    x = x.half() if dtype == TensorProto.FLOAT16 else x
    y = function_session(model).run(None, {"X": x.numpy()})[0]
    ref = reference_binary_linear(x, t["W"], t["w_scale"], t["bias"], k, beta, scale, unsigned)
    assert y.dtype == x.numpy().dtype and y.shape == tuple(ref.shape)
    err = np.abs(y.astype(np.float64) - ref.double().numpy()).max()
    bound = ref.abs().max().item()
    # float32: summation order only; float16: both round the same float32 value once (1 ulp)
    assert err <= (1e-5 if dtype == TensorProto.FLOAT else 1e-3) * max(1.0, bound)


def test_function_sign_of_zero_is_plus_one():
    model, t = single_node_model(4, 1, 0.0, 1.0)
    with torch.no_grad():
        t["W"].zero_()  # all weight signs +1: y = act_scale · w_scale · Σ sign(x) + bias
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(t["W"].numpy(), "W"))
    x = torch.tensor([[0.0, 0.0, 0.0, -1.0]])
    y = function_session(model).run(None, {"X": x.numpy()})[0]
    expected = 1.0 * t["w_scale"][0] * (1 + 1 + 1 - 1) + t["bias"][0]
    assert y[0, 0] == pytest.approx(float(expected), rel=1e-6)


def test_function_unsigned_activation_of_zero_is_zero():
    model, t = single_node_model(4, 1, 0.0, 1.0, act_unsigned=1)
    with torch.no_grad():
        t["W"].zero_()  # all weight signs +1: y = act_scale · w_scale · Σ 1{x > 0} + bias
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(t["W"].numpy(), "W"))
    x = torch.tensor([[0.0, 2.0, 0.5, -1.0]])
    y = function_session(model).run(None, {"X": x.numpy()})[0]
    expected = 1.0 * t["w_scale"][0] * (0 + 1 + 1 + 0) + t["bias"][0]
    assert y[0, 0] == pytest.approx(float(expected), rel=1e-6)


# --------------------------------------------------------------------------- graph structure


def test_one_node_per_binary_layer_with_exact_attributes(exported_fp32):
    model, mods = exported_fp32.model, packed_modules(exported_fp32)
    nodes = binary_linear_nodes(model)
    layers = exported_fp32.wrapper.model.config.num_hidden_layers
    assert len(nodes) == 6 * layers == len(mods)
    assert sorted(n.name for n in nodes) == sorted(mods)
    for node in nodes:
        m, a = mods[node.name], attrs_of(node)
        assert (node.domain, node.op_type, len(node.input)) == (DOMAIN, OP_TYPE, 4)
        # act_unsigned is written only for unsigned layers (absent means 0, DESIGN.md)
        assert sorted(a) == sorted(set(ATTRIBUTES) - set(ATTRIBUTE_DEFAULTS))
        assert (a["in_features"], a["out_features"]) == (m.in_features, m.out_features)
        assert a["act_threshold"] == np.float32(m.act_threshold) and a["act_threshold"] != 0
        assert a["act_scale"] == np.float32(m.act_scale) and a["act_scale"] > 0
        assert (a["plugin_version"], a["plugin_namespace"]) == ("1", "bitmaps")
    assert {(o.domain, o.version) for o in model.opset_import} >= {("", 20), (DOMAIN, 1)}
    (fn,) = [f for f in model.functions if (f.domain, f.name) == (DOMAIN, OP_TYPE)]
    assert sorted([*fn.attribute, *(a.name for a in fn.attribute_proto)]) == sorted(ATTRIBUTES)
    assert [(a.name, a.i) for a in fn.attribute_proto] == [("act_unsigned", 0)]
    assert list(fn.input) == ["X", "W", "w_scale", "bias"]


def test_initializers_are_packed_private_and_exact(exported_fp32):
    model, mods = exported_fp32.model, packed_modules(exported_fp32)
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    for node in binary_linear_nodes(model):
        m = mods[node.name]
        n, kw = m.out_features, math.ceil(m.in_features / 32)
        w, s, b = (inits[name] for name in node.input[1:])
        assert [w.name, s.name, b.name] == [
            f"{node.name}.{x}" for x in ("packed_weight", "w_scale", "bias")
        ]
        assert (w.data_type, list(w.dims)) == (TensorProto.INT32, [n, kw])
        assert (s.data_type, list(s.dims)) == (TensorProto.FLOAT, [n])
        assert (b.data_type, list(b.dims)) == (TensorProto.FLOAT, [n])
        assert all(users[x] == 1 for x in node.input[1:])  # not shared after de-duplication
        assert torch.equal(torch.from_numpy(numpy_helper.to_array(w).copy()), m.packed_weight)
        assert torch.equal(torch.from_numpy(numpy_helper.to_array(s).copy()), m.w_scale)
        assert torch.equal(torch.from_numpy(numpy_helper.to_array(b).copy()), m.bias)
    assert packed_bytes(model) == sum(
        4 * m.out_features * math.ceil(m.in_features / 32) for m in mods.values()
    )


def test_no_float_weight_left_for_binary_layers(exported_fp32):
    model, mods = exported_fp32.model, packed_modules(exported_fp32)
    op_inputs = {x for node in binary_linear_nodes(model) for x in node.input[2:]}
    floats = [
        t
        for t in model.graph.initializer
        if t.data_type == TensorProto.FLOAT and t.name not in op_inputs
    ]
    float_elems = sum(math.prod(t.dims) for t in floats)
    other = {id(p): p for n, p in exported_fp32.wrapper.model.named_parameters()}
    other_elems = sum(p.numel() for p in other.values())  # binary layers hold buffers only
    smallest_layer = min(m.in_features * m.out_features for m in mods.values())
    # constant folding adds scalars and may transpose, never duplicate, a weight
    assert float_elems - other_elems < smallest_layer
    assert not any(t.name.removeprefix("model.").startswith(tuple(mods)) for t in floats)


def test_inputs_outputs_and_dynamic_axes(exported_fp32):
    g = exported_fp32.model.graph
    assert [i.name for i in g.input] == ["input_ids", "attention_mask"]
    for i in g.input:
        dims = i.type.tensor_type.shape.dim
        assert i.type.tensor_type.elem_type == TensorProto.INT64
        assert [d.dim_param for d in dims] == ["batch", "sequence"]
    (out,) = g.output
    dims = out.type.tensor_type.shape.dim
    assert out.name == "logits" and out.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [dims[0].dim_param, dims[1].dim_param, dims[2].dim_value] == ["batch", "sequence", 300]


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("backend", ["function", "kernel"])
def test_parity_fp32_several_shapes(exported_fp32, backend):
    batches = batches_of([(1, 1), (1, 64), (4, 9), (7, 23)], 300)
    report = verify_onnx(exported_fp32.model, exported_fp32.wrapper, batches, 1e-4, (backend,))
    assert report.ok, report.failure()
    assert report.worst() < 1e-5
    assert [r.batch for r in report.results] == ["1x1", "1x64", "4x9", "7x23"]
    # end to end: a sequence may only diverge after a sign flip, never by float drift
    assert all(r.diverged_without_flip == 0 for r in report.results)


@pytest.mark.parametrize("backend", ["function", "kernel"])
def test_parity_fp16_several_shapes(exported_fp16, backend):
    batches = batches_of([(1, 3), (2, 40), (5, 11)], 300)
    report = verify_onnx(exported_fp16.model, exported_fp16.wrapper, batches, 2e-2, (backend,))
    assert report.ok, report.failure()
    assert report.worst() < 5e-3
    assert all(r.diverged_without_flip == 0 for r in report.results)
    diverged = [r for r in report.results if r.sequences_within < r.sequences]
    assert all(r.first_flip in report_nodes(exported_fp16) for r in diverged)


@pytest.fixture(scope="module")
def exported_relu():
    return export_verified(small_student(activation="relu"), ExportConfig(), binary=True)


@pytest.mark.parametrize("backend", ["function", "kernel"])
def test_parity_unsigned_student(exported_relu, backend):
    """A ReLU student (two-set binarization: the FFN output dense takes {0, 1} activations)."""
    unsigned = {
        n.name for n in binary_linear_nodes(exported_relu.model) if attrs_of(n).get("act_unsigned")
    }
    mods = packed_modules(exported_relu)
    assert unsigned == {n for n, m in mods.items() if m.act_unsigned}
    assert sorted(unsigned) == [f"bert.encoder.layer.{i}.output.dense" for i in range(2)]
    batches = batches_of([(1, 1), (1, 64), (4, 9)], 300)
    report = verify_onnx(exported_relu.model, exported_relu.wrapper, batches, 1e-4, (backend,))
    assert report.ok, report.failure()
    assert report.worst() < 1e-5
    # the unsigned layers are not signed ones in disguise: reading them as ±1 changes the output
    signed = _corrupted(exported_relu.model, _drop_act_unsigned)
    assert not verify_onnx(signed, exported_relu.wrapper, batches[1:2], 1e-4, (backend,)).ok


def _drop_act_unsigned(model: onnx.ModelProto) -> None:
    for node in binary_linear_nodes(model):
        keep = [a for a in node.attribute if a.name != "act_unsigned"]
        del node.attribute[:]
        node.attribute.extend(keep)


def _corrupted(model: onnx.ModelProto, change) -> onnx.ModelProto:  # noqa: ANN001
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    change(bad)
    return bad


def test_verification_names_the_layer_that_drifts(exported_fp32):
    model, wrapper = exported_fp32.model, exported_fp32.wrapper
    target = "bert.encoder.layer.1.intermediate.dense"
    batches = batches_of([(2, 12)], 300)

    def flip_weight_bits(m: onnx.ModelProto) -> None:
        t = next(t for t in m.graph.initializer if t.name == f"{target}.packed_weight")
        t.CopyFrom(numpy_helper.from_array(~numpy_helper.to_array(t), t.name))

    def shift_threshold(m: onnx.ModelProto) -> None:
        node = next(n for n in m.graph.node if n.name == target)
        next(a for a in node.attribute if a.name == "act_threshold").f += 0.5

    def scale_layernorm(m: onnx.ModelProto) -> None:  # the float op feeding that node
        node = next(n for n in m.graph.node if n.name == target)
        norm = next(n for n in m.graph.node if node.input[0] in n.output)
        assert norm.op_type == "LayerNormalization"
        gamma = next(t for t in m.graph.initializer if t.name == norm.input[1])
        scaled = numpy_helper.to_array(gamma) * 1.1
        m.graph.initializer.append(numpy_helper.from_array(scaled, "scaled_gamma"))
        norm.input[1] = "scaled_gamma"

    for change, where in [
        (flip_weight_bits, f"the output of {target}"),
        (shift_threshold, f"the output of {target}"),
        (scale_layernorm, f"the input of {target}"),
    ]:
        report = verify_onnx(_corrupted(model, change), wrapper, batches, 1e-4, ("function",))
        assert not report.ok
        assert where in report.failure()


# --------------------------------------------------------------------------- FP16


def test_fp16_export_has_no_float32_on_the_compute_path(exported_fp16, exported_fp32):
    model = exported_fp16.model
    assert float32_on_compute_path(model) == []
    g = model.graph
    assert g.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    inits = {t.name: t for t in g.initializer}
    for node in binary_linear_nodes(model):  # DESIGN.md: the op's scales stay float32
        assert [inits[x].data_type for x in node.input[1:]] == [
            TensorProto.INT32,
            TensorProto.FLOAT,
            TensorProto.FLOAT,
        ]
    assert float32_on_compute_path(exported_fp32.model)  # the audit does see float32

    def add_float32_cast(m: onnx.ModelProto) -> None:
        out = m.graph.output[0]
        m.graph.node.append(helper.make_node("Cast", [out.name], ["logits32"], to=1, name="c"))
        m.graph.output.append(helper.make_tensor_value_info("logits32", TensorProto.FLOAT, None))

    found = float32_on_compute_path(_corrupted(model, add_float32_cast))
    assert any("Cast to float32" in f for f in found) and any("logits32" in f for f in found)


def test_hidden_output():
    result = export_verified(small_student("ste"), ExportConfig(output="hidden"), binary=True)
    (out,) = result.model.graph.output
    assert out.name == "last_hidden_state"
    assert out.type.tensor_type.shape.dim[2].dim_value == 64
    for node in binary_linear_nodes(result.model):
        assert attrs_of(node)["act_scale"] == 0.0  # per-row mean |x − β|


# --------------------------------------------------------------------------- the file alone

NO_BITMAPS = """
import sys
sys.modules["bitmaps"] = None  # any import of bitmaps or the extensions would fail
sys.modules["onnxruntime_extensions"] = None
import numpy as np, onnx, onnxruntime as ort
m = onnx.load(sys.argv[1])
onnx.checker.check_model(m, full_check=True)
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
ids = np.arange(2 * 9, dtype=np.int64).reshape(2, 9) % 300
y = s.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
np.save(sys.argv[2], y)
"""


def test_file_runs_in_plain_onnxruntime_without_bitmaps(exported_fp32, tmp_path):
    path = tmp_path / "student.onnx"
    onnx.save(exported_fp32.model, str(path))
    reloaded = onnx.load(str(path))
    assert len(binary_linear_nodes(reloaded)) == len(binary_linear_nodes(exported_fp32.model))
    proc = subprocess.run(
        [sys.executable, "-c", NO_BITMAPS, str(path), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    y = np.load(tmp_path / "y.npy")
    ids = torch.arange(2 * 9).reshape(2, 9) % 300
    batch = Batch("2x9", ids, torch.ones_like(ids))
    assert verify_onnx(reloaded, exported_fp32.wrapper, [batch], 1e-4, ("function",)).ok
    here = function_session(reloaded).run(
        None, {"input_ids": ids.numpy(), "attention_mask": np.ones((2, 9), np.int64)}
    )[0]
    # the plain client runs ONNX Runtime's default fusions (SkipLayerNormalization), bitmaps'
    # sessions do not (bitmaps/core/ort.py): the same model up to float rounding
    assert y.shape == (2, 9, 300)
    np.testing.assert_allclose(y, here, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- BERT-base shapes


# FP32: the whole of BERT-base (12 layers). FP16: its widths in 2 layers (what the FP16 checks
# look at is per layer; the 12-layer FP16 export and verification took 90 s of the suite's time on
# a Zen 1 EPYC). `test_export_cli.py` exports the whole FP16 BERT-base baseline.
@pytest.fixture(scope="module", params=[("fp32", 12), ("fp16", 2)], ids=["fp32", "fp16"])
def bert_base_export(request):
    from transformers import BertConfig, BertForMaskedLM

    dtype, layers = request.param
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(num_hidden_layers=layers)).eval()
    binarize_(model, BinarizeConfig())
    return export_verified(model, ExportConfig(dtype=dtype), binary=True)


@pytest.mark.slow
def test_bert_base_student(bert_base_export):
    result = bert_base_export
    model, dtype = result.model, result.wrapper.model.dtype
    layers = result.wrapper.model.config.num_hidden_layers
    nodes = binary_linear_nodes(model)
    assert len(nodes) == 6 * layers  # 72 in BERT-base
    inits = {t.name: t for t in model.graph.initializer}
    shapes = sorted({tuple(inits[n.input[1]].dims) for n in nodes})
    assert shapes == [(768, 24), (768, 96), (3072, 24)]
    assert packed_bytes(model) == layers * 4 * (4 * 768 * 24 + 3072 * 24 + 768 * 96)
    assert result.report.ok and {r.backend for r in result.report.results} == {"function", "kernel"}
    if dtype == torch.float16:
        assert float32_on_compute_path(model) == []
    else:  # the FP32 baseline of the same shapes is ~4x larger than the binary file's weights
        ratio = fp32_parameter_bytes(result.wrapper.model.config) / model.ByteSize()
        assert 3.8 < ratio < 4.2
    batches = batches_of([(1, 128), (3, 20)], 30522)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    report = verify_onnx(model, result.wrapper, batches, tol, ("function", "kernel"))
    assert report.ok, report.failure()


def test_profile_cache_key_names_the_mask_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """A profile export cached with the other attention-mask subgraph is exported again."""
    from bitmaps.runtime import artifacts
    from bitmaps.runtime.backends import ModelSource

    source = ModelSource(shape="bert-tiny")
    monkeypatch.setattr(artifacts, "MASK_GRAPH", "additive-bias")
    first = artifacts.cache_key(source, "binary", target="onnxruntime")
    assert artifacts.cache_key(source, "binary", target="onnxruntime") == first
    monkeypatch.setattr(artifacts, "MASK_GRAPH", "transformers")
    assert artifacts.cache_key(source, "binary", target="onnxruntime") != first


def test_torchlib_registry_built_once_per_opset_and_copied_per_export() -> None:
    """Exports in one process share the exporter's torchlib table (built once per opset); each
    gets its own copy, so one export's custom translations never reach the next, and the table
    is what torch builds itself."""
    registration = pytest.importorskip(
        "torch.onnx._internal.exporter._registration", reason="needs torch's dynamo exporter"
    )
    opset = ExportConfig().opset
    builder = registration.ONNXRegistry.__dict__["from_torchlib"]
    own = registration.ONNXRegistry.from_torchlib(opset)
    custom = torch.ops.bitmaps.binary_linear.default
    with onnx_export._reused_torchlib_registry():
        first = registration.ONNXRegistry.from_torchlib(opset)
        first.register_op(custom, lambda *args: None)
        second = registration.ONNXRegistry.from_torchlib(opset)
    assert registration.ONNXRegistry.__dict__["from_torchlib"] is builder
    assert second.opset_version == opset and second.functions.keys() == own.functions.keys()
    for name, metas in own.functions.items():
        assert [(m.fx_target, m.onnx_function) for m in second.functions[name]] == [
            (m.fx_target, m.onnx_function) for m in metas
        ], name
        # one table: the same entries, in lists of each export's own
        assert second.functions[name] is not first.functions[name]
        assert all(
            a is b for a, b in zip(first.functions[name], second.functions[name], strict=True)
        )
    assert second.get_decomps(custom) == [] and len(first.get_decomps(custom)) == 1


# ------------------------------------------------------------------ the suite's shared traces


def test_trace_key_tells_apart_what_a_trace_reads() -> None:
    """tests/conftest.py shares a trace between exports of the same model: its key changes with
    the opset, dtype, output, weights, seed, module attributes and tensor attributes."""
    from conftest import _trace_key

    def wrapped(dtype: str = "fp32", output: str = "logits", seed: int = 0):
        return onnx_export.prepare_model(small_student(seed=seed), dtype, output)

    key = _trace_key(wrapped(), 18)
    assert _trace_key(wrapped(), 18) == key
    others = [
        _trace_key(wrapped(), 21),
        _trace_key(wrapped("fp16"), 18),
        _trace_key(wrapped(output="hidden"), 18),
        _trace_key(wrapped(seed=1), 18),
    ]
    changed = wrapped()
    with torch.no_grad():
        changed.model.bert.embeddings.word_embeddings.weight[7, 3] += 1.0
    others.append(_trace_key(changed, 18))
    flag = wrapped()
    next(m for m in flag.modules() if isinstance(m, PackedBinaryLinear)).training = True
    others.append(_trace_key(flag, 18))
    zeros, ones = wrapped(), wrapped()  # a tensor held as a plain attribute (a traced constant)
    zeros.model.table, ones.model.table = torch.zeros(3), torch.ones(3)
    others += [_trace_key(zeros, 18), _trace_key(ones, 18)]
    assert key not in others and len(set(others)) == len(others)


@pytest.mark.parametrize(
    "cfg",
    [ExportConfig(), ExportConfig(target="onnxruntime", embeddings="int4")],
    ids=["portable", "onnxruntime-int4"],
)
def test_shared_trace_gives_the_file_a_fresh_trace_gives(cfg, monkeypatch) -> None:
    """An export from the suite's shared trace (a copy parsed from the serialized trace) is the
    file the exporter's own ir.Model gives, byte for byte: the portable target, and the
    onnxruntime target with int4 embeddings (the most passes after the trace)."""
    from bitmaps.export import pipeline

    if pipeline.to_onnx is onnx_export.to_onnx:
        pytest.skip("needs the suite's shared traces (BITMAPS_TEST_TRACE_CACHE=0 turns them off)")
    shared = export_verified(small_student(), cfg, binary=True)
    monkeypatch.setattr(pipeline, "to_onnx", onnx_export.to_onnx)
    fresh = export_verified(small_student(), cfg, binary=True)
    assert shared.report.ok and fresh.report.ok
    assert shared.model.SerializeToString() == fresh.model.SerializeToString()


def test_verification_never_passes_non_finite_outputs() -> None:
    """max(1, nan) is 1 and every comparison with NaN is false, so a NaN export "verified" with
    error 0 (stop 47's probe: a model folder holding one NaN weight)."""
    from bitmaps.export.verify import scaled_error

    good = torch.tensor([1.0, -2.0, 3.0])
    assert scaled_error(good.numpy(), good) == 0.0
    for bad in (float("nan"), float("inf")):
        both = torch.tensor([1.0, bad, 3.0])
        assert scaled_error(both.numpy(), good) == float("inf")
        assert scaled_error(good.numpy(), both) == float("inf")
        assert scaled_error(both.numpy(), both) == float("inf")


@pytest.mark.parametrize("embeddings", ["fp32", "fp16", "int8", "int4"])
def test_a_small_tied_table_is_not_folded_into_a_float_copy(embeddings) -> None:
    """The exporter constant-folds Transpose(table) of a small vocabulary (50 x 64 here) into a
    second float initializer; the decoder then read FP32 weights where the PyTorch model reads
    the quantized table, and the export was refused (int8, int4, fp16) or held the table twice."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=40)  # fmt: skip
    model = BertForMaskedLM(config).eval()
    binarize_(model, BinarizeConfig())
    model.eval()
    result = export_verified(model, ExportConfig(embeddings=embeddings), binary=True)
    assert result.report.ok
    shapes = [list(t.dims) for t in result.model.graph.initializer]
    assert [64, 50] not in shapes  # no folded transpose of the word table
    retied = [n for n in result.model.graph.node if n.name.endswith("/retied")]
    assert len(retied) == 1
