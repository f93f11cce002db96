"""How each op of binary BERT-base scales from one thread to all cores in ONNX Runtime: in the
model, and alone on the same inputs.

The binary BERT-base-shaped student of ``bitmaps profile --shape`` (random weights, the elastic
quantizer; the onnxruntime target, native op library) is timed by ONNX Runtime's profiler at one
thread and at ``--threads`` (default: all cores), node time summed per op type within each run,
the median over the runs; at ``--threads`` also the time the calling thread waited in each op's
parallel sections for the pool's other threads (the profiler's ``thread_scheduling_stats``: the
op's load imbalance, plus a late start of the others). Then one node of
each op type (from the middle layer) runs alone: a one-node model with that node's weights and
the inputs it received in the full model, timed at both thread counts in turns (idle threads
spinning, as in the model's sessions; the one-thread session has no pool to spin). An op that
scales well alone but not in the model loses its time to what the model around it does to the
caches and the threads (data written by one core and read by the other, a late worker), not to
its own kernel.

    .venv/bin/python benchmarks/bench_ort_thread_scaling.py [--threads N] [--runs 20]

Prints a markdown table; ``--out FILE.json|csv|md`` also writes the rows (bench_results.py).
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np
import onnx
from bench_export_targets import _session, export_student, per_op_median, profile_runs
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs
from onnx import helper

from bitmaps.runtime.timing import cpu_timer, time_alternating

# what runs alone: the ops of one encoder layer
ALONE = ("BinaryLinear", "PackedMultiHeadAttention", "MultiHeadAttention", "BinaryFeedForward",
         "SkipLayerNormalization")  # fmt: skip


def _middle_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Per op type of ALONE, its node in the middle of the graph (BinaryLinear: every distinct
    width there, Q K V stacked and the attention output)."""
    picked: list[onnx.NodeProto] = []
    for op in ALONE:
        nodes = [n for n in model.graph.node if n.op_type == op and n.domain == "bitmaps"]
        if not nodes:
            continue
        middle = nodes[len(nodes) // 2 :]
        widths: set[int] = set()
        for node in middle:
            width = next((a.i for a in node.attribute if a.name == "out_features"), 0)
            if width in widths:
                continue
            widths.add(width)
            picked.append(node)
            if op != "BinaryLinear":
                break
    return picked


def _inputs_seen(model: onnx.ModelProto, nodes: list[onnx.NodeProto], feed: dict) -> dict:
    """The arrays the non-constant inputs of ``nodes`` held in one run of the full model."""
    constants = {i.name for i in model.graph.initializer}
    wanted = sorted({i for n in nodes for i in n.input if i and i not in constants})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.make_empty_tensor_value_info(w) for w in wanted if w not in known
    )
    session = _session(probe, 1)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed), strict=True))


def _alone(
    model: onnx.ModelProto, node: onnx.NodeProto, seen: dict
) -> tuple[onnx.ModelProto, dict]:
    """A model of ``node`` alone (its initializers copied) and its feed."""
    inits = {i.name: i for i in model.graph.initializer}
    inputs, feed, weights = [], {}, []
    for name in node.input:
        if not name:
            continue
        if name in inits:
            weights.append(inits[name])
            continue
        array = seen[name]
        feed[name] = array
        dtype = helper.np_dtype_to_tensor_dtype(array.dtype)
        inputs.append(helper.make_tensor_value_info(name, dtype, list(array.shape)))
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
    graph = helper.make_graph([node], node.op_type, inputs, outputs, weights)
    one = helper.make_model(graph, opset_imports=list(model.opset_import))
    one.ir_version = model.ir_version
    one.functions.extend(f for f in model.functions if f.name == node.op_type)
    return one, feed


def _scaling(single: list[float], multi: list[float]) -> tuple[float, float, float]:
    a, b = statistics.median(single), statistics.median(multi)
    return a, b, a / b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="the multi-thread count"
    )
    p.add_argument("--runs", type=int, default=20, help="profiled runs / alternating samples")
    p.add_argument("--calls", type=int, default=50, help="calls per sample of a node alone")
    args = parse_with_outputs(p)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30522, (1, 128), dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    model = export_student("onnxruntime")
    profiled = {t: profile_runs(model, feed, args.runs, t) for t in (1, args.threads)}
    in_model = {t: per_op_median(runs) for t, runs in profiled.items()}
    waits = per_op_median(profiled[args.threads], "wait_ms")
    nodes = _middle_nodes(model)
    seen = _inputs_seen(model, nodes, feed)
    rows = []
    for op in in_model[1]:  # ops under 0.05 ms a run are dispatch noise
        if in_model[1][op] < 0.05:
            continue
        one, many = in_model[1][op], in_model[args.threads].get(op, 0.0)
        rows.append({"scope": "model", "op": op, "what": "all nodes, ms per run",
                     "one_thread": one, "threads": args.threads, "multi_thread": many,
                     "scaling": one / many if many else 0.0})  # fmt: skip
        if args.threads > 1:
            rows.append({"scope": "model", "op": op, "threads": args.threads,
                         "what": "of which the calling thread waited for the others, ms per run",
                         "one_thread": 0.0, "multi_thread": waits.get(op, 0.0),
                         "scaling": None})  # fmt: skip
    for node in nodes:
        alone, node_feed = _alone(model, node, seen)
        sessions = [_session(alone, t) for t in (1, args.threads)]
        timers = [
            cpu_timer(lambda i, s=s, f=node_feed: s.run(None, f), args.calls) for s in sessions
        ]
        for s in sessions:
            for _ in range(5):
                s.run(None, node_feed)
        single, multi = time_alternating(timers, args.runs)
        one, many, ratio = _scaling(single, multi)
        shape = "x".join(str(d) for d in next(iter(node_feed.values())).shape)
        width = next((a.i for a in node.attribute if a.name == "out_features"), None)
        what = f"one node alone, input {shape}" + (f", {width} out" if width else "") + ", ms"
        rows.append({"scope": "alone", "op": node.op_type, "what": what, "one_thread": one,
                     "threads": args.threads, "multi_thread": many, "scaling": ratio})  # fmt: skip
    text = table(rows)
    print(text)
    write_outputs(args.out, rows, run_meta(), text)


def table(rows: list[dict]) -> str:
    """The markdown table of the rows (what is printed, and what make_results.py renders)."""
    head = ("scope", "op", "what", "1 thread", "threads", "N threads", "scaling")
    cells = [[r["scope"], r["op"], r["what"], f"{r['one_thread']:.3f}", r["threads"],
              f"{r['multi_thread']:.3f}",
              "" if r["scaling"] is None else f"{r['scaling']:.2f}x"] for r in rows]  # fmt: skip
    return markdown_table(head, cells)


if __name__ == "__main__":
    main()
