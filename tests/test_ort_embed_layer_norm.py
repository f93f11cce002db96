"""bitmaps::EmbedLayerNormalization, libbitmaps_ort.so's int4 embedding lookups + LayerNorm
(csrc/kernels/cpu_embed.h).

Parity with a reference written here (float32 dequantization and sums in the graph's order, float64
LayerNorm) on every CPU path: int64 and int32 indices, negative indices, position ids broadcast
over the batch, blocks from 2 values to a whole row. The op and its model-local function (ONNX
Runtime's GatherBlockQuantized, Add, LayerNormalization) agree; bad nodes fail session creation, and
bad run-time indices and shapes the run, with a message naming the node.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitmaps.core.ort import function_session, kernel_session
from bitmaps.export.onnx_function import (
    EMBED_LAYER_NORM_INPUTS,
    EMBED_LAYER_NORM_OP_TYPE,
    MS_DOMAIN,
    embed_layer_norm_function,
)
from bitmaps.runtime import onnxruntime as bort

MISSING = bort.library_missing()
pytestmark = pytest.mark.skipif(
    MISSING is not None, reason=f"needs libbitmaps_ort.so (make install builds it): {MISSING}"
)
VOCAB = (50, 2, 20)  # word, token type, position
NODE = f"bitmaps::{EMBED_LAYER_NORM_OP_TYPE} node 'embed'"


def _tables(rng, hidden: int, block: int) -> dict[str, np.ndarray]:  # noqa: ANN001
    tables = {
        "gamma": rng.standard_normal(hidden).astype(np.float32),
        "beta": rng.standard_normal(hidden).astype(np.float32),
    }
    for i, rows in enumerate(VOCAB):
        tables[f"table_{i}"] = rng.integers(0, 256, (rows, hidden // 2)).astype(np.uint8)
        tables[f"scale_{i}"] = (rng.random((rows, hidden // block)) * 0.2).astype(np.float32)
    return tables


def embed_model(
    tables: dict[str, np.ndarray], block: int, epsilon: float = 1e-12,
    ids_type: int = TensorProto.INT64, overrides: dict[str, onnx.TensorProto] | None = None,
    position_shape: list | None = (1, "S"),
) -> onnx.ModelProto:  # fmt: skip
    """One EmbedLayerNormalization node (with its function): ids_0 and ids_1 [B, S], ids_2
    ``position_shape`` (None: any rank) as graph inputs, the tables as initializers
    (``overrides`` replaces some)."""
    inits = {k: numpy_helper.from_array(v, k) for k, v in tables.items()}
    inits.update(overrides or {})
    ids = [
        helper.make_tensor_value_info("ids_0", ids_type, ["B", "S"]),
        helper.make_tensor_value_info("ids_1", ids_type, ["B", "S"]),
        helper.make_tensor_value_info(
            "ids_2", ids_type, None if position_shape is None else list(position_shape)
        ),
    ]
    node = helper.make_node(
        EMBED_LAYER_NORM_OP_TYPE, list(EMBED_LAYER_NORM_INPUTS), ["out"], domain="bitmaps",
        name="embed", epsilon=epsilon, block_size=block,
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "embed", ids, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=list(inits.values()),
    )  # fmt: skip
    opsets = [helper.make_opsetid(d, v) for d, v in (("", 20), ("bitmaps", 1), (MS_DOMAIN, 1))]
    return helper.make_model(
        graph, opset_imports=opsets, functions=[embed_layer_norm_function(20)], ir_version=10
    )


def _ids(rng, batch: int, seq: int, dtype=np.int64) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Indices over [-rows, rows): negative ones count from the end, as in Gather."""
    shapes = ((batch, seq), (batch, seq), (1, seq))
    return {
        f"ids_{i}": rng.integers(-rows, rows, shape).astype(dtype)
        for i, (rows, shape) in enumerate(zip(VOCAB, shapes, strict=True))
    }


def reference(tables: dict, feed: dict, block: int, eps: float) -> np.ndarray:
    def lookup(i: int) -> np.ndarray:
        data, scale = tables[f"table_{i}"], tables[f"scale_{i}"]
        q = np.stack((data & 15, data >> 4), axis=-1).reshape(data.shape[0], -1).astype(np.int32)
        values = (q - 8).astype(np.float32) * np.repeat(scale, block, axis=1)  # float32 products
        return values[feed[f"ids_{i}"]]  # negative indices count from the end

    total = (lookup(0) + lookup(1)) + lookup(2)  # float32, the graph's order, [1, S] broadcast
    s = total.astype(np.float64)
    mean = s.mean(-1, keepdims=True)
    var = ((s - mean) ** 2).mean(-1, keepdims=True)
    return (s - mean) / np.sqrt(var + eps) * tables["gamma"] + tables["beta"]


@pytest.mark.parametrize(("hidden", "block"), [(2, 2), (34, 2), (96, 32), (768, 64)])
def test_native_embed_layer_norm_matches_reference(cpu_path, monkeypatch, hidden, block):
    monkeypatch.setenv("BITMAPS_CPU_PATH", cpu_path)  # read at session creation
    rng = np.random.default_rng(hidden)
    tables = _tables(rng, hidden, block)
    for ids_type, dtype in ((TensorProto.INT64, np.int64), (TensorProto.INT32, np.int32)):
        session = kernel_session(embed_model(tables, block, ids_type=ids_type))
        for batch, seq in ((3, 7), (1, 1), (2, 128)):  # batch and sequence are dynamic
            feed = _ids(rng, batch, seq, dtype)
            (out,) = session.run(None, feed)
            ref = reference(tables, feed, block, 1e-12)
            assert out.shape == (batch, seq, hidden) and out.dtype == np.float32
            np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


def test_native_op_and_function_agree():
    rng = np.random.default_rng(0)
    tables = _tables(rng, 96, 32)
    model = embed_model(tables, 32)
    feed = _ids(rng, 3, 9)
    (native,) = kernel_session(model).run(None, feed)
    (function,) = function_session(model).run(None, feed)
    np.testing.assert_allclose(native, function, rtol=0, atol=1e-5)


def _bad_scale() -> dict[str, onnx.TensorProto]:
    return {"scale_1": numpy_helper.from_array(np.ones((2, 3), np.float32), "scale_1")}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block": 3}, "block_size must be even and >= 2, got 3"),
        ({"epsilon": 0.0}, "epsilon must be > 0"),
        ({"ids_type": TensorProto.FLOAT}, "ids_0 must be int64 or int32, got float32"),
        ({"overrides": {"table_2": numpy_helper.from_array(np.ones((20, 8), np.float32), "table_2")}},
         "table_2 must be uint8"),
        ({"overrides": {"gamma": numpy_helper.from_array(np.ones((2, 8), np.float32), "gamma")}},
         "gamma must have shape [hidden]"),
    ],
    ids=["block", "epsilon", "ids-dtype", "table-dtype", "gamma-rank"],
)  # fmt: skip
def test_invalid_node_fails_session_creation_naming_the_node(kwargs, message):
    tables = _tables(np.random.default_rng(1), 16, 8)
    with pytest.raises(Exception, match=NODE) as info:
        kernel_session(embed_model(tables, kwargs.pop("block", 8), **kwargs))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f["ids_0"].__setitem__((1, 2), 50), "ids_0 holds 50 at position 6, outside [-50, 50)"),
        (lambda f: f["ids_2"].__setitem__((0, 0), -21), "ids_2 holds -21 at position 0, outside [-20, 20)"),
        (lambda f: f.update(ids_1=f["ids_1"][:1, :3]), "ids_1 [1, 3] does not broadcast"),
        (lambda f: f.update(ids_2=f["ids_2"][0]), "ids_2 must have ids_0's rank 2"),
    ],
    ids=["index-high", "index-low", "broadcast", "rank"],
)  # fmt: skip
def test_bad_run_time_indices_fail_naming_the_node(change, message):
    rng = np.random.default_rng(2)
    session = kernel_session(embed_model(_tables(rng, 16, 8), 8, position_shape=None))
    feed = {k: v % rows for (k, v), rows in zip(_ids(rng, 2, 4).items(), VOCAB, strict=True)}
    change(feed)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as info:
        session.run(None, feed)
    assert NODE in str(info.value)
    assert message in str(info.value)


def test_a_scalar_gamma_fails_the_run_not_reads_past_it():
    rng = np.random.default_rng(4)
    scalar = {"gamma": numpy_helper.from_array(np.array(1.0, np.float32), "gamma")}
    session = kernel_session(embed_model(_tables(rng, 16, 8), 8, overrides=scalar))
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as info:
        session.run(None, _ids(rng, 1, 4))
    assert NODE in str(info.value)
    assert "gamma must have shape [hidden], got []" in str(info.value)


def _array(name: str, value: np.ndarray) -> dict[str, onnx.TensorProto]:
    return {name: numpy_helper.from_array(value, name)}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (_bad_scale(), "table_1 [2, 8] and scale_1 [2, 3] must be [rows, 8] and [rows, 2]"),
        (_array("scale_0", np.ones((49, 2), np.float32)), "table_0 [50, 8] and scale_0 [49, 2]"),
        (_array("table_2", np.ones((20, 4), np.uint8)), "table_2 [20, 4] and scale_2 [20, 2]"),
        (_array("table_1", np.ones((0, 8), np.uint8)) | _array("scale_1", np.ones((0, 2),
         np.float32)), "with rows >= 1"),
        (_array("beta", np.ones(15, np.float32)), "beta must have gamma's shape [16], got [15]"),
        (_array("gamma", np.ones(0, np.float32)) | _array("beta", np.ones(0, np.float32)),
         "hidden size 0 (gamma's) must be even, > 0"),
        (_array("gamma", np.ones(12, np.float32)) | _array("beta", np.ones(12, np.float32)),
         "hidden size 12 (gamma's) must be even, > 0 and a multiple of block_size 8"),
    ],
    ids=["scale-cols", "scale-rows", "table-narrow", "no-rows", "beta", "hidden-0", "block"],
)  # fmt: skip
def test_sizes_known_before_run_time_fail_session_creation(overrides, message):
    # stop 48's probe: these initializers' shapes were checked only by the first run
    tables = _tables(np.random.default_rng(3), 16, 8)
    with pytest.raises(Exception, match=NODE) as info:
        kernel_session(embed_model(tables, 8, overrides=overrides))
    assert message in str(info.value)


def test_tables_that_do_not_fit_the_hidden_size_fail_the_run():
    # a scale given at run time (a graph input, its shape symbolic): checked by the run
    rng = np.random.default_rng(3)
    model = embed_model(_tables(rng, 16, 8), 8)
    kept = [init for init in model.graph.initializer if init.name != "scale_1"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    model.graph.input.append(
        helper.make_tensor_value_info("scale_1", TensorProto.FLOAT, ["r", "c"])
    )
    session = kernel_session(model)
    feed = _ids(rng, 1, 4) | {"scale_1": np.ones((2, 3), np.float32)}
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as info:
        session.run(None, feed)
    assert NODE in str(info.value)
    assert "table_1 [2, 8] and scale_1 [2, 3] must be [rows, 8] and [rows, 2]" in str(info.value)
