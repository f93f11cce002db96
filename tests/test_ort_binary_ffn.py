"""bitmaps::BinaryFeedForward, libbitmaps_ort.so's two binary layers in one node (the FFN), and
the export pass that makes it (bitmaps/export/targets.py, ``fuse_binary_ffns``).

The native op against a reference written here from the op's definition (the first layer by
bitmaps' reference op, GELU in float64 with erfc, the second layer's input bits, the second layer
by the reference op) on every CPU path, signed and {0, 1} activations, GELU or none, thresholds
0, above 0, inside GELU's dip and below its minimum; dynamic leading dimensions. Where GELU's
float32 tail and the definition part (β₂ = 0, first-layer outputs near −5.5) the native op
follows the definition and the model-local function (float32 Erf) does not: the test that shows
the table path ran. Without a table (float16 X, a per-row scale) the node runs the two layers
one after the other, equal to the function. Bad nodes fail session creation naming the node; the
export fuses only fixed-scale FFNs, and verification catches a node whose attributes lie.
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
from test_export import small_student

from bitmaps.core import ops
from bitmaps.core.config import ExportConfig
from bitmaps.core.ort import function_session, kernel_session
from bitmaps.core.packing import pack_signs
from bitmaps.export.onnx_function import (
    BINARY_FFN_INPUTS,
    BINARY_FFN_OP_TYPE,
    binary_ffn_function,
    binary_linear_function,
)
from bitmaps.export.pipeline import export_verified
from bitmaps.export.verify import verification_batches, verify_onnx
from bitmaps.runtime import onnxruntime as bort

MISSING = bort.library_missing()
needs_library = pytest.mark.skipif(
    MISSING is not None, reason=f"needs libbitmaps_ort.so (make install builds it): {MISSING}"
)
NODE = f"bitmaps::{BINARY_FFN_OP_TYPE} node 'ffn'"


def _layers(rng: np.random.Generator, k: int, h: int, n: int, spread: float) -> dict:
    w1 = pack_signs(torch.from_numpy(rng.standard_normal((h, k)).astype(np.float32)))
    w2 = pack_signs(torch.from_numpy(rng.standard_normal((n, h)).astype(np.float32)))
    return {
        "W1": ops.reference_prepack_weights(w1, k).numpy(),
        "W1_rows": w1.numpy(),
        "w_scale1": (rng.uniform(-1, 1, h) * spread).astype(np.float32),
        "bias1": rng.uniform(-1, 1, h).astype(np.float32),
        "W2": w2.numpy(),
        "w_scale2": (rng.uniform(0.5, 1.5, n) * 0.05).astype(np.float32),
        "bias2": rng.uniform(-1, 1, n).astype(np.float32),
    }


def ffn_model(
    layers: dict, attrs: dict, dtype: int = TensorProto.FLOAT, inputs: int = 7,
    shapes: dict[str, list[int]] | None = None,
) -> onnx.ModelProto:  # fmt: skip
    """One BinaryFeedForward node named 'ffn' (with its function and BinaryLinear's), X [B, S, K]."""
    inits = []
    for name in BINARY_FFN_INPUTS[1:inputs]:
        value = layers[name]
        if shapes and name in shapes:
            value = np.zeros(shapes[name], value.dtype)
        inits.append(numpy_helper.from_array(value, name))
    node = helper.make_node(
        BINARY_FFN_OP_TYPE, list(BINARY_FFN_INPUTS[:inputs]), ["Y"], domain="bitmaps", name="ffn",
        **attrs,
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "ffn", [helper.make_tensor_value_info("X", dtype, ["B", "S", attrs["in_features"]])],
        [helper.make_tensor_value_info("Y", dtype, None)], initializer=inits,
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("bitmaps", 1)]
    functions = [binary_ffn_function(20), binary_linear_function(20, panels=True, activation=True)]
    return helper.make_model(graph, opset_imports=opsets, functions=functions, ir_version=10)


def _attrs(k: int, h: int, n: int, **over: float) -> dict:
    attrs = {
        "in_features": k, "hidden_features": h, "out_features": n, "act_threshold": -0.2,
        "act_scale": 0.37, "act_unsigned": 0, "activation": 1, "hidden_act_threshold": 0.0,
        "hidden_act_scale": 0.61, "hidden_act_unsigned": 0,
    }  # fmt: skip
    attrs.update(over)
    return attrs


def reference(x: np.ndarray, layers: dict, attrs: dict) -> np.ndarray:
    """The op's definition: the first layer (bitmaps' reference op), GELU in float64 with erfc
    (0 where a float32 GELU is),
    the second layer's input bits (sign of GELU(y) − β₂), the second layer."""
    y = ops.reference_binary_linear(
        torch.from_numpy(x), torch.from_numpy(layers["W1_rows"]),
        torch.from_numpy(layers["w_scale1"]), torch.from_numpy(layers["bias1"]),
        attrs["in_features"], attrs["act_threshold"], attrs["act_scale"], attrs["act_unsigned"],
    ).double()  # fmt: skip
    v = y
    if attrs["activation"]:  # 0 where a float32 GELU is: 1 + erf rounds to 0 (erfc < 2^-25)
        e = torch.special.erfc(-y / math.sqrt(2.0))
        v = torch.where(e < 2.0**-25, torch.zeros_like(y), 0.5 * y * e)
    beta = float(np.float32(attrs["hidden_act_threshold"]))
    unsigned = attrs["hidden_act_unsigned"]
    bits = v - beta > 0 if unsigned else v - beta < 0
    on, off = (beta + 1.0, beta - 1.0) if unsigned else (beta - 1.0, beta + 1.0)
    h = torch.where(bits, torch.tensor(on), torch.tensor(off)).float()
    return ops.reference_binary_linear(
        h, torch.from_numpy(layers["W2"]), torch.from_numpy(layers["w_scale2"]),
        torch.from_numpy(layers["bias2"]), attrs["hidden_features"], beta,
        attrs["hidden_act_scale"], unsigned,
    ).numpy()  # fmt: skip


CASES = [  # (K, H, N, overrides)
    (33, 100, 17, {}),
    (100, 67, 33, {"act_unsigned": 1, "act_threshold": 0.25, "hidden_act_threshold": -0.1}),
    (31, 40, 20, {"hidden_act_unsigned": 1, "hidden_act_threshold": -0.1}),
    (64, 96, 16, {"activation": 0, "hidden_act_threshold": 0.2}),
    (32, 48, 5, {"hidden_act_threshold": 0.3}),
    (32, 33, 5, {"hidden_act_threshold": -0.2}),  # below GELU's minimum: no bit set
]


@needs_library
@pytest.mark.parametrize("case", range(len(CASES)))
def test_native_op_matches_its_definition_on_every_path(cpu_path, case, monkeypatch):
    k, h, n, over = CASES[case]
    monkeypatch.setenv("BITMAPS_CPU_PATH", cpu_path)  # read at session creation
    rng = np.random.default_rng(case)
    layers = _layers(rng, k, h, n, spread=6.0 / (0.37 * math.sqrt(k)))
    attrs = _attrs(k, h, n, **over)
    model = ffn_model(layers, attrs)
    for shape in ((1, 1), (2, 7), (3, 37)):
        x = rng.standard_normal((*shape, k)).astype(np.float32)
        want = reference(x, layers, attrs)
        got = kernel_session(model, threads=2).run(None, {"X": x})[0]
        assert got.shape == (*shape, n)
        np.testing.assert_array_equal(got, want)


FRESH_PROCESS_RUN = """
import sys

import numpy as np
import onnx

from bitmaps.core.ort import kernel_session

linear, ffn, x_path, y_path = sys.argv[1:5]
x = np.load(x_path)
kernel_session(onnx.load(linear), threads=1).run(None, {"X": x[0]})
np.save(y_path, kernel_session(onnx.load(ffn), threads=1).run(None, {"X": x})[0])
"""


@needs_library
def test_gemm_calls_of_different_ops_share_no_scratch(tmp_path):
    """A fresh process runs one BinaryLinear node, then a BinaryFeedForward node on as many rows,
    on one thread: the FFN's float GEMM must not take the split rows the AVX2 path kept from the
    linear's GEMM for its next tile (each per-op counter once numbered both calls 1)."""
    k, h, n = 33, 100, 17
    rng = np.random.default_rng(7)
    layers = _layers(rng, k, h, n, spread=6.0 / (0.37 * math.sqrt(k)))
    attrs = _attrs(k, h, n)
    x = rng.standard_normal((1, 5, k)).astype(np.float32)
    linear, _ = bort.single_node_model(k, 24, act_scale=0.37, panels=True)
    onnx.save(linear, tmp_path / "linear.onnx")
    onnx.save(ffn_model(layers, attrs), tmp_path / "ffn.onnx")
    np.save(tmp_path / "x.npy", x)
    args = [str(tmp_path / f) for f in ("linear.onnx", "ffn.onnx", "x.npy", "y.npy")]
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_RUN, *args], capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), reference(x, layers, attrs))


@needs_library
def test_native_op_takes_float32_gelus_zero_in_its_far_tail():
    """β₂ = 0 and first-layer outputs in GELU's far tail (y < −5.7), where a float32 GELU (torch's,
    ONNX Runtime's: the model's) is 0, and just right of it (−5.2 < y < 0), where it is negative.
    The table took GELU's true sign in the tail (bit 1 where the model has 0): every such unit
    flipped. Now the native op, its function and the definition agree."""
    k, h, n = 32, 64, 8
    rng = np.random.default_rng(7)
    layers = _layers(rng, k, h, n, spread=0.0)
    layers["w_scale1"][:] = 1e-4  # y = bias1 + tiny
    layers["bias1"][:] = np.concatenate(
        [np.linspace(-40.0, -5.7, h // 2), np.linspace(-5.2, -0.01, h - h // 2)]
    ).astype(np.float32)
    attrs = _attrs(k, h, n)
    model = ffn_model(layers, attrs)
    x = rng.standard_normal((2, 5, k)).astype(np.float32)
    want = reference(x, layers, attrs)
    native = kernel_session(model).run(None, {"X": x})[0]
    function = function_session(model).run(None, {"X": x})[0]
    np.testing.assert_array_equal(native, want)
    np.testing.assert_allclose(function, want, rtol=1e-5, atol=1e-5)


@needs_library
@pytest.mark.parametrize(
    "over, dtype",
    [({}, TensorProto.FLOAT16), ({"act_scale": 0.0}, TensorProto.FLOAT),
     ({"hidden_act_scale": 0.0}, TensorProto.FLOAT)],
)  # fmt: skip
def test_without_a_table_the_node_runs_both_layers_like_its_function(over, dtype):
    """Float16 X or a per-row mean scale: no table; the node is the two layers in turn."""
    k, h, n = 100, 80, 24
    rng = np.random.default_rng(3)
    layers = _layers(rng, k, h, n, spread=0.05)
    attrs = _attrs(k, h, n, hidden_act_threshold=0.1, **over)
    model = ffn_model(layers, attrs, dtype=dtype)
    np_type = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    x = rng.standard_normal((2, 9, k)).astype(np_type)
    native = kernel_session(model).run(None, {"X": x})[0]
    function = function_session(model).run(None, {"X": x})[0]
    assert native.dtype == np_type and native.shape == (2, 9, n)
    tol = 2e-2 if dtype == TensorProto.FLOAT16 else 1e-5
    np.testing.assert_allclose(native.astype(np.float32), function.astype(np.float32),
                               rtol=tol, atol=tol)  # fmt: skip


@needs_library
@pytest.mark.parametrize(
    "change, message",
    [
        ({"shapes": {"W1": [7, 4, 16]}}, "W1 (packed weight signs, panel layout) must have shape"),
        ({"attrs": {"hidden_features": 90}}, "W1 (packed weight signs, panel layout) must have "
         "shape [6, 2, 16] ([ceil(hidden_features/16), ceil(in_features/32), 16] for "
         "in_features=33, hidden_features=90)"),
        ({"attrs": {"hidden_act_scale": -1.0}}, "hidden_act_scale must be >= 0"),
        ({"attrs": {"hidden_act_unsigned": 2}}, "hidden_act_unsigned must be 0"),
        ({"attrs": {"activation": 3}}, "activation must be 0 (none) or 1 (GELU"),
        ({"shapes": {"bias2": [5]}}, "bias2 must have shape [17] (out_features)"),
        # ONNX Runtime's own schema check (all seven inputs are required), naming the node too
        ({"inputs": 6}, "Node(ffn) with schema(bitmaps::BinaryFeedForward:1) has input size 6"),
    ],
)  # fmt: skip
def test_bad_nodes_fail_session_creation_naming_the_node(change, message):
    k, h, n = 33, 100, 17
    layers = _layers(np.random.default_rng(0), k, h, n, spread=0.1)
    attrs = _attrs(k, h, n, **change.get("attrs", {}))
    model = ffn_model(layers, attrs, inputs=change.get("inputs", 7), shapes=change.get("shapes"))
    with pytest.raises(Exception) as info:
        kernel_session(model)
    text = str(info.value)
    assert message in text and ("ffn" in text if "inputs" in change else NODE in text), text


# --------------------------------------------------------------------------- the export pass


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node if n.domain == "bitmaps"]


@pytest.fixture(scope="module")
def elastic_export():
    """The elastic small student (fixed activation scales) exported for ONNX Runtime, once."""
    return export_verified(small_student(), ExportConfig(target="onnxruntime"), binary=True)


def test_export_fuses_only_feed_forwards_with_fixed_scales(elastic_export):
    """An elastic student (fixed activation scales) gets one BinaryFeedForward per layer, verified
    against PyTorch on both backends; a default student (per-row mean scales) keeps two nodes."""
    elastic = elastic_export
    assert elastic.report.ok and _ops(elastic.model).count(BINARY_FFN_OP_TYPE) == 2
    assert {f.name for f in elastic.model.functions} >= {BINARY_FFN_OP_TYPE, "BinaryLinear"}
    plain = export_verified(small_student("ste"), ExportConfig(target="onnxruntime"), binary=True)
    assert BINARY_FFN_OP_TYPE not in _ops(plain.model)
    portable = export_verified(small_student(), ExportConfig(target="portable"), binary=True)
    assert BINARY_FFN_OP_TYPE not in _ops(portable.model)


def test_verification_catches_a_feed_forward_node_that_lies(elastic_export):
    """The node check compares the fused node with its two PyTorch layers: a node whose hidden
    threshold was changed after export (in a copy) fails it, naming the node."""
    result = elastic_export
    model = onnx.ModelProto()
    model.CopyFrom(result.model)
    node = next(n for n in model.graph.node if n.op_type == BINARY_FFN_OP_TYPE)
    for a in node.attribute:
        if a.name == "hidden_act_threshold":
            a.f += 0.5
    batches = verification_batches(result.wrapper.model.config.vocab_size, None)
    report = verify_onnx(model, result.wrapper, batches, 1e-4, backends=("function",))
    assert not report.ok and node.name in report.failure()
