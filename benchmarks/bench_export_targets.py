"""The non-binary remainder of binary BERT-base in ONNX Runtime, per export target.

For each target (portable, onnxruntime) the binary BERT-base-shaped student (random weights,
default binarization, encoder only: ``--output hidden``) is exported through the real pipeline
(verified on the native op), opened with ``libbitmaps_ort.so`` registered, and timed at batch x seq.
ONNX Runtime's own profiler then splits one run's node time into BinaryLinear nodes and everything
else (the remainder that the onnxruntime target's fused attention is meant to shrink).

    .venv/bin/python benchmarks/bench_export_targets.py [--batch 1] [--seq 128] [--runs 30]

Prints a markdown table; with ``--csv FILE`` also writes the rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict

import numpy as np
import torch
from transformers import BertConfig, BertForMaskedLM

from bitmaps.core.config import BinarizeConfig, ExportConfig
from bitmaps.core.ort import native_library, session_options
from bitmaps.export.pipeline import export_verified
from bitmaps.train.binary_linear import binarize_


def _student() -> BertForMaskedLM:
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig()).eval()
    binarize_(model, BinarizeConfig())
    return model


def _session(model, threads: int, profile_dir: str | None = None):  # noqa: ANN001, ANN202
    import onnxruntime as ort

    so = session_options(threads)
    so.register_custom_ops_library(native_library())
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "ort")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _node_split(model, feed: dict, runs: int, threads: int) -> dict[str, float]:  # noqa: ANN001
    """Node time per run by op type (ms), from ONNX Runtime's profiler."""
    with tempfile.TemporaryDirectory() as tmp:
        session = _session(model, threads, tmp)
        for _ in range(runs):
            session.run(None, feed)
        events = json.load(open(session.end_profiling()))
    by_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / 1e3
    return {op: ms / runs for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    p.add_argument("--csv")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30522, (args.batch, args.seq), dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    targets = ("portable", "onnxruntime")
    models, sessions, times = {}, {}, {t: [] for t in targets}
    for target in targets:
        cfg = ExportConfig(output="hidden", target=target, backends=("kernel",))
        models[target] = export_verified(_student(), cfg, binary=True).model
        sessions[target] = _session(models[target], args.threads)
        for _ in range(5):
            sessions[target].run(None, feed)
    for _ in range(args.runs):  # interleaved, so load from other processes hits both alike
        for target in targets:
            t0 = time.perf_counter()
            sessions[target].run(None, feed)
            times[target].append((time.perf_counter() - t0) * 1e3)
    rows = []
    for target in targets:
        by_op = _node_split(models[target], feed, max(5, args.runs // 3), args.threads)
        binary_ms = by_op.pop("BinaryLinear", 0.0)
        other_ms = sum(by_op.values())
        top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(by_op.items())[:5])
        rows.append({
            "target": target, "batch": args.batch, "seq": args.seq, "threads": args.threads,
            "p50_ms": statistics.median(times[target]), "min_ms": min(times[target]),
            "binary_linear_ms": binary_ms, "remainder_ms": other_ms,
            "remainder_share": other_ms / (binary_ms + other_ms), "remainder_top_ms": top,
        })  # fmt: skip
    print("| target | batch x seq | p50 ms | min ms | BinaryLinear ms | remainder ms | share | "
          "largest remainder ops (ms) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['batch']}x{r['seq']} | {r['p50_ms']:.1f} | {r['min_ms']:.1f} | "
              f"{r['binary_linear_ms']:.1f} | {r['remainder_ms']:.1f} | "
              f"{100 * r['remainder_share']:.0f} % | {r['remainder_top_ms']} |")  # fmt: skip
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
