"""bitmaps::MultiHeadAttention, libbitmaps_ort.so's attention op (csrc/kernels/cpu_attention.h).

Parity with a float64 reference on every CPU path (head sizes with and without a 16-wide tail,
query and key lengths that differ, every broadcast form of the additive mask, none); the op and
its model-local function (bitmaps/export/onnx_function.py) give the same result; bad nodes fail
session creation, and bad run-time shapes the run, with a message naming the node.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from bitmaps.core.ort import function_session, kernel_session
from bitmaps.runtime import onnxruntime as bort
from bitmaps.runtime.onnxruntime import attention_model, packed_attention_model

MISSING = bort.library_missing()
pytestmark = pytest.mark.skipif(
    MISSING is not None, reason=f"needs libbitmaps_ort.so (make install builds it): {MISSING}"
)
NEG = np.float32(np.finfo(np.float32).min)  # what BERT's extended attention mask adds


def reference(q, k, v, bias, heads: int, scale: float) -> np.ndarray:  # noqa: ANN001
    b, s, hidden = q.shape
    t, dv = k.shape[1], v.shape[2] // heads
    qh = q.astype(np.float64).reshape(b, s, heads, -1).transpose(0, 2, 1, 3)
    kh = k.astype(np.float64).reshape(b, t, heads, -1).transpose(0, 2, 3, 1)
    vh = v.astype(np.float64).reshape(b, t, heads, dv).transpose(0, 2, 1, 3)
    scores = qh @ kh * scale
    if bias is not None:
        scores = scores + bias.astype(np.float64)
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    return (p @ vh).transpose(0, 2, 1, 3).reshape(b, s, heads * dv)


def _inputs(rng, b, s, t, heads, d, dv, bias_shape):  # noqa: ANN001, ANN202
    feed = {
        "query": rng.standard_normal((b, s, heads * d), dtype=np.float32),
        "key": rng.standard_normal((b, t, heads * d), dtype=np.float32),
        "value": rng.standard_normal((b, t, heads * dv), dtype=np.float32),
    }
    if bias_shape is not None:
        bias = rng.standard_normal(bias_shape, dtype=np.float32)
        bias[..., t // 2 :: 3] = NEG  # masked keys, as BERT's padding mask gives
        feed["bias"] = bias
    return feed


CASES = [
    # b, s, t, heads, d, dv, bias shape
    (1, 128, 128, 12, 64, 64, (1, 1, 128, 128)),  # BERT-base
    (2, 7, 7, 2, 64, 64, (2, 1, 1, 7)),  # BERT-tiny heads, a key-padding row mask
    (3, 5, 9, 3, 17, 17, (1, 3, 5, 9)),  # ragged head size, per-head bias
    (2, 33, 47, 4, 32, 20, (2, 4, 1, 47)),  # S != T, Dv != D
    (1, 3, 1, 1, 1, 1, None),  # one key, no bias
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])))
def test_native_attention_matches_reference(cpu_path, monkeypatch, case):
    monkeypatch.setenv("BITMAPS_CPU_PATH", cpu_path)  # read at session creation
    b, s, t, heads, d, dv, bias_shape = case
    scale = 1.0 / np.sqrt(d)
    session = kernel_session(attention_model(heads, float(scale), bias=bias_shape is not None))
    feed = _inputs(np.random.default_rng(sum(case[:6])), *case)
    (out,) = session.run(None, feed)
    ref = reference(feed["query"], feed["key"], feed["value"], feed.get("bias"), heads, scale)
    assert out.shape == ref.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)


def test_default_scale_is_one_over_sqrt_head_size():
    feed = _inputs(np.random.default_rng(1), 1, 6, 6, 2, 16, 16, None)
    (out,) = kernel_session(attention_model(2, scale=None, bias=False)).run(None, feed)
    ref = reference(feed["query"], feed["key"], feed["value"], None, 2, 0.25)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)


def test_native_op_and_function_agree():
    """What ONNX Runtime runs without the library (the model-local function) is the same op."""
    model = attention_model(4, 0.2)
    feed = _inputs(np.random.default_rng(2), 2, 9, 9, 4, 24, 24, (2, 1, 9, 9))
    (native,) = kernel_session(model).run(None, feed)
    (function,) = function_session(model).run(None, feed)
    np.testing.assert_allclose(native, function, rtol=0, atol=2e-6)


@pytest.mark.parametrize("threads", ["ort", "std", "serial"])
def test_thread_modes_agree(monkeypatch, threads):
    monkeypatch.setenv("BITMAPS_ORT_THREADS", threads)
    feed = _inputs(np.random.default_rng(3), 2, 20, 20, 6, 16, 16, (2, 1, 1, 20))
    (out,) = kernel_session(attention_model(6, 0.25)).run(None, feed)
    ref = reference(feed["query"], feed["key"], feed["value"], feed["bias"], 6, 0.25)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda: attention_model(0), "num_heads must be >= 1, got 0"),
        (lambda: attention_model(2, scale=float("inf")), "scale must be finite"),
        (lambda: attention_model(2, dtype=TensorProto.FLOAT16), "query must be float32"),
        (lambda: attention_model(3, hidden=(64, 64)), "not a positive multiple of num_heads=3"),
    ],
    ids=["heads", "scale", "dtype", "hidden"],
)
def test_invalid_node_fails_session_creation_naming_the_node(model, message):
    with pytest.raises(Exception, match="bitmaps::MultiHeadAttention node 'attn'") as info:
        kernel_session(model())
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.update(bias=f["bias"][:, :, :, :3]), "attention_bias must be"),
        (lambda f: f.update(key=f["key"][:, :4]), "key must be [batch, kv_len, 32]"),
    ],
    ids=["bias", "key"],
)
def test_wrong_run_time_shapes_fail_naming_the_node(change, message):
    session = kernel_session(attention_model(2))
    feed = _inputs(np.random.default_rng(4), 1, 5, 5, 2, 16, 16, (1, 1, 5, 5))
    change(feed)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as info:
        session.run(None, feed)
    assert "bitmaps::MultiHeadAttention node 'attn'" in str(info.value)
    assert message in str(info.value)


# --------------------------------------------------------------------------- packed Q, K, V

PACKED_CASES = [
    # b, s, heads, d, bias shape
    (1, 128, 12, 64, (1, 1, 128, 128)),  # BERT-base
    (2, 7, 2, 64, (2, 1, 1, 7)),  # BERT-tiny heads
    (3, 9, 3, 17, (1, 3, 9, 9)),  # ragged head size, per-head bias
    (1, 4, 1, 1, None),  # no bias
]


@pytest.mark.parametrize("case", PACKED_CASES, ids=lambda c: "x".join(map(str, c[:4])))
def test_packed_attention_matches_reference(cpu_path, monkeypatch, case):
    """bitmaps::PackedMultiHeadAttention reads Q, K and V in place from one [B, S, 3 * hidden]
    tensor (rows 3 * hidden apart): the same attention as on three separate tensors."""
    monkeypatch.setenv("BITMAPS_CPU_PATH", cpu_path)
    b, s, heads, d, bias_shape = case
    feed = _inputs(np.random.default_rng(sum(case[:4])), b, s, s, heads, d, d, bias_shape)
    qkv = np.concatenate([feed["query"], feed["key"], feed["value"]], axis=-1)
    packed = {"qkv": qkv} | ({"bias": feed["bias"]} if bias_shape else {})
    scale = 1.0 / np.sqrt(d)
    model = packed_attention_model(heads, float(scale), bias=bias_shape is not None)
    (out,) = kernel_session(model).run(None, packed)
    ref = reference(feed["query"], feed["key"], feed["value"], feed.get("bias"), heads, scale)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)
    if bias_shape is not None:  # the model-local function (Split + eager attention) agrees
        (function,) = function_session(model).run(None, packed)
        np.testing.assert_allclose(out, function, rtol=0, atol=2e-6)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda: packed_attention_model(2, hidden=64 * 3 + 2), "not a positive multiple of 3 * "),
        (lambda: packed_attention_model(0), "num_heads must be >= 1, got 0"),
    ],
    ids=["hidden", "heads"],
)
def test_invalid_packed_node_fails_session_creation_naming_the_node(model, message):
    with pytest.raises(Exception, match="bitmaps::PackedMultiHeadAttention node 'attn'") as info:
        kernel_session(model())
    assert message in str(info.value)


def test_packed_run_time_shape_not_a_multiple_fails_naming_the_node():
    session = kernel_session(packed_attention_model(2, bias=False))
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as info:
        session.run(None, {"qkv": np.zeros((1, 3, 7), np.float32)})
    assert "bitmaps::PackedMultiHeadAttention node 'attn'" in str(info.value)
    assert "qkv's last dimension 7 is not a positive multiple of 3 * num_heads=6" in str(info.value)
