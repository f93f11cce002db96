"""ONNX Runtime on CPU: exported bitmaps models through the local function or through our kernel.

Two sessions over the same file:

- :func:`function_session` — plain onnxruntime. Each ``bitmaps::BinaryLinear`` node runs through
  the model-local function (standard ops: unpack, sign, MatMul); needs nothing from bitmaps.
- :func:`kernel_session` — the node runs ``torch.ops.bitmaps.binary_linear`` (the compiled
  ``bitmaps._C`` CPU kernel when built, else the reference) as an onnxruntime-extensions Python
  custom op. ONNX Runtime's C headers are not on the registries, so a compiled custom-op library
  cannot be built here; extensions' PyOp bridge is the supported way to call Python from a session.

What the PyOp bridge does and what we do about it (onnxruntime-extensions 0.15, measured):

- Domain: a PyOp registered as ``op_type="bitmaps::BinaryLinear"`` lands in a custom-op domain
  ``bitmaps`` (the text before ``::``; the default would be ``ai.onnx.contrib``), so the node's
  domain is kept. A registered kernel takes precedence over a model-local function of the same
  name; the session copy drops the function anyway, so the kernel is the only possible path.
- Float attributes reach Python through ``std::stringstream`` with 6 significant digits
  (β = 0.123456789 arrives as 0.123457). The session copy re-encodes ``act_threshold`` and
  ``act_scale`` as string attributes holding ``repr()`` of the exact float32 value.
- float16 tensors are refused by the bridge (``Type float16 not supported by python customops
  api``, raised as a C++ exception that aborts the process). For an FP16 model the session copy
  wraps each node in Cast(X → float32) / Cast(Y → float16): the op computes in float32 anyway
  (DESIGN.md) and rounds once to float16 at the end, so the result is the same.
- Inputs arrive as fresh numpy arrays (one memcpy from ONNX Runtime each); ``torch.from_numpy``
  wraps them without copying. Outputs: extensions' default hook returns ``ndarray.tolist()``
  (a Python float per element); :func:`install_array_hook` replaces it, process-wide, by a hook
  that returns the array itself (one memcpy back). ``benchmarks/bench_ort_custom_op.py`` measures
  both against calling the torch op directly.

All rewriting happens in an in-memory copy used by that session only; the file is never changed.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

import bitmaps.core.ops  # noqa: F401  (registers torch.ops.bitmaps)
from bitmaps.export.onnx_function import DOMAIN, OP_TYPE

STRING_ATTRIBUTES = ("act_threshold", "act_scale")
_PYOP_REGISTERED = False


def session_options(threads: int | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: fp16 constant-folding notices are not actionable
    if threads:
        so.intra_op_num_threads = threads
    return so


def _load(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def function_session(
    model: onnx.ModelProto | str | os.PathLike, threads: int | None = None
) -> ort.InferenceSession:
    """Plain onnxruntime: BinaryLinear runs through the model-local function."""
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    so = session_options(threads)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- the PyOp bridge


def _array_hook(k_id: int, feed: list, attributes: dict) -> tuple:
    """extensions' invocation hook, returning numeric outputs as arrays instead of lists."""
    from onnxruntime_extensions import Opdef

    opdef = Opdef._odlist.get(k_id)
    if opdef is None:
        raise RuntimeError(f"no Python custom op with id {k_id}")
    result = opdef.body(*feed, **opdef.cast_attributes(attributes))
    outputs = result if isinstance(result, tuple) else (result,)
    fetched: list = [k_id]
    for out in outputs:
        arr = np.asarray(out)
        fetched.append(arr.shape)
        fetched.append(arr.reshape(-1).tolist() if arr.dtype.kind in "OUS" else arr)
    return tuple(fetched)


def install_array_hook(enabled: bool = True) -> None:
    """Process-wide: our array-returning hook (default), or extensions' own (``enabled=False``)."""
    from onnxruntime_extensions import PyCustomOpDef, _ocos

    PyCustomOpDef.install_hooker(_array_hook if enabled else _ocos._on_pyop_invocation)


def _register_pyop() -> None:
    """Register ``bitmaps::BinaryLinear`` with extensions once per process."""
    global _PYOP_REGISTERED
    if _PYOP_REGISTERED:
        return
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    dt = PyCustomOpDef
    attrs = {
        "in_features": dt.dt_int64,
        "out_features": dt.dt_int64,
        "act_threshold": dt.dt_string,  # exact repr(), see the module docstring
        "act_scale": dt.dt_string,
        "plugin_version": dt.dt_string,
        "plugin_namespace": dt.dt_string,
    }

    @onnx_op(
        op_type=f"{DOMAIN}::{OP_TYPE}",
        inputs=[dt.dt_float, dt.dt_int32, dt.dt_float, dt.dt_float],
        outputs=[dt.dt_float],
        attrs=attrs,
    )
    def _binary_linear(x, w, w_scale, bias, **a):  # noqa: ANN001, ANN202
        y = torch.ops.bitmaps.binary_linear(
            torch.from_numpy(x),
            torch.from_numpy(w),
            torch.from_numpy(w_scale),
            torch.from_numpy(bias),
            int(a["in_features"]),
            float(a["act_threshold"]),
            float(a["act_scale"]),
        )
        return y.numpy()

    install_array_hook(True)
    _PYOP_REGISTERED = True


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name → ONNX element type, from the graph and shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in (*g.input, *g.output, *g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def kernel_model(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    """The in-memory copy a kernel session runs (see the module docstring for each change)."""
    src = _load(model)
    out = onnx.ModelProto()
    out.CopyFrom(src)
    types = value_types(src)
    kept = [f for f in out.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del out.functions[:]
    out.functions.extend(kept)
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        if not (node.domain == DOMAIN and node.op_type == OP_TYPE):
            nodes.append(node)
            continue
        for a in node.attribute:
            if a.name in STRING_ATTRIBUTES and a.type == onnx.AttributeProto.FLOAT:
                a.CopyFrom(helper.make_attribute(a.name, repr(float(np.float32(a.f)))))
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(_wrap_half_nodes(nodes, types))
    return out


def _wrap_half_nodes(nodes: list[onnx.NodeProto], types: dict[str, int]) -> list[onnx.NodeProto]:
    """Cast float16 BinaryLinear nodes to float32 and back (the PyOp bridge has no float16)."""
    out: list[onnx.NodeProto] = []
    for node in nodes:
        is_binary = node.domain == DOMAIN and node.op_type == OP_TYPE
        if not is_binary or types.get(node.input[0]) != TensorProto.FLOAT16:
            out.append(node)
            continue
        x, y = node.input[0], node.output[0]
        x32, y32 = f"{node.name or y}/x_float32", f"{node.name or y}/y_float32"
        out.append(helper.make_node("Cast", [x], [x32], to=TensorProto.FLOAT, name=f"{x32}/cast"))
        node.input[0], node.output[0] = x32, y32
        out.append(node)
        out.append(helper.make_node("Cast", [y32], [y], to=TensorProto.FLOAT16, name=f"{y}/cast"))
    return out


def kernel_session(
    model: onnx.ModelProto | str | os.PathLike,
    threads: int | None = None,
    *,
    prepared: bool = False,
) -> ort.InferenceSession:
    """onnxruntime with every BinaryLinear node executed by ``torch.ops.bitmaps.binary_linear``.

    ``prepared=True``: ``model`` is a file that already holds :func:`kernel_model`'s rewrite (see
    :func:`save_kernel_model`); it is opened by path, so ONNX Runtime keeps one copy of the
    weights (from bytes it keeps a second: binary BERT-base encoder 234 MB resident instead of
    109 MB, measured). ONNX Runtime's intra-op threads never spin while idle here: inside a
    BinaryLinear node our kernel runs on torch's threads, and spinning ONNX Runtime threads take
    their cores (binary BERT-base encoder, batch 1, seq 128, 2 cores: 1173 ms with spinning vs
    54 ms without, measured).
    """
    from onnxruntime_extensions import get_library_path

    _register_pyop()
    so = session_options(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.register_custom_ops_library(get_library_path())
    if prepared:
        return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    rewritten = kernel_model(model)
    return ort.InferenceSession(
        rewritten.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )


def save_kernel_model(model: onnx.ModelProto | str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write :func:`kernel_model`'s rewrite of ``model`` atomically, for ``prepared=True``."""
    from bitmaps.core.atomic import atomic_output

    with atomic_output(out) as tmp:
        onnx.save(kernel_model(model), str(tmp))
    return Path(out)


def open_session(
    model: onnx.ModelProto | str | os.PathLike, backend: str, threads: int | None = None
) -> ort.InferenceSession:
    """``backend``: ``"function"`` (plain onnxruntime) or ``"kernel"`` (our op via the PyOp)."""
    if backend == "function":
        return function_session(model, threads)
    if backend == "kernel":
        return kernel_session(model, threads)
    raise ValueError(f"backend must be 'function' or 'kernel', got {backend!r}")


# --------------------------------------------------------------------------- per-call overhead


def single_node_model(
    k: int, n: int, act_threshold: float = 0.0, act_scale: float = 0.0, opset: int = 20,
    dtype: int = TensorProto.FLOAT, seed: int = 0, rank: int = 2,
) -> tuple[onnx.ModelProto, dict[str, torch.Tensor]]:  # fmt: skip
    """One BinaryLinear node, X ``[d0, .., K]`` of ``rank`` dims (float32 or float16) → ``[.., N]``.

    Random weights; returns the model and its initializers (``W``, ``w_scale``, ``bias``).
    """
    from onnx import numpy_helper

    from bitmaps.core.packing import pack_signs
    from bitmaps.export.onnx_function import binary_linear_function

    g = torch.Generator().manual_seed(seed * 1_000_003 + k * 7919 + n)
    tensors = {
        "W": pack_signs(torch.randn(n, k, generator=g)),
        "w_scale": torch.rand(n, generator=g) + 0.5,
        "bias": torch.randn(n, generator=g),
    }
    lead = [f"d{i}" for i in range(rank - 1)]
    node = helper.make_node(
        OP_TYPE, ["X", "W", "w_scale", "bias"], ["Y"], domain=DOMAIN, name="binary_linear",
        in_features=k, out_features=n, act_threshold=act_threshold, act_scale=act_scale,
        plugin_version="1", plugin_namespace="bitmaps",
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "binary_linear",
        [helper.make_tensor_value_info("X", dtype, [*lead, k])],
        [helper.make_tensor_value_info("Y", dtype, [*lead, n])],
        initializer=[numpy_helper.from_array(t.numpy(), name) for name, t in tensors.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)],
        functions=[binary_linear_function(opset)],
        ir_version=10,
    )
    return model, tensors


def _sample_s(fn, calls: int) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def measure_custom_op_overhead(
    shapes: list[tuple[int, int]], tokens: int, repeats: int = 15, sample_s: float = 0.05,
    threads: int | None = None,
) -> list[dict[str, float]]:  # fmt: skip
    """Per call: the op inside a kernel session vs ``torch.ops.bitmaps.binary_linear`` directly.

    One row per (K, N) with X ``[tokens, K]``: medians in ms of the direct call, of a one-node
    session run with our array hook (``ort_ms``) and with extensions' default list hook
    (``ort_default_hook_ms``); ``overhead_ms`` = ort_ms − direct_ms. Samples of the three are
    taken in turn (each the mean of enough calls to last ``sample_s``), so load from other
    processes hits all alike. A session run includes ONNX Runtime's own per-run cost.
    """
    return [_measure_one(k, n, tokens, repeats, sample_s, threads) for k, n in shapes]


def _measure_one(
    k: int, n: int, tokens: int, repeats: int, sample_s: float, threads: int | None
) -> dict[str, float]:
    model, t = single_node_model(k, n)
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(1))
    feed = {"X": x.numpy()}
    session = kernel_session(model, threads)

    def direct() -> None:
        torch.ops.bitmaps.binary_linear(x, t["W"], t["w_scale"], t["bias"], k, 0.0, 0.0)

    def via_session() -> None:
        session.run(None, feed)

    def via_default_hook() -> None:
        install_array_hook(False)
        try:
            session.run(None, feed)
        finally:
            install_array_hook(True)

    fns = {"direct_ms": direct, "ort_ms": via_session, "ort_default_hook_ms": via_default_hook}
    calls = {}
    for name, fn in fns.items():
        fn()  # warm-up
        calls[name] = max(1, int(sample_s / max(_sample_s(fn, 1), 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(_sample_s(fn, calls[name]) * 1e3)
    row: dict[str, float] = {"k": k, "n": n, "tokens": tokens}
    row.update({name: statistics.median(v) for name, v in samples.items()})
    row["overhead_ms"] = row["ort_ms"] - row["direct_ms"]
    return row
