"""Per-call cost of ``bitmaps::BinaryLinear`` inside ONNX Runtime through the native custom op.

For BERT-base shapes (K x N in 768x768, 768x3072, 3072x768) and X of ``--tokens`` rows, timed four
ways in one run, samples taken in turn (bitmaps.runtime.onnxruntime.measure_custom_op_overhead):

- ``torch``: ``torch.ops.bitmaps.binary_linear`` called from Python, weights laid out per call;
- ``torch prepacked``: ``binary_linear_prepacked`` (the packed module's path: panels built once);
- ``ORT native``: a one-node model in an onnxruntime session with libbitmaps_ort.so registered
  (weights laid out once, at session creation);
- ``ORT FP32``: MatMul + Add of the same shape in plain onnxruntime (the baseline).

``overhead`` = ORT native − torch prepacked: what a session run adds around the same kernel.

    PYTHONPATH=. python benchmarks/bench_ort_custom_op.py [--tokens 128 1024] [--threads N] [--out r.md]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import onnxruntime as ort
import torch

from bitmaps.core import ops
from bitmaps.core.atomic import atomic_output
from bitmaps.runtime.onnxruntime import measure_custom_op_overhead, native_status

SHAPES = [(768, 768), (768, 3072), (3072, 768)]
COLUMNS = (
    "tokens", "k", "n", "direct_ms", "prepacked_ms", "ort_ms", "ort_fp32_ms", "overhead_ms",
    "fp32_ratio",
)  # fmt: skip


def _markdown(rows: list[dict]) -> str:
    head = (
        "| tokens | K | N | torch ms | torch prepacked ms | ORT native ms | overhead ms "
        "| ORT FP32 ms | FP32 / native |"
    )
    lines = [head, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['tokens']} | {r['k']} | {r['n']} | {r['direct_ms']:.3f} | "
            f"{r['prepacked_ms']:.3f} | {r['ort_ms']:.3f} | {r['overhead_ms']:+.3f} | "
            f"{r['ort_fp32_ms']:.3f} | {r['fp32_ratio']:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: their defaults)"
    )
    parser.add_argument("--out", action="append", default=[], help="write .md or .csv")
    args = parser.parse_args(argv)
    rows = []
    for tokens in args.tokens:
        rows += measure_custom_op_overhead(
            SHAPES, tokens, repeats=args.repeats, threads=args.threads or None
        )
    table = _markdown(rows)
    header = (
        f"{ops.native_status()}; ONNX Runtime {ort.__version__}: {native_status()}; "
        f"torch threads {torch.get_num_threads()}, ORT threads {args.threads or 'default'}"
    )
    print(header)
    print(table)
    for out in args.out:
        with atomic_output(out) as tmp:
            if Path(out).suffix == ".csv":
                with open(tmp, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
                    writer.writeheader()
                    writer.writerows(rows)
            else:
                Path(tmp).write_text(f"{header}\n\n{table}\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
