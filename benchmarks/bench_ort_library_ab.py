"""A/B of two builds of ``libbitmaps_ort.so`` on the same binary BERT-base export, in one process.

A kernel change is judged by this: the binary BERT-base-shaped student of ``bitmaps profile
--shape`` (random weights, the elastic quantizer; the onnxruntime target) is exported once, then
run by one session per library, sessions in turns (``--rounds`` samples of ``--calls`` calls
each; idle threads not spinning, so that neither session's pool takes the other's cores), at 1 × 128
tokens. The outputs of the two must be identical, or the largest difference is printed. Then
the time to create a session from the model file with each library (in turns: what the kernels
do once per session, prepacking and the FFN's bit tables, beside ONNX Runtime's loading), and
one node of each op type of a middle layer (BinaryLinear: each width) runs alone with the inputs
it received in the full model, one session per library, in turns, at ``--threads``.

    .venv/bin/python benchmarks/bench_ort_library_ab.py OLD.so NEW.so [--threads 1] [--rounds 11]

Build the old library from an earlier commit with ``csrc/onnxruntime/build.py`` (its ``build``
function takes the output path). Prints a markdown table (ratio = old / new: above 1, the new
library is faster); ``--out FILE.json|csv|md`` also writes the rows (bench_results.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from bench_export_targets import export_student
from bench_ort_thread_scaling import _alone, _inputs_seen, _middle_nodes
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs

from bitmaps.core.ort import inference_session, session_options
from bitmaps.runtime.timing import cpu_timer, time_alternating


def _session(model: onnx.ModelProto | Path, library: str, threads: int):  # noqa: ANN202
    so = session_options(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.register_custom_ops_library(library)
    return inference_session(model, so)


def _compare(
    model: onnx.ModelProto, feed: dict, libraries: list[str], threads: int, rounds: int,
    calls: int,
) -> tuple[float, float, float]:  # fmt: skip
    """Median ms per call of each library's session (in turns) and the largest output difference."""
    sessions = [_session(model, lib, threads) for lib in libraries]
    outputs = [s.run(None, feed)[0].astype(np.float64) for s in sessions]
    diff = float(np.abs(outputs[0] - outputs[1]).max())
    timers = [cpu_timer(lambda i, s=s: s.run(None, feed), calls) for s in sessions]
    old, new = time_alternating(timers, rounds)
    return statistics.median(old), statistics.median(new), diff


def _creation(
    model: onnx.ModelProto, libraries: list[str], threads: int, rounds: int
) -> list[float]:
    """Median ms to create a session of the model with each library (in turns, which one goes
    first alternating from round to round, so that neither always follows the other): what the op
    kernels do once per session (prepacking weights, the FFN's bit tables) beside ONNX Runtime's
    own loading."""
    times: list[list[float]] = [[] for _ in libraries]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"  # from a file, as a deployment loads it
        path.write_bytes(model.SerializeToString())
        for r in range(rounds):
            order = list(enumerate(libraries))
            for i, lib in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                _session(path, lib, threads)
                times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", help="the baseline libbitmaps_ort.so")
    p.add_argument("new", help="the changed libbitmaps_ort.so")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    p.add_argument("--rounds", type=int, default=11, help="samples of each library, in turns")
    p.add_argument("--calls", type=int, default=8, help="model calls per sample")
    p.add_argument("--node-calls", type=int, default=20, help="calls per sample of a node alone")
    args = parse_with_outputs(p, argv)
    for path in (args.old, args.new):
        if not Path(path).is_file():
            print(f"bench_ort_library_ab: no such library: {path}", file=sys.stderr)
            return 2
    libraries = [args.old, args.new]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30522, (1, 128), dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    model = export_student("onnxruntime")
    rows = []
    old, new, diff = _compare(model, feed, libraries, args.threads, args.rounds, args.calls)
    rows.append({"what": "whole model, 1x128", "old_ms": old, "new_ms": new,
                 "ratio": old / new, "max_abs_diff": diff})  # fmt: skip
    old, new = _creation(model, libraries, args.threads, max(3, args.rounds // 2))
    rows.append({"what": "session creation", "old_ms": old, "new_ms": new, "ratio": old / new,
                 "max_abs_diff": None})  # fmt: skip
    nodes = _middle_nodes(model)
    seen = _inputs_seen(model, nodes, feed)
    for node in nodes:
        alone, node_feed = _alone(model, node, seen)
        old, new, diff = _compare(
            alone, node_feed, libraries, args.threads, args.rounds, args.node_calls
        )
        width = next((a.i for a in node.attribute if a.name == "out_features"), None)
        what = node.op_type + (f", {width} out" if width else "") + " alone"
        rows.append({"what": what, "old_ms": old, "new_ms": new, "ratio": old / new,
                     "max_abs_diff": diff})  # fmt: skip
    text = table(rows, args.threads)
    print(text)
    write_outputs(args.out, rows, run_meta(old=args.old, new=args.new), text)
    return 0


def table(rows: list[dict], threads: int | None = None) -> str:
    """The markdown table of the rows (what is printed, and what make_results.py renders)."""
    head = ("what", "old ms", "new ms", "old / new", "max abs diff")
    cells = [[r["what"], f"{r['old_ms']:.3f}", f"{r['new_ms']:.3f}", f"{r['ratio']:.3f}",
              "" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"]
             for r in rows]  # fmt: skip
    note = "" if threads is None else f"\n\nthreads: {threads or 'all cores'}"
    return markdown_table(head, cells, "lrrrr") + note


if __name__ == "__main__":
    sys.exit(main())
