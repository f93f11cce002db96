"""ONNX Runtime on CPU: exported bitmaps models through our native custom op, or the local function.

The sessions are opened by :mod:`bitmaps.core.ort` (export verification needs them too); this
module adds what the runtime reports and measures with them. Two sessions over the same file,
which is never rewritten:

- :func:`kernel_session` registers ``libbitmaps_ort.so`` (:func:`bitmaps.get_library_path`, built
  from csrc/onnxruntime by ``make install``): every ``bitmaps::BinaryLinear`` node runs the compiled
  XNOR-popcount kernel inside ONNX Runtime, on its intra-op threads, with the weights laid out
  once at session creation. ONNX Runtime prefers a registered kernel to a model-local function of
  the same name (its profile shows the BinaryLinear node itself, not the function's ops), so no
  copy of the model is needed. No Python and no torch run inside the session: any program that
  can register a custom-op library (C, C++, C#, Java, Python) runs the model this way.
- :func:`function_session` is plain onnxruntime: the node runs the model-local function (standard
  ops: unpack, sign, MatMul). Correct everywhere, slow; what runs when the library is missing.

:func:`native_problem` says why the library cannot serve here (not built, does not load, this
ONNX Runtime is older than the C API it needs), else None. Callers fall back to the function only
when the library was not built (:func:`library_missing`); one that exists but does not load is a
:class:`BitmapsError` (one line, exit 2 from the CLI), never a silent fallback or a crash.
"""

from __future__ import annotations

import math
import numbers
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from bitmaps.core import ops
from bitmaps.core.errors import BitmapsError, one_line
from bitmaps.core.ort import (  # noqa: F401  (re-exported: the sessions this module measures)
    function_session,
    inference_session,
    kernel_session,
    library_missing,
    native_library,
    native_problem,
    open_session,
    session_options,
)
from bitmaps.core.packing import pack_signs
from bitmaps.export.onnx_function import (
    ATTENTION_INT8,
    ATTENTION_OP_TYPE,
    DOMAIN,
    OP_TYPE,
    PACKED_ATTENTION_OP_TYPE,
    SKIP_LAYER_NORM_OP_TYPE,
    binary_linear_function,
    multi_head_attention_function,
    packed_multi_head_attention_function,
    skip_layer_norm_function,
)


def native_status() -> str:
    """One line for reports: which code runs BinaryLinear nodes in ONNX Runtime."""
    problem = native_problem()
    if problem is None:
        return f"native custom op ({native_library()})"
    return f"model-local ONNX function (standard ops), native library unavailable: {problem}"


def checked_native_library() -> str:
    """The path of ``libbitmaps_ort.so`` once it has run a BinaryLinear node here and matched the
    model-local function: `bitmaps ort-library`'s check. Loading alone misses what fails only at
    session creation (``BITMAPS_CPU_PATH`` naming a path this CPU lacks, a bad
    ``BITMAPS_ORT_THREADS``, a kernel this CPU cannot execute); each is a one-line BitmapsError."""
    path = native_library()
    model, _ = single_node_model(k=100, n=16)  # K not a multiple of the word: the tail too
    x = {"X": np.random.default_rng(0).standard_normal((3, 100)).astype(np.float32)}
    so = session_options(threads=1)
    so.log_severity_level = 4  # the reason is raised below, once, not also logged
    so.register_custom_ops_library(path)
    try:
        got = inference_session(model, so).run(None, x)[0]
    except Exception as exc:  # noqa: BLE001 - whatever ONNX Runtime raises, one line
        reason = one_line(exc, limit=400).split("Exception during initialization: ")[-1]
        raise BitmapsError(
            f"{path} loads, but cannot run a BinaryLinear node here: {reason}"
        ) from None
    want = function_session(model, threads=1).run(None, x)[0]
    if not np.allclose(got, want, rtol=1e-5, atol=1e-4):
        worst = float(np.abs(got - want).max())
        raise BitmapsError(
            f"{path} runs a BinaryLinear node but does not match the model-local function here "
            f"(max |diff| {worst:.3g}, CPU path {native_cpu_path()}): rebuild it with `make install`"
        )
    return path


def native_cpu_path() -> str:
    """The CPU path the library's kernels take: ``BITMAPS_CPU_PATH``, else the best one here."""
    forced = os.environ.get("BITMAPS_CPU_PATH", "")
    if forced and forced != "auto":
        return forced
    return next(iter(ops.cpu_paths_supported()), "unknown (bitmaps._C not built)")


# --------------------------------------------------------------------------- per-call overhead


def _positive(**sizes: int) -> None:
    """BitmapsError unless every size is an int >= 1 (named in the message)."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise BitmapsError(f"{name} must be an integer >= 1, got {value!r}")


def _check_measuring(repeats: int, sample_s: float, threads: int | None) -> None:
    _positive(repeats=repeats)
    if not (isinstance(sample_s, (int, float)) and math.isfinite(sample_s) and sample_s > 0):
        raise BitmapsError(f"sample_s must be a finite number of seconds > 0, got {sample_s!r}")
    if threads is not None:
        _positive(threads=threads)


def single_node_model(
    k: int, n: int, act_threshold: float = 0.0, act_scale: float = 0.0, opset: int = 20,
    dtype: int = TensorProto.FLOAT, seed: int = 0, rank: int = 2, act_unsigned: int = 0,
    panels: bool = False, activation: int = 0,
) -> tuple[onnx.ModelProto, dict[str, torch.Tensor]]:  # fmt: skip
    """One BinaryLinear node, X ``[d0, .., K]`` of ``rank`` dims (float32 or float16) → ``[.., N]``.

    Random weights; returns the model and its tensors (``W`` as packed rows, ``w_scale``,
    ``bias``). ``panels``: the W initializer is stored in the CPU GEMM's panel layout, as the
    ``onnxruntime`` export stores it. The ``act_unsigned`` and ``activation`` (1: fused GELU)
    attributes are written only when set (a model without them means 0).
    """
    _positive(k=k, n=n, rank=rank)
    if act_unsigned not in (0, 1) or activation not in (0, 1):
        raise BitmapsError(
            f"act_unsigned and activation must be 0 or 1, got {act_unsigned!r}, {activation!r}"
        )
    g = torch.Generator().manual_seed(seed * 1_000_003 + k * 7919 + n)
    tensors = {
        "W": pack_signs(torch.randn(n, k, generator=g)),
        "w_scale": torch.rand(n, generator=g) + 0.5,
        "bias": torch.randn(n, generator=g),
    }
    stored = dict(tensors)
    if panels:
        stored["W"] = ops.reference_prepack_weights(tensors["W"], k)
    lead = [f"d{i}" for i in range(rank - 1)]
    extra = {"act_unsigned": act_unsigned} if act_unsigned else {}
    if activation:
        extra["activation"] = activation
    node = helper.make_node(
        OP_TYPE, ["X", "W", "w_scale", "bias"], ["Y"], domain=DOMAIN, name="binary_linear",
        in_features=k, out_features=n, act_threshold=act_threshold, act_scale=act_scale,
        plugin_version="1", plugin_namespace="bitmaps", **extra,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "binary_linear",
        [helper.make_tensor_value_info("X", dtype, [*lead, k])],
        [helper.make_tensor_value_info("Y", dtype, [*lead, n])],
        initializer=[numpy_helper.from_array(t.numpy(), name) for name, t in stored.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)],
        functions=[binary_linear_function(opset, panels=panels, activation=bool(activation))],
        ir_version=10,
    )
    return model, tensors


def fp32_linear_model(k: int, n: int, opset: int = 20, seed: int = 0) -> onnx.ModelProto:
    """The FP32 baseline of :func:`single_node_model`: MatMul(X, W[K, N]) + bias."""
    g = torch.Generator().manual_seed(seed)
    inits = [
        numpy_helper.from_array(torch.randn(k, n, generator=g).numpy(), "W"),
        numpy_helper.from_array(torch.randn(n, generator=g).numpy(), "bias"),
    ]
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["XW"]),
        helper.make_node("Add", ["XW", "bias"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["m", n])],
        initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _quiet_session(
    model: onnx.ModelProto, threads: int | None, native: bool
) -> ort.InferenceSession:
    """A session whose idle intra-op threads do not spin: spinning ONNX Runtime threads take the
    cores from torch's threads between the interleaved samples (2 cores: the torch op measured
    100x slower). Both ONNX Runtime rows run this way."""
    so = session_options(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if native:
        so.register_custom_ops_library(native_library())
    return inference_session(model, so)


def _interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, sample_s: float
) -> dict[str, float]:
    """Median ms per call of each function: samples taken in turn (each the mean of enough calls
    to last ``sample_s``), so load from other processes hits all alike."""
    calls = {}
    for name, fn in fns.items():
        fn()  # warm-up
        calls[name] = max(1, int(sample_s / max(_sample_s(fn, 1), 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(_sample_s(fn, calls[name]) * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def _sample_s(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def measure_custom_op_overhead(
    shapes: list[tuple[int, int]], tokens: int, repeats: int = 15, sample_s: float = 0.05,
    threads: int | None = None,
) -> list[dict[str, float]]:  # fmt: skip
    """Per call: the native op in ONNX Runtime vs the torch op vs ONNX Runtime's FP32 linear.

    One row per (K, N) with X ``[tokens, K]``, medians in ms: ``direct_ms``
    (``torch.ops.bitmaps.binary_linear``, weights laid out on every call), ``prepacked_ms``
    (``binary_linear_prepacked``), ``ort_ms`` (a one-node session with ``libbitmaps_ort.so``),
    ``ort_fp32_ms`` (MatMul + Add of the same shape in plain ONNX Runtime); ``overhead_ms`` =
    ort_ms − prepacked_ms (what the session adds around the same kernel), ``fp32_ratio`` =
    ort_fp32_ms / ort_ms. Samples of all four are taken in turn (each the mean of enough calls
    to last ``sample_s``), so load from other processes hits all alike. ``threads``: torch and
    ONNX Runtime threads (default: torch's and ONNX Runtime's own defaults); ONNX Runtime's
    threads do not spin while idle (see :func:`_quiet_session`).
    """
    _check_measuring(repeats, sample_s, threads)
    _positive(tokens=tokens)
    for k, n in shapes:
        _positive(k=k, n=n)
    if threads:
        torch.set_num_threads(threads)
    return [_measure_one(k, n, tokens, repeats, sample_s, threads) for k, n in shapes]


def _measure_one(
    k: int, n: int, tokens: int, repeats: int, sample_s: float, threads: int | None
) -> dict[str, float]:
    model, t = single_node_model(k, n)
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(1))
    feed = {"X": x.numpy()}
    session = _quiet_session(model, threads, native=True)
    fp32 = _quiet_session(fp32_linear_model(k, n), threads, native=False)
    panels = ops.prepack_weights(t["W"], k)
    fns = {
        "direct_ms": lambda: ops.binary_linear(x, t["W"], t["w_scale"], t["bias"], k, 0.0, 0.0),
        "prepacked_ms": lambda: ops.binary_linear_prepacked(
            x, panels, t["w_scale"], t["bias"], k, 0.0, 0.0
        ),
        "ort_ms": lambda: session.run(None, feed),
        "ort_fp32_ms": lambda: fp32.run(None, feed),
    }
    row: dict[str, float] = {"k": k, "n": n, "tokens": tokens}
    row.update(_interleaved_medians(fns, repeats, sample_s))
    row["overhead_ms"] = row["ort_ms"] - row["prepacked_ms"]
    row["fp32_ratio"] = row["ort_fp32_ms"] / row["ort_ms"]
    return row


# --------------------------------------------------------------------------- attention


def attention_model(
    heads: int, scale: float | None = 0.125, bias: bool = True, dtype: int = TensorProto.FLOAT,
    hidden: tuple[int | str, int | str] = ("hq", "hv"), domain: str = DOMAIN, opset: int = 20,
    int8: bool = False,
) -> onnx.ModelProto:  # fmt: skip
    """One MultiHeadAttention node (``bitmaps`` with its function, or ``com.microsoft``'s) on
    query/key ``[B, S|T, hidden[0]]``, value ``[B, T, hidden[1]]`` and, with ``bias``, an
    additive ``attention_bias`` ``[b0, b1, b2, T]``; dynamic dimensions except those given.
    ``int8``: the bitmaps node's attribute ``int8 = 1`` and the int8 function. ``heads`` is
    written as given (tests build nodes the op must refuse)."""
    inputs = [
        helper.make_tensor_value_info("query", dtype, ["B", "S", hidden[0]]),
        helper.make_tensor_value_info("key", dtype, ["B", "T", hidden[0]]),
        helper.make_tensor_value_info("value", dtype, ["B", "T", hidden[1]]),
    ]
    names = ["query", "key", "value"]
    if bias:
        inputs.append(helper.make_tensor_value_info("bias", dtype, ["b0", "b1", "b2", "T"]))
        # com.microsoft's inputs: query, key, value, bias, key_padding_mask, attention_bias
        names += ["bias"] if domain == DOMAIN else ["", "", "bias"]
    functions = [multi_head_attention_function(opset, int8)] if domain == DOMAIN else []
    return _attention_node_model(ATTENTION_OP_TYPE, names, inputs, heads, scale, domain, opset,
                                 functions, int8)  # fmt: skip


def packed_attention_model(
    heads: int, scale: float | None = 0.125, bias: bool = True, hidden: int | str = "h3",
    opset: int = 20, int8: bool = False,
) -> onnx.ModelProto:  # fmt: skip
    """One ``bitmaps::PackedMultiHeadAttention`` node (with its function) on ``qkv [B, S,
    hidden]`` (Q, K, V side by side) and, with ``bias``, ``attention_bias [b0, b1, b2, S]``;
    ``int8`` as :func:`attention_model`'s."""
    dtype = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("qkv", dtype, ["B", "S", hidden])]
    if bias:
        inputs.append(helper.make_tensor_value_info("bias", dtype, ["b0", "b1", "b2", "S"]))
    names = [i.name for i in inputs]
    return _attention_node_model(PACKED_ATTENTION_OP_TYPE, names, inputs, heads, scale, DOMAIN,
                                 opset, [packed_multi_head_attention_function(opset, int8)],
                                 int8)  # fmt: skip


def _attention_node_model(
    op_type: str, names: list[str], inputs: list, heads: int, scale: float | None, domain: str,
    opset: int, functions: list, int8: bool = False,
) -> onnx.ModelProto:  # fmt: skip
    """One attention node named ``attn`` on ``inputs`` (``names``: its input list), output
    ``out`` of the first input's type."""
    attrs = {"num_heads": heads} if scale is None else {"num_heads": heads, "scale": scale}
    if int8:
        attrs[ATTENTION_INT8] = 1
    node = helper.make_node(op_type, names, ["out"], domain=domain, name="attn", **attrs)
    dtype = inputs[0].type.tensor_type.elem_type
    graph = helper.make_graph(
        [node], "attention", inputs, [helper.make_tensor_value_info("out", dtype, None)]
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(domain, 1)],
        functions=functions,
        ir_version=10,
    )


def measure_attention(
    shapes: list[tuple[int, int, int, int]], repeats: int = 15, sample_s: float = 0.05,
    threads: int | None = None,
) -> list[dict[str, float]]:  # fmt: skip
    """Per call: ``bitmaps::MultiHeadAttention`` (libbitmaps_ort.so) vs ONNX Runtime's
    ``com.microsoft`` MultiHeadAttention, one row per (batch, seq, hidden, heads) with query = key
    = value lengths ``seq`` and BERT's mask as ``attention_bias`` ``[batch, 1, seq, seq]`` (a
    quarter of the keys masked): medians in ms (``bitmaps_ms``, ``ort_ms``; samples in turn, idle
    threads not spinning), ``speedup`` = ort_ms / bitmaps_ms and the largest difference."""
    _check_measuring(repeats, sample_s, threads)
    for batch, seq, hidden, heads in shapes:
        _positive(batch=batch, seq=seq, hidden=hidden, heads=heads)
        if hidden % heads:
            raise BitmapsError(f"hidden {hidden} is not a multiple of heads {heads}")
    rows = []
    for batch, seq, hidden, heads in shapes:
        rng = np.random.default_rng(seq * 31 + hidden)
        feed = {n: rng.standard_normal((batch, seq, hidden), dtype=np.float32)
                for n in ("query", "key", "value")}  # fmt: skip
        bias = np.zeros((batch, 1, seq, seq), np.float32)
        bias[..., seq - seq // 4 :] = np.finfo(np.float32).min
        feed["bias"] = bias
        scale = float(1.0 / np.sqrt(hidden // heads))
        ours = _quiet_session(attention_model(heads, scale), threads, native=True)
        theirs = _quiet_session(
            attention_model(heads, scale, domain="com.microsoft"), threads, native=False
        )
        row = {"batch": batch, "seq": seq, "hidden": hidden, "heads": heads}
        rows.append(_ours_vs_theirs(row, ours, theirs, feed, repeats, sample_s, threads))
    return rows


def _ours_vs_theirs(
    row: dict, ours: ort.InferenceSession, theirs: ort.InferenceSession, feed: dict,
    repeats: int, sample_s: float, threads: int | None,
) -> dict[str, float]:  # fmt: skip
    """``row`` with both sessions' medians (``bitmaps_ms``, ``ort_ms``), ``speedup`` and the
    largest difference of their outputs."""
    diff = float(np.abs(ours.run(None, feed)[0] - theirs.run(None, feed)[0]).max())
    row = {**row, "threads": threads or 0}
    row.update(_interleaved_medians(
        {"bitmaps_ms": lambda: ours.run(None, feed), "ort_ms": lambda: theirs.run(None, feed)},
        repeats, sample_s,
    ))  # fmt: skip
    row["speedup"] = row["ort_ms"] / row["bitmaps_ms"]
    row["max_abs_diff"] = diff
    return row


# --------------------------------------------------------------------------- add + layer norm


def skip_layer_norm_model(
    hidden: int | str = "H", epsilon: float | None = 1e-12, beta: bool = True,
    dtype: int = TensorProto.FLOAT, fused: bool = True, opset: int = 20,
) -> onnx.ModelProto:  # fmt: skip
    """``LayerNormalization(input + skip, gamma, beta)`` over the last axis, input and skip
    ``[B, S, hidden]``, gamma and beta graph inputs ``[hidden]``: one
    ``bitmaps::SkipLayerNormalization`` node with its function (``fused``), or ONNX Runtime's
    own Add + LayerNormalization nodes."""
    names = ["input", "skip", "gamma", "beta"] if beta else ["input", "skip", "gamma"]
    shapes = [["B", "S", hidden], ["B", "S", hidden], [hidden], [hidden]]
    inputs = [
        helper.make_tensor_value_info(n, dtype, shape)
        for n, shape in zip(names, shapes, strict=False)
    ]
    eps = {} if epsilon is None else {"epsilon": epsilon}
    if fused:
        nodes = [helper.make_node(
            SKIP_LAYER_NORM_OP_TYPE, names, ["out"], domain=DOMAIN, name="norm", **eps
        )]  # fmt: skip
    else:
        nodes = [
            helper.make_node("Add", ["input", "skip"], ["sum"]),
            helper.make_node("LayerNormalization", ["sum", *names[2:]], ["out"], axis=-1, **eps),
        ]
    graph = helper.make_graph(
        nodes, "skip_layer_norm", inputs, [helper.make_tensor_value_info("out", dtype, None)]
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)],
        functions=[skip_layer_norm_function(opset)] if fused else [],
        ir_version=10,
    )


def measure_skip_layer_norm(
    shapes: list[tuple[int, int, int]], repeats: int = 15, sample_s: float = 0.05,
    threads: int | None = None,
) -> list[dict[str, float]]:  # fmt: skip
    """Per call: ``bitmaps::SkipLayerNormalization`` (libbitmaps_ort.so) vs ONNX Runtime's Add +
    LayerNormalization, one row per (batch, seq, hidden): medians in ms (``bitmaps_ms``,
    ``ort_ms``; samples in turn, idle threads not spinning), ``speedup`` and the largest
    difference."""
    _check_measuring(repeats, sample_s, threads)
    for batch, seq, hidden in shapes:
        _positive(batch=batch, seq=seq, hidden=hidden)
    rows = []
    for batch, seq, hidden in shapes:
        rng = np.random.default_rng(seq * 17 + hidden)
        feed = {
            "input": rng.standard_normal((batch, seq, hidden), dtype=np.float32) * 4,
            "skip": rng.standard_normal((batch, seq, hidden), dtype=np.float32),
            "gamma": rng.standard_normal(hidden, dtype=np.float32),
            "beta": rng.standard_normal(hidden, dtype=np.float32),
        }
        ours = _quiet_session(skip_layer_norm_model(hidden), threads, native=True)
        theirs = _quiet_session(skip_layer_norm_model(hidden, fused=False), threads, native=False)
        row = {"batch": batch, "seq": seq, "hidden": hidden}
        rows.append(_ours_vs_theirs(row, ours, theirs, feed, repeats, sample_s, threads))
    return rows


def measure_gelu_epilogue(
    shapes: list[tuple[int, int, int]], repeats: int = 15, sample_s: float = 0.05,
    threads: int | None = None,
) -> list[dict[str, float]]:  # fmt: skip
    """What the GELU fused into a BinaryLinear's epilogue (``activation = 1``) costs, against
    ONNX Runtime's Gelu node on the same output: per (tokens, K, N) the node alone
    (``plain_ms``), with GELU fused (``fused_ms``) and followed by a ``Gelu`` node
    (``node_ms``), medians in ms (samples in turn, idle threads not spinning); ``ort_ms`` =
    node_ms - plain_ms (the Gelu node), ``bitmaps_ms`` = fused_ms - plain_ms (the epilogue),
    ``speedup`` = ort_ms / bitmaps_ms, and the largest difference of the two results."""
    _check_measuring(repeats, sample_s, threads)
    for tokens, k, n in shapes:
        _positive(tokens=tokens, k=k, n=n)
    rows = []
    for tokens, k, n in shapes:
        plain, _ = single_node_model(k, n, panels=True)
        fused, _ = single_node_model(k, n, panels=True, activation=1)
        node = onnx.ModelProto()
        node.CopyFrom(plain)
        node.graph.node[0].output[0] = "Y_linear"
        node.graph.node.append(helper.make_node("Gelu", ["Y_linear"], ["Y"]))
        feed = {"X": np.random.default_rng(k + n).standard_normal((tokens, k), dtype=np.float32)}
        sessions = {
            name: _quiet_session(m, threads, native=True)
            for name, m in (("plain_ms", plain), ("fused_ms", fused), ("node_ms", node))
        }
        diff = float(np.abs(sessions["fused_ms"].run(None, feed)[0]
                            - sessions["node_ms"].run(None, feed)[0]).max())  # fmt: skip
        row: dict[str, float] = {"tokens": tokens, "k": k, "n": n, "threads": threads or 0}
        row.update(_interleaved_medians(
            {name: (lambda s=s, f=feed: s.run(None, f)) for name, s in sessions.items()},
            repeats, sample_s,
        ))  # fmt: skip
        row["ort_ms"] = row["node_ms"] - row["plain_ms"]
        row["bitmaps_ms"] = row["fused_ms"] - row["plain_ms"]
        row["speedup"] = (
            row["ort_ms"] / row["bitmaps_ms"] if row["bitmaps_ms"] > 0 else float("inf")
        )
        row["max_abs_diff"] = diff
        rows.append(row)
    return rows
