"""bitmaps::SkipLayerNormalization, libbitmaps_ort.so's residual add + LayerNorm
(csrc/kernels/cpu_layer_norm.h).

Parity with a float64 reference on every CPU path (widths with and without a 16-wide tail, with and
without beta, dynamic leading dimensions); the op and its model-local function agree; bad nodes fail
session creation, and bad run-time shapes the run, with a message naming the node.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from bitmaps.core.ort import function_session, kernel_session
from bitmaps.runtime import onnxruntime as bort
from bitmaps.runtime.onnxruntime import skip_layer_norm_model

MISSING = bort.library_missing()
pytestmark = pytest.mark.skipif(
    MISSING is not None, reason=f"needs libbitmaps_ort.so (make install builds it): {MISSING}"
)


def reference(x, skip, gamma, beta, eps: float) -> np.ndarray:  # noqa: ANN001
    s = x.astype(np.float64) + skip
    mean = s.mean(-1, keepdims=True)
    var = ((s - mean) ** 2).mean(-1, keepdims=True)
    y = (s - mean) / np.sqrt(var + eps) * gamma
    return y + beta if beta is not None else y


def _feed(rng, lead: tuple[int, ...], n: int, beta: bool) -> dict:  # noqa: ANN001
    feed = {
        "input": rng.standard_normal((*lead, n), dtype=np.float32) * 3 + 1,
        "skip": rng.standard_normal((*lead, n), dtype=np.float32),
        "gamma": rng.standard_normal(n, dtype=np.float32),
    }
    if beta:
        feed["beta"] = rng.standard_normal(n, dtype=np.float32)
    return feed


@pytest.mark.parametrize("beta", [True, False])
@pytest.mark.parametrize("n", [1, 17, 100, 768])
def test_native_skip_layer_norm_matches_reference(cpu_path, monkeypatch, n, beta):
    monkeypatch.setenv("BITMAPS_CPU_PATH", cpu_path)  # read at session creation
    session = kernel_session(skip_layer_norm_model(epsilon=1e-5, beta=beta))
    rng = np.random.default_rng(n)
    for lead in ((2, 7), (1, 1), (3, 128)):  # batch and sequence are dynamic
        feed = _feed(rng, lead, n, beta)
        (out,) = session.run(None, feed)
        ref = reference(feed["input"], feed["skip"], feed["gamma"], feed.get("beta"), 1e-5)
        assert out.shape == ref.shape and out.dtype == np.float32
        # n = 1: the row is its own mean, so the result is beta (or 0) exactly
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


def test_native_op_and_function_agree():
    model = skip_layer_norm_model(epsilon=1e-12)
    feed = _feed(np.random.default_rng(0), (2, 9), 96, True)
    (native,) = kernel_session(model).run(None, feed)
    (function,) = function_session(model).run(None, feed)
    np.testing.assert_allclose(native, function, rtol=0, atol=1e-5)


def test_default_epsilon_is_onnx_layer_norms():
    feed = _feed(np.random.default_rng(1), (1, 4), 8, True)
    feed["input"] = np.zeros_like(feed["input"])
    feed["skip"] = np.zeros_like(feed["skip"])  # var 0: the result is beta + 0 * (1/sqrt(eps))
    (out,) = kernel_session(skip_layer_norm_model(epsilon=None)).run(None, feed)
    np.testing.assert_allclose(out, np.broadcast_to(feed["beta"], out.shape), atol=0)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda: skip_layer_norm_model(epsilon=0.0), "epsilon must be > 0"),
        (lambda: skip_layer_norm_model(dtype=TensorProto.FLOAT16), "input must be float32"),
    ],
    ids=["epsilon", "dtype"],
)
def test_invalid_node_fails_session_creation_naming_the_node(model, message):
    with pytest.raises(Exception, match="bitmaps::SkipLayerNormalization node 'norm'") as info:
        kernel_session(model())
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.update(skip=f["skip"][:, :3]), "skip must have the input's shape"),
        (lambda f: f.update(gamma=f["gamma"][:5]), "gamma must have last dimension 8"),
    ],
    ids=["skip", "gamma"],
)
def test_wrong_run_time_shapes_fail_naming_the_node(change, message):
    session = kernel_session(skip_layer_norm_model())
    feed = _feed(np.random.default_rng(2), (1, 4), 8, True)
    change(feed)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as info:
        session.run(None, feed)
    assert "bitmaps::SkipLayerNormalization node 'norm'" in str(info.value)
    assert message in str(info.value)


def test_a_scalar_gamma_fails_the_run_not_reads_past_it():
    model = skip_layer_norm_model()
    gamma = next(i for i in model.graph.input if i.name == "gamma")
    gamma.type.tensor_type.ClearField("shape")  # any rank: ONNX Runtime lets a scalar through
    session = kernel_session(model)
    feed = _feed(np.random.default_rng(3), (1, 4), 8, True)
    feed["gamma"] = np.array(1.0, np.float32)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as info:
        session.run(None, feed)
    assert "bitmaps::SkipLayerNormalization node 'norm'" in str(info.value)
    assert "gamma must have shape [hidden], got []" in str(info.value)
