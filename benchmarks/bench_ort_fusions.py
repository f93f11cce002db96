"""Does ONNX Runtime's SkipLayerNormFusion pay on this CPU? One residual + LayerNorm, two ways.

BERT's encoder has two ``LayerNorm(x + residual)`` per layer. ONNX Runtime's default graph
optimizations fuse ``Add`` + ``LayerNormalization`` into its contrib op ``SkipLayerNormalization``.
This benchmark times, alternately in the same process, on the same inputs ``[batch, seq, hidden]``:

- ``fused``: a session with the default optimizations (the fusion on);
- ``unfused``: the same graph with ``disabled_optimizers=["SkipLayerNormFusion"]``, which is how
  every bitmaps session opens (bitmaps/core/ort.py), baselines included;

and, with ``--model FILE.onnx``, a whole exported model both ways (input_ids/attention_mask of
``--batch`` × ``--seq``; BinaryLinear nodes on libbitmaps_ort.so when it is built). Spinning is off
in both sessions, so their idle threads do not steal the cores of the next call. Prints medians,
the ratio, and the CPU.

    PYTHONPATH=. python benchmarks/bench_ort_fusions.py [--threads 1] [--model M.onnx] [--out r.json]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs
from onnx import TensorProto, helper, numpy_helper

from bitmaps.core.ort import (
    DISABLED_OPTIMIZERS,
    inference_session,
    library_missing,
    native_library,
    session_options,
)
from bitmaps.runtime.timing import calls_per_sample, cpu_timer, time_alternating


def residual_layernorm(batch: int, seq: int, hidden: int) -> onnx.ModelProto:
    shape = [batch, seq, hidden]
    g = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "skip"], ["sum"]),
            helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], epsilon=1e-12),
        ],
        "residual_layernorm",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("skip", TensorProto.FLOAT, shape),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=[
            numpy_helper.from_array(g.standard_normal(hidden).astype(np.float32), "gamma"),
            numpy_helper.from_array(g.standard_normal(hidden).astype(np.float32), "beta"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def session(model: str | onnx.ModelProto, threads: int, fused: bool) -> ort.InferenceSession:
    """bitmaps' own session (bitmaps/core/ort.py), spinning off, with or without the fusion."""
    so = session_options(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if library_missing() is None:
        so.register_custom_ops_library(native_library())
    return inference_session(model, so, () if fused else DISABLED_OPTIMIZERS)


def compare(name: str, model: str | onnx.ModelProto, feed: dict, threads: int, rounds: int) -> dict:
    sessions = {k: session(model, threads, k == "fused") for k in ("fused", "unfused")}
    timers = []
    for s in sessions.values():
        n = calls_per_sample(lambda c, s=s: cpu_timer(lambda i: s.run(None, feed), c), 50.0)
        timers.append(cpu_timer(lambda i, s=s: s.run(None, feed), n))
    outs = [s.run(None, feed)[0] for s in sessions.values()]
    fused_ms, unfused_ms = (statistics.median(x) for x in time_alternating(timers, rounds))
    return {
        "case": name,
        "fused_ms": fused_ms,
        "unfused_ms": unfused_ms,
        "fused_over_unfused": fused_ms / unfused_ms,
        "max_abs_diff": float(np.abs(outs[0].astype(np.float64) - outs[1]).max()),
    }


def table(rows: list[dict]) -> str:
    head = ("case", "fused ms", "unfused ms", "fused / unfused", "max abs diff")
    cells = [
        [
            r["case"],
            f"{r['fused_ms']:.3f}",
            f"{r['unfused_ms']:.3f}",
            f"{r['fused_over_unfused']:.2f}×",
            f"{r['max_abs_diff']:.1e}",
        ]
        for r in rows
    ]
    return markdown_table(head, cells, "lrrrr")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--rounds", type=int, default=15, help="alternating samples of each")
    p.add_argument("--model", help="an exported model (input_ids, attention_mask) to time too")
    a = parse_with_outputs(p)
    rng = np.random.default_rng(1)
    shape = (a.batch, a.seq, a.hidden)
    feed = {k: rng.standard_normal(shape).astype(np.float32) for k in ("x", "skip")}
    model = residual_layernorm(*shape)
    rows = [compare(f"Add + LayerNorm {list(shape)}", model, feed, a.threads, a.rounds)]
    if a.model:
        ids = rng.integers(0, 1000, (a.batch, a.seq), dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        name = f"model `{Path(a.model).name}` {a.batch}x{a.seq}"
        rows.append(compare(name, a.model, feed, a.threads, a.rounds))
    text = table(rows)
    print(f"{a.threads} thread(s), onnxruntime {ort.__version__}")
    print(text)
    write_outputs(a.out, rows, run_meta(threads=a.threads, onnxruntime=ort.__version__), text)


if __name__ == "__main__":
    main()
