"""ONNX Runtime with our op: the onnxruntime-extensions PyOp bridge and its session rewrite.

The kernel session runs ``torch.ops.bitmaps.binary_linear`` (bitmaps._C when built, else the
reference) for every ``bitmaps::BinaryLinear`` node; these tests pin what the bridge changes:
the domain, exact float attributes, float16 through casts, and the array-returning hook.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from bitmaps.core.ops import reference_binary_linear
from bitmaps.export.onnx_function import DOMAIN, OP_TYPE
from bitmaps.runtime import onnxruntime as bort


def _run(session, x: torch.Tensor) -> np.ndarray:  # noqa: ANN001
    return session.run(None, {"X": x.numpy()})[0]


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
@pytest.mark.parametrize(
    "k,n,beta,scale,lead",
    [
        (1, 3, 0.0, 0.0, (5,)),
        (31, 1, 0.3, 0.0, (2, 3)),
        (33, 17, 0.0, 0.9, (7,)),
        (100, 64, -0.2, 0.0, (2, 9)),
        (768, 768, 0.0, 0.0, (1, 13)),
        (3072, 35, 0.05, 0.0, (4,)),
    ],
)
def test_kernel_session_matches_reference(k, n, beta, scale, lead, dtype):
    model, t = bort.single_node_model(k, n, beta, scale, dtype=dtype, rank=len(lead) + 1)
    x = torch.randn(*lead, k)
    x = x.half() if dtype == TensorProto.FLOAT16 else x
    y = _run(bort.kernel_session(model), x)
    ref = reference_binary_linear(x, t["W"], t["w_scale"], t["bias"], k, beta, scale)
    assert y.dtype == x.numpy().dtype and y.shape == tuple(ref.shape)
    err = np.abs(y.astype(np.float64) - ref.double().numpy()).max()
    assert err <= (1e-5 if dtype == TensorProto.FLOAT else 1e-3) * max(1.0, ref.abs().max().item())


def test_float_attributes_reach_the_kernel_exactly():
    # extensions formats float attributes with 6 significant digits: β = 0.123456789 would arrive
    # as 0.123457, and every x in (β, 0.123457) would take the wrong sign.
    beta = 0.123456789
    k, n = 64, 8
    model, t = bort.single_node_model(k, n, beta, 0.0)
    x = torch.full((4, k), 0.1234569)  # β < x < 0.123457 in float32
    x[:, ::2] = -1.0
    y = _run(bort.kernel_session(model), x)
    exact = reference_binary_linear(x, t["W"], t["w_scale"], t["bias"], k, beta, 0.0)
    rounded = reference_binary_linear(x, t["W"], t["w_scale"], t["bias"], k, 0.123457, 0.0)
    assert not torch.allclose(exact, rounded, atol=1e-3)  # the test can tell them apart
    np.testing.assert_allclose(y, exact.numpy(), rtol=1e-6, atol=1e-6)


def test_kernel_model_rewrites_a_copy():
    model, _ = bort.single_node_model(40, 5, 0.25, 0.5, dtype=TensorProto.FLOAT16)
    before = model.SerializeToString()
    rewritten = bort.kernel_model(model)
    assert model.SerializeToString() == before  # the caller's model is untouched
    assert not rewritten.functions  # the kernel is the only path
    ops = [(node.domain, node.op_type) for node in rewritten.graph.node]
    assert ops == [("", "Cast"), (DOMAIN, OP_TYPE), ("", "Cast")]
    node = rewritten.graph.node[1]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["act_threshold"] == b"0.25" and attrs["act_scale"] == b"0.5"
    assert attrs["in_features"] == 40


def test_kernel_session_calls_the_torch_op(monkeypatch):
    model, t = bort.single_node_model(50, 6, 0.0, 0.0)
    session = bort.kernel_session(model)
    calls = []
    real = torch.ops.bitmaps.binary_linear

    def counting(*args):  # noqa: ANN002, ANN202
        calls.append(args[4:])
        return real(*args)

    monkeypatch.setattr(torch.ops.bitmaps, "binary_linear", counting)
    _run(session, torch.randn(3, 50))
    _run(session, torch.randn(2, 50))
    assert calls == [(50, 0.0, 0.0), (50, 0.0, 0.0)]


def test_array_hook_and_default_hook_agree():
    model, _ = bort.single_node_model(70, 30, 0.1, 0.0)
    session = bort.kernel_session(model)
    x = torch.randn(5, 70)
    fast = _run(session, x)
    bort.install_array_hook(False)
    try:
        slow = _run(session, x)
    finally:
        bort.install_array_hook(True)
    assert np.array_equal(fast, slow)


def test_function_and_kernel_sessions_agree():
    model, _ = bort.single_node_model(300, 40, 0.0, 0.0, rank=3)
    x = torch.randn(2, 6, 300)
    a = _run(bort.open_session(model, "function"), x)
    b = _run(bort.open_session(model, "kernel"), x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="backend"):
        bort.open_session(model, "tensorrt")


def test_measure_custom_op_overhead_reports_each_shape():
    rows = bort.measure_custom_op_overhead(
        [(64, 32), (96, 16)], tokens=8, repeats=3, sample_s=0.005
    )
    assert [(r["k"], r["n"], r["tokens"]) for r in rows] == [(64, 32, 8), (96, 16, 8)]
    for r in rows:
        assert r["direct_ms"] > 0 and r["ort_ms"] > 0 and r["ort_default_hook_ms"] > 0
        assert r["overhead_ms"] == pytest.approx(r["ort_ms"] - r["direct_ms"])
