"""bitmaps.runtime.onnxruntime: the kernel session (libbitmaps_ort.so registered) and the function
session over the same file, their agreement, and the per-call measurement. The library itself is
tested in tests/test_ort_native.py.
"""

from __future__ import annotations

import math
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from bitmaps.core.errors import BitmapsError
from bitmaps.core.ops import reference_binary_linear
from bitmaps.runtime import onnxruntime as bort

MISSING = bort.library_missing()
needs_library = pytest.mark.skipif(
    MISSING is not None, reason=f"needs libbitmaps_ort.so (make install builds it): {MISSING}"
)


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
@needs_library
def test_kernel_session_matches_reference(k, n, beta, scale, lead, dtype):
    model, t = bort.single_node_model(k, n, beta, scale, dtype=dtype, rank=len(lead) + 1)
    x = torch.randn(*lead, k)
    x = x.half() if dtype == TensorProto.FLOAT16 else x
    y = _run(bort.kernel_session(model), x)
    ref = reference_binary_linear(x, t["W"], t["w_scale"], t["bias"], k, beta, scale)
    assert y.dtype == x.numpy().dtype and y.shape == tuple(ref.shape)
    err = np.abs(y.astype(np.float64) - ref.double().numpy()).max()
    assert err <= (1e-5 if dtype == TensorProto.FLOAT else 1e-3) * max(1.0, ref.abs().max().item())


@needs_library
def test_float_attributes_reach_the_kernel_exactly():
    # A float attribute rounded on its way (the former Python bridge printed 6 significant digits:
    # β = 0.123456789 arrived as 0.123457) gives every x in (β, 0.123457) the wrong sign.
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


@needs_library
def test_kernel_session_opens_the_file_as_it_is(tmp_path):
    model, t = bort.single_node_model(40, 5, 0.25, 0.5, dtype=TensorProto.FLOAT16)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    before = path.read_bytes()
    x = torch.randn(3, 40).half()
    y = _run(bort.kernel_session(path), x)
    assert path.read_bytes() == before
    ref = reference_binary_linear(x, t["W"], t["w_scale"], t["bias"], 40, 0.25, 0.5)
    np.testing.assert_allclose(y.astype(np.float32), ref.float().numpy(), rtol=2e-3, atol=2e-3)


@needs_library
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_unsigned_activations_in_the_kernel_session(dtype):
    model, t = bort.single_node_model(100, 24, 0.2, 0.0, dtype=dtype, act_unsigned=1)
    x = torch.randn(6, 100)
    x = x.half() if dtype == TensorProto.FLOAT16 else x
    y = _run(bort.kernel_session(model), x)
    ref = reference_binary_linear(x, t["W"], t["w_scale"], t["bias"], 100, 0.2, 0.0, 1)
    signed = reference_binary_linear(x, t["W"], t["w_scale"], t["bias"], 100, 0.2, 0.0, 0)
    assert not torch.allclose(ref.float(), signed.float(), atol=1e-2)  # the attribute matters
    tol = 1e-5 if dtype == TensorProto.FLOAT else 2e-3
    np.testing.assert_allclose(y.astype(np.float32), ref.float().numpy(), rtol=tol, atol=tol)


def test_missing_library_is_a_bitmaps_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BITMAPS_ORT_LIBRARY", str(tmp_path / "absent.so"))
    assert "no such file" in bort.library_missing()
    assert "no such file" in bort.native_problem()
    model, _ = bort.single_node_model(8, 2)
    with pytest.raises(BitmapsError, match="no such file"):
        bort.kernel_session(model)


@needs_library
def test_function_and_kernel_sessions_agree():
    model, _ = bort.single_node_model(300, 40, 0.0, 0.0, rank=3)
    x = torch.randn(2, 6, 300)
    a = _run(bort.open_session(model, "function"), x)
    b = _run(bort.open_session(model, "kernel"), x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="backend"):
        bort.open_session(model, "tensorrt")


@needs_library
def test_measure_custom_op_overhead_reports_each_shape():
    rows = bort.measure_custom_op_overhead(
        [(64, 32), (96, 16)], tokens=8, repeats=3, sample_s=0.005
    )
    assert [(r["k"], r["n"], r["tokens"]) for r in rows] == [(64, 32, 8), (96, 16, 8)]
    for r in rows:
        for key in ("direct_ms", "prepacked_ms", "ort_ms", "ort_fp32_ms"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bort.single_node_model(0, 16), "k must be an integer >= 1, got 0"),
        (lambda: bort.single_node_model(-5, 16), "k must be an integer >= 1, got -5"),
        (lambda: bort.single_node_model(64, 0), "n must be an integer >= 1, got 0"),
        (lambda: bort.single_node_model(64, 8, activation=2), "must be 0 or 1"),
        (lambda: bort.measure_attention([(1, 4, 8, 0)]), "heads must be an integer >= 1"),
        (lambda: bort.measure_attention([(1, 4, 10, 3)]), "hidden 10 is not a multiple of heads 3"),
        (lambda: bort.measure_skip_layer_norm([(1, 4, 0)]), "hidden must be an integer >= 1"),
        (lambda: bort.measure_custom_op_overhead([(64, 8)], 4, repeats=0), "repeats must be"),
        (lambda: bort.measure_gelu_epilogue([(4, 64, 8)], threads=-1), "threads must be"),
        (lambda: bort.measure_gelu_epilogue([(4, 64, 8)], sample_s=float("nan")), "sample_s"),
    ],
)  # fmt: skip
def test_python_entry_points_refuse_bad_arguments(call, message):
    # stop 48's probe: these built invalid models, or raised ZeroDivisionError, StatisticsError
    # or ONNX Runtime's own errors
    with pytest.raises(BitmapsError, match=re.escape(message)):
        call()
